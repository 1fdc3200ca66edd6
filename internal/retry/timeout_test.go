package retry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// TestPerTryTimeout: an attempt whose answer (headers, or the inspected part
// of its body) takes longer than PerTryTimeout is abandoned; it is retried if
// nothing was sent or the request is idempotent, and not otherwise.
func TestPerTryTimeout(t *testing.T) {
	const perTry = time.Second
	// stallHeaders sends the request and never answers.
	stallHeaders := func(req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		return hang(req)
	}
	// stallBody answers headers at once, then stalls in the body.
	stallBody := func(req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		resp, _ := answer(req, 200, "application/json", chunk{delay: time.Hour, data: `{"errcode":0}`})
		return resp, nil
	}
	// stallDial never gets a connection: nothing is sent.
	stallDial := hang
	tests := []struct {
		name         string
		idempotent   bool
		first        func(*http.Request) (*http.Response, error)
		later        func(*http.Request) (*http.Response, error)
		wantAttempts int
		wantOutcome  call.Outcome // of the loop's end; an error when not Success
		wantReasons  []string
	}{
		{"idempotent, no answer", true, stallHeaders, ok, 2, call.Success, []string{"timeout", "success"}},
		{"idempotent, body stalls", true, stallBody, ok, 2, call.Success, []string{"timeout", "success"}},
		{"non-idempotent, no answer", false, stallHeaders, ok, 1, call.AfterSend, []string{"timeout"}},
		{"non-idempotent, body stalls", false, stallBody, ok, 1, call.AfterSend, []string{"timeout"}},
		{"non-idempotent, dial stalls", false, stallDial, ok, 2, call.Success, []string{"timeout", "success"}},
		{"non-idempotent, dial always stalls", false, stallDial, stallDial, 3, call.NotSent, []string{"timeout", "timeout", "timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var causes []error
				var bodies []*fakeBody
				p := basePolicy()
				p.PerTryTimeout = perTry
				tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					h := tt.later
					if n == 1 {
						h = tt.first
					}
					resp, err := h(req)
					if resp != nil {
						bodies = append(bodies, resp.Body.(*fakeBody))
					}
					if err != nil {
						causes = append(causes, context.Cause(req.Context()))
					}
					return resp, err
				}), p)
				obs := observe(tr)
				tc := newCall(tt.idempotent)
				start := time.Now()
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, tc, nil))
				elapsed := time.Since(start)

				if tt.wantOutcome == call.Success {
					if err != nil {
						t.Fatalf("RoundTrip: %v", err)
					}
					if got := readAll(t, resp); got != `{"errcode":0,"errmsg":"ok"}` {
						t.Errorf("body = %q", got)
					}
				} else {
					re := asRetryError(t, err)
					if re.Outcome != tt.wantOutcome || re.Report.Attempts != tt.wantAttempts {
						t.Errorf("error: outcome %s after %d attempts, want %s after %d", re.Outcome, re.Report.Attempts, tt.wantOutcome, tt.wantAttempts)
					}
					if !errors.Is(err, retry.ErrAttemptTimeout) {
						t.Errorf("err = %v, want it to wrap ErrAttemptTimeout", err)
					}
					// Abandoned at the per-try timeout, never waited on.
					if want := time.Duration(tt.wantAttempts) * perTry; elapsed < want || elapsed > want+time.Duration(tt.wantAttempts)*p.BackoffMax {
						t.Errorf("RoundTrip took %v, want about %v", elapsed, want)
					}
				}
				if tc.Attempts != tt.wantAttempts || up.hits() != tt.wantAttempts {
					t.Errorf("Attempts = %d, upstream saw %d, want %d", tc.Attempts, up.hits(), tt.wantAttempts)
				}
				if tc.Outcome != tt.wantOutcome {
					t.Errorf("Outcome = %s, want %s", tc.Outcome, tt.wantOutcome)
				}
				if diff := cmp.Diff(tt.wantReasons, reasons(*obs)); diff != "" {
					t.Errorf("observed reasons (-want +got):\n%s", diff)
				}
				for i, c := range causes {
					if c != retry.ErrAttemptTimeout {
						t.Errorf("attempt %d ended by %v, want ErrAttemptTimeout", i+1, c)
					}
				}
				if gaps := up.gaps(); len(gaps) > 0 && gaps[0] < perTry {
					t.Errorf("second attempt %v after the first, want >= the per-try timeout %v", gaps[0], perTry)
				}
				// The stalled, abandoned body was closed.
				if len(bodies) > 0 && !bodies[0].closed.Load() {
					t.Error("the abandoned answer's body was not closed")
				}
			})
		})
	}
}

