package quota

import (
	"net/http"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Meters is what the request path asks of the monthly quota: the local
// Meter, or the fleet's meter decorating it (the month's count and the
// stops shared).
type Meters interface {
	// Admit says whether a call on route may be sent now, taking the
	// hour's probe of a stopped route.
	Admit(route string, metered bool) error
	// Refused is Admit without taking the probe: asked again before each
	// attempt and retry.
	Refused(route string, metered bool) error
	// Sent counts one attempt sent on route.
	Sent(route string, metered bool)
	// Answered learns from DingTalk's answer on route; it reports whether
	// the answer stopped the route.
	Answered(route string, r dingtalk.Result) bool
}

// Admit is the admission layer, the first after the read cache: a metered
// call on a route stopped for the month (or past quota.monthly_budget) is
// refused at once, before the breaker and pacing: nothing is queued, paced
// or sent. The refusal is a *Error, which the proxy turns into its quota
// answer.
func Admit(m Meters) call.Layer {
	return func(next call.Handler) call.Handler {
		return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
			if !f.AppCall {
				return next.Do(req, f) // a client's own token: its business
			}
			if err := m.Admit(f.Route, f.Metered); err != nil {
				return call.Fail(call.Refused(dingtalk.ReasonQuota), err)
			}
			return next.Do(req, f)
		})
	}
}

// Gate is m as a gate of the attempt loop: a retry, or a call that waited
// for its turn, is not sent once its route stopped meanwhile.
func Gate(m Meters) call.Gate { return gate{m} }

type gate struct{ m Meters }

func (g gate) Closed(f *call.Facts) error {
	if !f.AppCall {
		return nil
	}
	return g.m.Refused(f.Route, f.Metered)
}

// Count is the layer that meters each attempt, below the attempt loop:
// every attempt of the app's own sent on a metered route counts against the
// month (retries too: DingTalk meters them), and its answer teaches the
// meter. An answer that says DingTalk executed nothing (a token it refused,
// an API it does not know) neither counts nor teaches, and a call with a
// client's own token (not Metered) never reaches the meter.
func Count(m Meters, log *zap.Logger) call.Layer {
	return func(next call.Handler) call.Handler {
		return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
			resp, rep, err := next.Do(req, f)
			if rep.Attempts > 0 && f.AppCall && rep.Outcome != call.NotSent && rep.Result.Executed() {
				call.Bookkeep(log, "quota", func() {
					m.Sent(f.Route, f.Metered)
					if rep.Result.Reason != "" {
						m.Answered(f.Route, rep.Result)
					}
				})
			}
			return resp, rep, err
		})
	}
}
