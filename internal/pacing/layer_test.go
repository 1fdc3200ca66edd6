package pacing

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

type rates struct{ routes []string }

func (r *rates) RateChanged(route string, _, _ float64) { r.routes = append(r.routes, route) }

// TestLayer: an attempt goes once it has its turn, and DingTalk's answer
// to it teaches the pacer (a throttle blocks the API for the penalty and
// lowers its rate, told by route); a turn past the call's deadline is an
// attempt not sent, reason paced; token calls are not paced.
func TestLayer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		obs := &rates{}
		l := NewLayer(p, obs, nil)
		answer := call.Report{Attempts: 1, Outcome: call.Throttled, Reason: dingtalk.ReasonRateLimited,
			Result: dingtalk.Result{Class: dingtalk.Throttled, Reason: dingtalk.ReasonRateLimited}}
		sent := 0
		h := l.Wrap(call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
			sent++
			return nil, answer, nil
		}))
		f := &call.Facts{API: "/topapi/v2/user/get", Route: "user-get"}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://x/topapi/v2/user/get", nil)
		if _, rep, _ := h.Do(req, f); rep.Attempts != 1 || sent != 1 {
			t.Fatalf("first attempt: %+v, %d sent", rep, sent)
		}
		if len(obs.routes) != 1 || obs.routes[0] != "user-get" || p.Rate(f.API) >= 20 {
			t.Errorf("after a throttle: rate %v, observer told %v; want lowered, told of route user-get", p.Rate(f.API), obs.routes)
		}
		// Within the penalty, a call whose deadline falls before its end is
		// answered paced at once, nothing sent.
		dreq := req.WithContext(call.WithDeadline(req.Context(), time.Now().Add(500*time.Millisecond)))
		_, rep, err := h.Do(dreq, f)
		var pe *PacedError
		if !errors.As(err, &pe) || rep.Attempts != 0 || rep.Reason != call.ReasonPaced || sent != 1 {
			t.Fatalf("inside the penalty: %+v, %v, %d sent; want paced, unsent", rep, err, sent)
		}
		if l.Next(f, time.Now()).Before(time.Now().Add(time.Second)) {
			t.Error("Next is inside the penalty")
		}
		// Without a deadline it waits the penalty out, then goes.
		start := time.Now()
		answer = call.Report{Attempts: 1, Outcome: call.Success, Reason: dingtalk.ReasonSuccess, Result: dingtalk.Result{Reason: dingtalk.ReasonSuccess}}
		if _, rep, _ := h.Do(req, f); rep.Attempts != 1 || time.Since(start) < time.Second {
			t.Errorf("after the penalty: %+v after %v, want sent after 1 s", rep, time.Since(start))
		}
		// A token call goes at once, whatever the API's state.
		p.Block(f.API, time.Now().Add(time.Hour))
		tf := &call.Facts{API: f.API, TokenEndpoint: true}
		if _, rep, _ := h.Do(dreq, tf); rep.Attempts != 1 || !l.Next(tf, start).Equal(start) {
			t.Errorf("a token call: %+v, want it sent at once", rep)
		}
	})
}
