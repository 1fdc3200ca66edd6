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
