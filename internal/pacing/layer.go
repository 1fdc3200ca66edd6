package pacing

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Turns hands out turns on APIs and learns DingTalk's limits from its
// answers: the local Pacer, or the fleet's pacer decorating it.
type Turns interface {
	// Wait books a turn for one call on api no earlier than earliest and
	// waits for it: a *PacedError at once when none comes before deadline
	// (zero: none), ctx's error when ctx ends first.
	Wait(ctx context.Context, api string, earliest, deadline time.Time) error
	// Next estimates, without booking, when a call on api could go at the
	// earliest from earliest on.
	Next(api string, earliest time.Time) time.Time
	// Answered learns from how DingTalk answered an attempt on api.
	Answered(api string, r dingtalk.Result) Change
}

// RateObserver is told of every change of a route's learned rate (the rate
// gauge, the log). It runs outside every lock.
type RateObserver interface {
	RateChanged(route string, from, to float64)
}

// Layer is pacing in the request path, below the attempt loop: each
// attempt waits for its turn on its API before it goes (or is answered
// paced at once when its turn would come past the call's deadline), and
// DingTalk's answer to it is fed back. Token calls are not paced.
type Layer struct {
	turns Turns
	obs   RateObserver
	log   *zap.Logger
}

// NewLayer returns the pacing layer over turns; obs (may be nil) hears of
// rate changes.
func NewLayer(turns Turns, obs RateObserver, log *zap.Logger) *Layer {
	return &Layer{turns: turns, obs: obs, log: log}
}

// Wrap is the layer over next.
func (p *Layer) Wrap(next call.Handler) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		if f.TokenEndpoint {
			return next.Do(req, f)
		}
		ctx := req.Context()
		if err := p.turns.Wait(ctx, f.API, time.Time{}, call.Deadline(ctx)); err != nil {
			var paced *PacedError
			if errors.As(err, &paced) {
				return call.Fail(call.Refused(call.ReasonPaced), err)
			}
			return call.Fail(call.Report{Outcome: call.Canceled, Reason: call.ReasonCanceled}, err)
		}
		resp, rep, err := next.Do(req, f)
		if rep.Attempts > 0 {
			call.Bookkeep(p.log, "pacing", func() {
				if c := p.turns.Answered(f.API, rep.Result); c.Changed && p.obs != nil {
					p.obs.RateChanged(f.Route, c.From, c.To)
				}
			})
		}
		return resp, rep, err
	})
}

// Next is when a retry of the call could go at the earliest, from earliest
// on: the loop does not retry into a turn past the call's deadline.
func (p *Layer) Next(f *call.Facts, earliest time.Time) time.Time {
	if f.TokenEndpoint {
		return earliest
	}
	return p.turns.Next(f.API, earliest)
}
