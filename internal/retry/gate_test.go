package retry_test

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/dingproxy/dingproxy/internal/call"
)

var errRouteOpen = errors.New("route open")

// TestGate: a route that opens while a call waits is not called: the first
// attempt is answered with the gate's error before anything is sent, and a
// retry is not made (the answer in hand goes to the client).
func TestGate(t *testing.T) {
	t.Run("closed before the first attempt", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var up upstream
			tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
				resp, _ := jsonAnswer(req, 200, `{"errcode":0}`)
				return resp, nil
			}))
			tr.Gate = func(*call.Facts) error { return errRouteOpen }
			_, err := do(tr, newRequest(t, t.Context(), http.MethodGet, newCall(true), nil))
			var re *call.Error
			if !errors.As(err, &re) || !errors.Is(err, errRouteOpen) || re.Report.Attempts != 0 || re.Outcome != call.NotSent || re.Report.Reason != call.ReasonClosed {
				t.Fatalf("err = %v, want a retry.Error of 0 attempts, not sent, reason closed, wrapping the gate's", err)
			}
			if up.hits() != 0 {
				t.Errorf("%d attempts reached the upstream", up.hits())
			}
		})
	})
	t.Run("closes after the first attempt", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			var up upstream
			var open atomic.Bool
			tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
				wroteHeaders(req)
				open.Store(true) // the route opens while this attempt runs
				resp, _ := jsonAnswer(req, 503, `{}`)
				return resp, nil
			}))
			tr.Gate = func(*call.Facts) error {
				if open.Load() {
					return errRouteOpen
				}
				return nil
			}
			tc := newCall(true)
			resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
			if err != nil {
				t.Fatalf("err = %v, want the 503 in hand", err)
			}
			readAll(t, resp)
			if resp.StatusCode != 503 || up.hits() != 1 || tc.Attempts != 1 {
				t.Errorf("status %d after %d attempts (%d upstream), want the 503 after 1, not retried into the open route", resp.StatusCode, tc.Attempts, up.hits())
			}
		})
	})
}

// TestMayHaveExecutedOutlivesARefusedRetry: an idempotent call whose first
// attempt may have executed (a 503 after the request was written), and
// whose retry is refused before it goes (the route closed just then),
// ends NotSent by its last attempt, yet its Report says an attempt may
// have executed: nothing may treat it as never sent (and keep it to send
// again). A call refused for now (a throttle) and then refused is not.
func TestMayHaveExecutedOutlivesARefusedRetry(t *testing.T) {
	for _, tt := range []struct {
		name   string
		status int
		body   string
		want   bool
	}{
		{"a 503 first", 503, `{}`, true},
		{"a throttle first", 200, `{"errcode":90018,"errmsg":"qps limit"}`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					resp, _ := jsonAnswer(req, tt.status, tt.body)
					return resp, nil
				}))
				var asked atomic.Int32
				tr.Gate = func(*call.Facts) error {
					// Open for the first attempt and the loop's own check
					// after it; closed when the retry goes.
					if asked.Add(1) >= 3 {
						return errRouteOpen
					}
					return nil
				}
				_, err := do(tr, newRequest(t, t.Context(), http.MethodGet, newCall(true), nil))
				var re *call.Error
				if !errors.As(err, &re) {
					t.Fatalf("err = %v, want the refused retry's call.Error", err)
				}
				if up.hits() != 1 || re.Report.Attempts != 1 || re.Report.Outcome != call.NotSent {
					t.Fatalf("%d upstream hits, report %+v: want one attempt, then a retry refused before it went", up.hits(), re.Report)
				}
				if re.Report.MayHaveExecuted != tt.want {
					t.Errorf("MayHaveExecuted = %v, want %v", re.Report.MayHaveExecuted, tt.want)
				}
			})
		})
	}
}