// TestFinalBodyOutlivesTimeouts is the per-try-cancel trap (STYLE B.7 #2):
// cancelling an attempt's context when RoundTrip returns, or when
// PerTryTimeout or Timeout passes, kills the body the client is still
// reading. The final answer here streams for 10 s, far past both.
func TestFinalBodyOutlivesTimeouts(t *testing.T) {
	slow := func(s string, size int) []chunk {
		var cs []chunk
		for len(s) > 0 {
			n := min(size, len(s))
			cs = append(cs, chunk{delay: time.Second, data: s[:n]})
			s = s[n:]
		}
		return cs
	}
	json := `{"errcode":0,"errmsg":"ok","result":"` + strings.Repeat("x", 200) + `"}`
	tests := []struct {
		name string
		// answer returns attempt n's answer and the final body's expected bytes.
		answer func(n int, req *http.Request) *http.Response
		want   string
	}{
		{
			name: "uninspected body after a retry",
			answer: func(n int, req *http.Request) *http.Response {
				if n == 1 {
					resp, _ := jsonAnswer(req, 503, `{"errcode":-1,"errmsg":"busy"}`)
					return resp
				}
				resp, _ := answer(req, 200, "application/octet-stream", slow(strings.Repeat("0123456789", 10), 10)...)
				return resp
			},
			want: strings.Repeat("0123456789", 10),
		},
		{
			name: "inspected prefix then a slow rest",
			answer: func(n int, req *http.Request) *http.Response {
				// The prefix (InspectBytes) arrives at once, the rest over 10 s.
				resp, _ := answer(req, 200, "application/json", append([]chunk{{data: json[:40]}}, slow(json[40:], 20)...)...)
				resp.ContentLength = int64(len(json))
				return resp
			},
			want: json,
		},
		{
			name: "last answer forwarded when the wait would pass the deadline",
			answer: func(n int, req *http.Request) *http.Response {
				body := `{"errcode":-1,"errmsg":"` + strings.Repeat("b", 100) + `"}`
				resp, _ := answer(req, 503, "application/json", append([]chunk{{data: body[:32]}}, slow(body[32:], 10)...)...)
				resp.Header.Set("Retry-After", "60")
				return resp
			},
			want: `{"errcode":-1,"errmsg":"` + strings.Repeat("b", 100) + `"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var last *http.Request
				p := basePolicy()
				p.PerTryTimeout = time.Second
				p.Timeout = 3 * time.Second
				p.InspectBytes = 32
				tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					last = req
					return tt.answer(n, req), nil
				}), p)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, newCall(true), nil))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				start := time.Now()
				got, rerr := readAllKeepOpen(resp)
				if rerr != nil {
					t.Fatalf("reading the final body failed after %d bytes and %v: %v", len(got), time.Since(start), rerr)
				}
				if got != tt.want {
					t.Errorf("body = %q, want %q", got, tt.want)
				}
				if d := time.Since(start); d <= p.Timeout {
					t.Fatalf("the body took %v, want it to outlast Timeout %v (test is not testing the trap)", d, p.Timeout)
				}
				if err := last.Context().Err(); err != nil {
					t.Errorf("attempt context ended (%v) before the client closed the body", err)
				}
				resp.Body.Close()
				if last.Context().Err() == nil {
					t.Error("attempt context still alive after the client closed the body")
				}
			})
		})
	}
}

func readAllKeepOpen(resp *http.Response) (string, error) {
	var sb strings.Builder
	buf := make([]byte, 7)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			if errors.Is(err, io.EOF) {
				return sb.String(), nil
			}
			return sb.String(), err
		}
	}
}

// TestTimeout: no wait runs past Policy.Timeout, and an attempt still running
// at the deadline ends the loop with ErrTimeout.
func TestTimeout(t *testing.T) {
	throttle := func(n int, req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		resp, _ := jsonAnswer(req, 429, `{"code":"Forbidden.AccessDenied.QpsLimitForApi","message":"qps"}`)
		return resp, nil
	}
	busyRetryAfter := func(n int, req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		resp, _ := jsonAnswer(req, 503, `{"errcode":-1,"errmsg":"busy"}`)
		resp.Header.Set("Retry-After", "10")
		return resp, nil
	}
	sentHang := func(n int, req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		return hang(req)
	}
	tests := []struct {
		name         string
		timeout      time.Duration
		perTry       time.Duration
		idempotent   bool
		h            handler
		wantAttempts int
		wantStatus   int // 0: an error wrapping ErrTimeout
		wantElapsed  time.Duration
	}{
		// Throttle penalty 1 s, deadline 0.5 s: the answer, at once.
		{"penalty past the deadline", 500 * time.Millisecond, 0, false, throttle, 1, 429, 0},
		{"Retry-After past the deadline", 2 * time.Second, 0, true, busyRetryAfter, 1, 503, 0},
		// 1 s penalties: attempts at 0, 1 and 2 s; a third would go at 3 s.
		{"waits that fit are made", 2500 * time.Millisecond, 0, false, throttle, 3, 429, 2 * time.Second},
		// A turn exactly at the deadline leaves no time for an attempt.
		{"wait ending at the deadline", 2 * time.Second, 0, false, throttle, 2, 429, time.Second},
		{"hang past the timeout", 2 * time.Second, 0, true, sentHang, 1, 0, 2 * time.Second},
		{"per-try timeouts then the timeout", 2500 * time.Millisecond, time.Second, true, sentHang, 3, 0, 2500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				p := basePolicy()
				p.MaxAttempts = 10
				p.BackoffBase, p.BackoffMax = 0, 0 // waits are exactly the penalty or Retry-After
				p.Timeout = tt.timeout
				p.PerTryTimeout = tt.perTry
				tr := newTransport(up.rt(tt.h), p)
				tr.Pacer = fastPacer()
				tc := newCall(tt.idempotent)
				start := time.Now()
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, tc, nil))
				if elapsed := time.Since(start); elapsed != tt.wantElapsed {
					t.Errorf("RoundTrip returned after %v, want %v", elapsed, tt.wantElapsed)
				}
				if tc.Attempts != tt.wantAttempts || up.hits() != tt.wantAttempts {
					t.Errorf("Attempts = %d, upstream saw %d, want %d", tc.Attempts, up.hits(), tt.wantAttempts)
				}
				if tt.wantStatus == 0 {
					if !errors.Is(err, retry.ErrTimeout) {
						t.Fatalf("err = %v, want it to wrap ErrTimeout", err)
					}
					if re := asRetryError(t, err); re.Outcome != call.Canceled || re.Report.Attempts != tt.wantAttempts {
						t.Errorf("error: outcome %s after %d attempts, want canceled after %d", re.Outcome, re.Report.Attempts, tt.wantAttempts)
					}
					if tc.Reason != "timeout" {
						t.Errorf("Reason = %q, want timeout", tc.Reason)
					}
					return
				}
				if err != nil {
					t.Fatalf("RoundTrip: %v, want the last answer", err)
				}
				if resp.StatusCode != tt.wantStatus {
					t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
				}
				if readAll(t, resp) == "" {
					t.Error("the forwarded answer has no body")
				}
			})
		})
	}
}

// TestClientGoesAway: the request's own context ending stops the loop at
// once, during a backoff wait or an attempt, with no further attempt.
func TestClientGoesAway(t *testing.T) {
	tests := []struct {
		name string
		h    handler
	}{
		{"during a backoff wait", func(n int, req *http.Request) (*http.Response, error) {
			wroteHeaders(req)
			resp, _ := jsonAnswer(req, 200, `{"errcode":90018,"errmsg":"qps"}`)
			return resp, nil
		}},
		{"during an attempt", func(n int, req *http.Request) (*http.Response, error) {
			wroteHeaders(req)
			return hang(req)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var bodies []*fakeBody
				p := basePolicy()
				p.Timeout = time.Minute
				tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					resp, err := tt.h(n, req)
					if resp != nil {
						bodies = append(bodies, resp.Body.(*fakeBody))
					}
					return resp, err
				}), p)
				tr.Pacer = fastPacer() // a throttle's retry waits out the 1 s penalty there
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				time.AfterFunc(500*time.Millisecond, cancel)
				tc := newCall(true)
				start := time.Now()
				_, err := do(tr, newRequest(t, ctx, http.MethodGet, tc, nil))
				if elapsed := time.Since(start); elapsed != 500*time.Millisecond {
					t.Errorf("RoundTrip returned %v after start, want at once when the client left (0.5s)", elapsed)
				}
				if !errors.Is(err, context.Canceled) {
					t.Errorf("err = %v, want it to wrap context.Canceled", err)
				}
				if re := asRetryError(t, err); re.Outcome != call.Canceled {
					t.Errorf("error outcome = %s, want canceled", re.Outcome)
				}
				if tc.Attempts != 1 || up.hits() != 1 {
					t.Errorf("Attempts = %d, upstream saw %d, want 1", tc.Attempts, up.hits())
				}
				for _, b := range bodies {
					if !b.closed.Load() {
						t.Error("an answer the client will never get was not closed")
					}
				}
			})
		})
	}
}

// TestTimeoutAsAnswerIsHandedOn: retry.timeout firing just as an answer is
// handed on must not cut that answer's body off mid-stream. An answer all
// in memory (within the inspected prefix) is handed on whole; one whose
// rest is still with DingTalk becomes a timeout error, never a body that
// breaks off.
func TestTimeoutAsAnswerIsHandedOn(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     string
		wantBody bool
	}{
		{"whole answer", `{"errcode":0,"errmsg":"ok"}`, true},
		{"answer longer than the inspected prefix", `{"errcode":0,"errmsg":"ok","result":"` + strings.Repeat("x", 200) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				p := basePolicy()
				p.Timeout = time.Second
				p.InspectBytes = 64
				tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					resp, _ := answer(req, 200, "application/json", chunk{data: tc.body})
					return resp, nil
				}), p)
				// The loop's timer fires between the answer and its hand-over.
				retry.SetTestHookBeforeForward(func() { time.Sleep(2 * time.Second) })
				defer retry.SetTestHookBeforeForward(nil)
				c := newCall(false)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, c, nil))
				if tc.wantBody {
					if err != nil {
						t.Fatalf("RoundTrip: %v", err)
					}
					if got := readAll(t, resp); got != tc.body {
						t.Errorf("body = %q, want the whole answer", got)
					}
					return
				}
				if !errors.Is(err, retry.ErrTimeout) || resp != nil {
					t.Fatalf("RoundTrip = %v, %v; want no answer and ErrTimeout", resp, err)
				}
				if c.Outcome != call.Canceled || c.Reason != call.ReasonTimeout {
					t.Errorf("call: %s/%s, want canceled/timeout", c.Outcome, c.Reason)
				}
			})
		})
	}
}
