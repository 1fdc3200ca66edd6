package retry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// TestSpecRetryTable is the README's retry table ("Retry"), every row for an idempotent and a
// non-idempotent request, sent through the real attempt loop to the fake
// DingTalk over loopback. Each scripted fault repeats for every attempt, so
// the number of attempts the fake sees says whether the row retries:
// MaxAttempts when it does, 1 when it does not, 2 for "once, with a fresh
// token". Changing any row's behaviour fails this test.
func TestSpecRetryTable(t *testing.T) {
	const max = 3
	type row struct {
		name         string
		path         string
		fault        dingtalktest.Fault // repeated on every attempt; zero with dead
		dead         bool               // the upstream refuses connections
		idempotent   int                // attempts wanted for an idempotent request
		nonIdempoten int                // attempts wanted for a non-idempotent one
	}
	const oapi, topapi, api = "/echo", "/topapi/v2/user/get", "/v1.0/echo"
	rows := []row{
		// connection could not be made: nothing was sent
		{name: "dial refused", path: oapi, dead: true, idempotent: max, nonIdempoten: max},
		// throttled: DingTalk rejected it unexecuted
		{name: "HTTP 429", path: api, fault: dingtalktest.Status(429), idempotent: max, nonIdempoten: max},
		{name: "oapi 90018", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeQPSAppAPI, "qps"), idempotent: max, nonIdempoten: max},
		{name: "oapi 90002", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeQPSAPI, "qps"), idempotent: max, nonIdempoten: max},
		{name: "oapi 90019", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeQPSSuiteAPI, "qps"), idempotent: max, nonIdempoten: max},
		{name: "88 + 90018", path: topapi, fault: dingtalktest.Gateway88(dingtalk.ErrcodeQPSAppAPI), idempotent: max, nonIdempoten: max},
		{name: "88 + 90002", path: topapi, fault: dingtalktest.Gateway88(dingtalk.ErrcodeQPSAPI), idempotent: max, nonIdempoten: max},
		{name: "88 + 90019", path: topapi, fault: dingtalktest.Gateway88(dingtalk.ErrcodeQPSSuiteAPI), idempotent: max, nonIdempoten: max},
		{name: "api QpsLimitForAppkeyAndApi", path: api, fault: dingtalktest.APIError(403, dingtalk.CodeQPSLimitAppAPI, "qps"), idempotent: max, nonIdempoten: max},
		{name: "api QpsLimitForApi", path: api, fault: dingtalktest.APIError(403, "Forbidden.AccessDenied.QpsLimitForApi", "qps"), idempotent: max, nonIdempoten: max},
		{name: "api system.busy", path: api, fault: dingtalktest.TooMany(), idempotent: max, nonIdempoten: max},
		// token invalid or expired: once, with a fresh token
		{name: "oapi 40014", path: oapi, fault: dingtalktest.TokenInvalid(), idempotent: 2, nonIdempoten: 2},
		{name: "oapi 42001", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeTokenExpired, "expired"), idempotent: 2, nonIdempoten: 2},
		{name: "oapi 40001", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeSecretOrToken, "bad"), idempotent: 2, nonIdempoten: 2},
		{name: "88 + 40014", path: topapi, fault: dingtalktest.TokenInvalid(), idempotent: 2, nonIdempoten: 2},
		{name: "88 + 42001", path: topapi, fault: dingtalktest.Gateway88(dingtalk.ErrcodeTokenExpired), idempotent: 2, nonIdempoten: 2},
		{name: "api InvalidAuthentication", path: api, fault: dingtalktest.TokenInvalid(), idempotent: 2, nonIdempoten: 2},
		{name: "api HTTP 401", path: api, fault: dingtalktest.Status(401), idempotent: 2, nonIdempoten: 2},
		// reset or timeout after the request was sent: it may have executed
		{name: "reset after execution", path: oapi, fault: dingtalktest.ResetAfterExec(), idempotent: max, nonIdempoten: 1},
		{name: "reset after sending", path: oapi, fault: dingtalktest.ResetBeforeExec(), idempotent: max, nonIdempoten: 1},
		{name: "timeout after sending", path: oapi, fault: dingtalktest.Hang(), idempotent: max, nonIdempoten: 1},
		// gateway errors and system busy: may have executed
		{name: "HTTP 502", path: oapi, fault: dingtalktest.Status(502), idempotent: max, nonIdempoten: 1},
		{name: "HTTP 503", path: api, fault: dingtalktest.Status(503), idempotent: max, nonIdempoten: 1},
		{name: "HTTP 504", path: api, fault: dingtalktest.Status(504), idempotent: max, nonIdempoten: 1},
		{name: "oapi -1 system busy", path: oapi, fault: dingtalktest.SystemBusy(), idempotent: max, nonIdempoten: 1},
		{name: "api 500 unknownError", path: api, fault: dingtalktest.APIError(500, dingtalk.CodeUnknownError, "x"), idempotent: max, nonIdempoten: 1},
		{name: "api 503 system busy", path: api, fault: dingtalktest.SystemBusy(), idempotent: max, nonIdempoten: 1},
		// quota, permission, parameter and other business errors: never
		{name: "oapi 90020 monthly quota", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeMonthlyQuota, "quota"), idempotent: 1, nonIdempoten: 1},
		{name: "api ApiCountLimitForOrg", path: api, fault: dingtalktest.APIError(403, dingtalk.CodeMonthlyQuota, "quota"), idempotent: 1, nonIdempoten: 1},
		{name: "oapi 60011 no permission", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeNoPermission, "perm"), idempotent: 1, nonIdempoten: 1},
		{name: "api permission denied", path: api, fault: dingtalktest.APIError(403, dingtalk.CodeNoPermission, "perm"), idempotent: 1, nonIdempoten: 1},
		{name: "oapi 40035 bad parameter", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeBadParameter, "param"), idempotent: 1, nonIdempoten: 1},
		{name: "88 + 40000 blank token", path: topapi, fault: dingtalktest.Gateway88(dingtalk.ErrcodeTokenBlank), idempotent: 1, nonIdempoten: 1},
		{name: "oapi 60121 no such user", path: oapi, fault: dingtalktest.Errcode(dingtalk.ErrcodeNoSuchUser, "user"), idempotent: 1, nonIdempoten: 1},
		{name: "api 400 invalidParameter", path: api, fault: dingtalktest.APIError(400, dingtalk.CodeInvalidParameter, "x"), idempotent: 1, nonIdempoten: 1},
		{name: "IP ban page", path: oapi, fault: dingtalktest.IPBanHTML(), idempotent: 1, nonIdempoten: 1},
		{name: "success", path: oapi, fault: dingtalktest.OK(), idempotent: 1, nonIdempoten: 1},
	}
	for _, r := range rows {
		for _, idem := range []bool{true, false} {
			want := r.nonIdempoten
			name := r.name + "/non-idempotent"
			if idem {
				want, name = r.idempotent, r.name+"/idempotent"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				fake := dingtalktest.NewServer(t, dingtalktest.Options{})
				base := &http.Transport{}
				t.Cleanup(base.CloseIdleConnections)
				target := fake.URL()
				if r.dead {
					target = "http://" + dingtalktest.DeadAddr(t)
				}
				tok := fetchToken(t, fake.URL())
				perTry := 10 * time.Second
				if r.name == "timeout after sending" {
					perTry = 2 * time.Second // long enough to reach the fake through a VM pause under -race
				}
				tr := newTransport(base, retry.Policy{
					MaxAttempts:   max,
					PerTryTimeout: perTry,
					Timeout:       30 * time.Second,
					BackoffBase:   time.Millisecond,
					BackoffMax:    2 * time.Millisecond,
				})
				var rejected []string
				tr.Prepare = func(req *http.Request, f *call.Facts) (string, error) {
					if f.Upstream == dingtalk.API {
						req.Header.Set(dingtalk.HeaderAccessToken, tok)
					} else {
						req.URL.RawQuery = dingtalk.QueryAccessToken + "=" + url.QueryEscape(tok)
					}
					return tok, nil
				}
				tr.OnTokenInvalid = func(tok string) { rejected = append(rejected, tok) }
				if !r.dead {
					script := make([]dingtalktest.Fault, max)
					for i := range script {
						script[i] = r.fault
					}
					fake.Script(r.path, script...)
				}
				body := []byte(`{"userid":"u1","msg":"hello"}`)
				inject := dingtalk.PlaceQuery
				if dingtalk.UpstreamFor(r.path) == dingtalk.API {
					inject = dingtalk.PlaceHeader
				}
				tc := &testCall{Facts: call.Facts{API: r.path, Route: r.path, Upstream: dingtalk.UpstreamFor(r.path), Idempotent: idem, Body: body, Replayable: true, Inject: inject}}
				req, _ := http.NewRequestWithContext(context.WithValue(call.WithFacts(context.Background(), &tc.Facts), testCallKey{}, tc), http.MethodPost, target+r.path, bytes.NewReader(body))
				resp, err := do(tr, req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if tc.Attempts != want {
					t.Errorf("attempts = %d, want %d (last outcome %s, err %v)", tc.Attempts, want, tc.Outcome, err)
				}
				if !r.dead {
					if got := fake.Hits(r.path); got != want {
						t.Errorf("fake saw %d attempts, want %d", got, want)
					}
				}
				wantRejected := 0
				if r.idempotent == 2 { // a token row: each attempt's token was rejected
					wantRejected = want
				}
				if len(rejected) != wantRejected {
					t.Errorf("OnTokenInvalid called %d times, want %d", len(rejected), wantRejected)
				}
			})
		}
	}
}

func fetchToken(t *testing.T, base string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(base + dingtalk.PathGetToken + "?appkey=" + dingtalktest.DefaultAppKey + "&appsecret=" + dingtalktest.DefaultAppSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.AccessToken == "" {
		t.Fatalf("gettoken: %v", err)
	}
	return v.AccessToken
}
