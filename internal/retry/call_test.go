package retry_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/retry"
)

var errRefused = errors.New("dial tcp 203.0.113.1:443: connect: connection refused")

// refused emulates a dial failure: nothing was sent (no WroteHeaders).
func refused(req *http.Request) (*http.Response, error) { return nil, errRefused }

// TestCallRecord: the loop fills in Call.Attempts, Outcome, Reason and
// BudgetExhausted, and calls Observe once per attempt with the attempt's
// number, reason and duration.
func TestCallRecord(t *testing.T) {
	busy := func(req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		time.Sleep(200 * time.Millisecond) // DingTalk takes its time
		resp, _ := jsonAnswer(req, 503, `<html>busy</html>`)
		resp.Header.Set("Content-Type", "text/html")
		return resp, nil
	}
	business := func(req *http.Request) (*http.Response, error) {
		wroteHeaders(req)
		resp, _ := jsonAnswer(req, 200, `{"errcode":60121,"errmsg":"找不到该用户"}`)
		return resp, nil
	}
	tests := []struct {
		name          string
		idempotent    bool
		budget        *retry.Budget
		script        []func(*http.Request) (*http.Response, error)
		wantErr       error // nil: an answer
		want          call.Report
		wantObserved  []observed
		wantUpstream  int
		wantBodyStart string
	}{
		{
			name: "idempotent: refused, busy, success", idempotent: true,
			script: []func(*http.Request) (*http.Response, error){refused, busy, ok},
			want:   call.Report{Attempts: 3, Outcome: call.Success, Reason: "success"},
			wantObserved: []observed{
				{1, "dial_error", 0}, {2, "http_5xx", 200 * time.Millisecond}, {3, "success", 0},
			},
			wantUpstream: 3,
		},
		{
			name: "non-idempotent: refused, busy", idempotent: false,
			script: []func(*http.Request) (*http.Response, error){refused, busy, ok},
			want:   call.Report{Attempts: 2, Outcome: call.ServerError, Reason: "http_5xx"},
			wantObserved: []observed{
				{1, "dial_error", 0}, {2, "http_5xx", 200 * time.Millisecond},
			},
			wantUpstream: 2,
		},
		{
			name: "business error", idempotent: true,
			script:       []func(*http.Request) (*http.Response, error){business, ok},
			want:         call.Report{Attempts: 1, Outcome: call.Business, Reason: "business_error"},
			wantObserved: []observed{{1, "business_error", 0}},
			wantUpstream: 1,
		},
		{
			name: "refused every time", idempotent: false,
			script:       []func(*http.Request) (*http.Response, error){refused, refused, refused},
			wantErr:      errRefused,
			want:         call.Report{Attempts: 3, Outcome: call.NotSent, Reason: "dial_error"},
			wantObserved: []observed{{1, "dial_error", 0}, {2, "dial_error", 0}, {3, "dial_error", 0}},
			wantUpstream: 3,
		},
		{
			name: "budget refuses the retry", idempotent: true, budget: retry.NewBudget(0, 0),
			script:       []func(*http.Request) (*http.Response, error){busy, ok},
			want:         call.Report{Attempts: 1, Outcome: call.ServerError, Reason: "http_5xx", BudgetExhausted: true},
			wantObserved: []observed{{1, "http_5xx", 200 * time.Millisecond}},
			wantUpstream: 1,
		},
		{
			name: "budget refuses a retry of nothing sent", idempotent: true, budget: retry.NewBudget(0, 0),
			script:       []func(*http.Request) (*http.Response, error){refused, ok},
			wantErr:      errRefused,
			want:         call.Report{Attempts: 1, Outcome: call.NotSent, Reason: "dial_error", BudgetExhausted: true},
			wantObserved: []observed{{1, "dial_error", 0}},
			wantUpstream: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					return tt.script[n-1](req)
				}))
				tr.Budget = tt.budget
				obs := observe(tr)
				tc := newCall(tt.idempotent)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, tc, nil))
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("err = %v, want it to wrap %v", err, tt.wantErr)
					}
					if re := asRetryError(t, err); re.Report.Attempts != tt.want.Attempts || re.Outcome != tt.want.Outcome {
						t.Errorf("error: outcome %s after %d attempts, want %s after %d", re.Outcome, re.Report.Attempts, tt.want.Outcome, tt.want.Attempts)
					}
				} else {
					if err != nil {
						t.Fatalf("RoundTrip: %v", err)
					}
					readAll(t, resp)
				}
				got := call.Report{Attempts: tc.Attempts, Outcome: tc.Outcome, Reason: tc.Reason, BudgetExhausted: tc.BudgetExhausted}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("Call (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantObserved, *obs); diff != "" {
					t.Errorf("Observe calls (-want +got):\n%s", diff)
				}
				if up.hits() != tt.wantUpstream {
					t.Errorf("upstream saw %d attempts, want %d", up.hits(), tt.wantUpstream)
				}
			})
		})
	}
}

// TestNoCall: a request without a Call is judged by its method, and a body
// of its own is streamed once.
func TestNoCall(t *testing.T) {
	tests := []struct {
		name         string
		method       string
		body         []byte
		wantAttempts int
	}{
		{"GET is idempotent", http.MethodGet, nil, 3},
		{"POST is not", http.MethodPost, nil, 1},
		{"POST with a body is sent once", http.MethodPost, []byte(`{"a":1}`), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var got [][]byte
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					if req.Body != nil {
						b, _ := io.ReadAll(req.Body)
						req.Body.Close()
						got = append(got, b)
					}
					resp, _ := jsonAnswer(req, 502, `{}`)
					return resp, nil
				}))
				var body io.Reader
				if tt.body != nil {
					body = &closeOnCloseReader{r: bytes.NewReader(tt.body)}
				}
				resp, err := do(tr, newRequest(t, t.Context(), tt.method, nil, body))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				readAll(t, resp)
				if up.hits() != tt.wantAttempts {
					t.Errorf("upstream saw %d attempts, want %d", up.hits(), tt.wantAttempts)
				}
				if tt.body != nil && (len(got) != 1 || !bytes.Equal(got[0], tt.body)) {
					t.Errorf("upstream got bodies %q, want %q once", got, tt.body)
				}
			})
		})
	}
}
