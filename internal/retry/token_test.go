package retry_test

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
)

const tokenInvalid = `{"errcode":40014,"errmsg":"不合法的access_token"}`

// TestTokenInvalid: an answer rejecting the token the proxy injected is
// retried exactly once, with a fresh token, for any request; every rejected
// token goes to OnTokenInvalid (the token layer drops it). A client's own
// token ("" from Prepare, or no Prepare at all) is not the proxy's to
// refresh.
func TestTokenInvalid(t *testing.T) {
	tests := []struct {
		name         string
		idempotent   bool
		prepare      bool
		clientToken  bool // Prepare injects nothing and returns ""
		thenOK       bool // the second attempt succeeds
		wantAttempts int
		wantTokens   []string // sent on the attempts
		wantRejected []string
		wantOutcome  call.Outcome
	}{
		{"injected, then accepted", false, true, false, true, 2, []string{"tok-1", "tok-2"}, []string{"tok-1"}, call.Success},
		{"injected, rejected twice, idempotent", true, true, false, false, 2, []string{"tok-1", "tok-2"}, []string{"tok-1", "tok-2"}, call.TokenInvalid},
		{"injected, rejected twice, non-idempotent", false, true, false, false, 2, []string{"tok-1", "tok-2"}, []string{"tok-1", "tok-2"}, call.TokenInvalid},
		{"client's own token", true, true, true, true, 1, []string{"client"}, nil, call.TokenInvalid},
		{"no Prepare hook", true, false, true, true, 1, []string{"client"}, nil, call.TokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var sentTokens []string
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					sentTokens = append(sentTokens, req.URL.Query().Get(dingtalk.QueryAccessToken))
					if n > 1 && tt.thenOK {
						return ok(req)
					}
					wroteHeaders(req)
					resp, _ := jsonAnswer(req, 200, tokenInvalid)
					return resp, nil
				}))
				p := tr.Policy()
				p.MaxAttempts = 5
				tr.SetPolicy(p)
				issued := 0
				if tt.prepare {
					tr.Prepare = func(req *http.Request, f *call.Facts) (string, error) {
						if tt.clientToken {
							return "", nil
						}
						issued++
						tok := fmt.Sprintf("tok-%d", issued)
						req.URL.RawQuery = dingtalk.QueryAccessToken + "=" + tok
						return tok, nil
					}
				}
				var rejected []string
				tr.OnTokenInvalid = func(tok string) { rejected = append(rejected, tok) }
				tc := newCall(tt.idempotent)
				if tt.prepare && !tt.clientToken {
					tc.Inject = dingtalk.PlaceQuery // the proxy's own token
				}
				req := newRequest(t, t.Context(), http.MethodPost, tc, nil)
				if tt.clientToken {
					req.URL.RawQuery = dingtalk.QueryAccessToken + "=client"
				}
				resp, err := do(tr, req)
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				body := readAll(t, resp)
				if tt.wantOutcome == call.TokenInvalid && body != tokenInvalid {
					t.Errorf("body = %q, want the rejection forwarded", body)
				}
				if tc.Attempts != tt.wantAttempts || tc.Outcome != tt.wantOutcome {
					t.Errorf("Attempts = %d, Outcome = %s, want %d, %s", tc.Attempts, tc.Outcome, tt.wantAttempts, tt.wantOutcome)
				}
				if diff := cmp.Diff(tt.wantTokens, sentTokens); diff != "" {
					t.Errorf("tokens sent (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantRejected, rejected); diff != "" {
					t.Errorf("OnTokenInvalid calls (-want +got):\n%s", diff)
				}
			})
		})
	}
}

var errNoToken = errors.New("token endpoint unreachable")

// TestPrepareError: a Prepare error ends the loop before anything is sent,
// with an error wrapping Prepare's.
func TestPrepareError(t *testing.T) {
	for _, idempotent := range []bool{true, false} {
		t.Run(fmt.Sprintf("idempotent=%v", idempotent), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) { return ok(req) }))
				prepared := 0
				tr.Prepare = func(req *http.Request, f *call.Facts) (string, error) {
					prepared++
					return "", fmt.Errorf("proxy: no access token: %w", errNoToken)
				}
				budget := retry.NewBudget(0, 1)
				tr.Budget = budget
				tc := newCall(idempotent)
				start := time.Now()
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
				if err == nil {
					resp.Body.Close()
					t.Fatal("RoundTrip succeeded, want Prepare's error")
				}
				if !errors.Is(err, errNoToken) {
					t.Errorf("err = %v, want it to wrap Prepare's error", err)
				}
				if up.hits() != 0 {
					t.Errorf("upstream saw %d attempts, want none", up.hits())
				}
				if prepared != 1 || tc.Attempts != 0 {
					t.Errorf("Prepare called %d times, Attempts = %d, want 1, 0 (none was sent)", prepared, tc.Attempts)
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("RoundTrip took %v, want no wait", d)
				}
				if got := allowed(budget, 20); got != 1 {
					t.Errorf("budget left %d retries, want its whole 1", got)
				}
			})
		})
	}
}
