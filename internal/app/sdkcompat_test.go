package app_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// TestTokenUsingOAuth2CallsGetTheToken: calls beside the token endpoints
// that use the app token (the JSAPI tickets every H5 micro-app signs with)
// get it injected like any other call, and are paced.
func TestTokenUsingOAuth2CallsGetTheToken(t *testing.T) {
	s := newStack(t, nil)
	pacedBefore := s.app.Pacer().Len()
	resp, body := s.do(http.MethodPost, dingtalktest.PathJsapiTickets, []byte(`{}`))
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"jsapiTicket"`) {
		t.Errorf("POST %s: %d %s", dingtalktest.PathJsapiTickets, resp.StatusCode, body)
	}
	resp, body = s.do(http.MethodGet, dingtalktest.PathGetJsapiTicket, nil)
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("GET %s: %d %s", dingtalktest.PathGetJsapiTicket, resp.StatusCode, body)
	}
	if got := s.fake.Requests(dingtalktest.PathJsapiTickets); len(got) != 1 || got[0].Header.Get(dingtalk.HeaderAccessToken) == "" {
		t.Errorf("jsapiTickets reached DingTalk %d times, or without the token", len(got))
	}
	if n := s.app.Pacer().Len() - pacedBefore; n != 2 {
		t.Errorf("%d new pacing windows for the two ticket APIs, want 2 (token-using calls are paced)", n)
	}
}

// TestStandInTokensReplaced: an empty access_token (query or header), or the
// configured placeholder, is not a token of the client's own: it is
// replaced, so DingTalk never reads the stand-in first.
func TestStandInTokensReplaced(t *testing.T) {
	const placeholder = "USE-DINGPROXY-TOKEN"
	s := newStack(t, nil, func(c *config.Config) { c.Token.Placeholder = placeholder })
	cases := []struct {
		name, method, path string
		hdr                []string
	}{
		{"empty query value", http.MethodGet, dingtalktest.PathDeptList + "?access_token=&id=5", nil},
		{"two empty query values", http.MethodGet, dingtalktest.PathDeptList + "?access_token=&id=5&access_token=+", nil},
		{"placeholder in the query", http.MethodGet, dingtalktest.PathDeptList + "?id=5&access_token=" + placeholder, nil},
		{"empty header", http.MethodGet, dingtalktest.PathContactUsers + "u1", []string{dingtalk.HeaderAccessToken, ""}},
		{"placeholder header", http.MethodGet, dingtalktest.PathContactUsers + "u2", []string{dingtalk.HeaderAccessToken, placeholder}},
	}
	for _, tc := range cases {
		req, err := http.NewRequest(tc.method, s.proxy.URL+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			req.Header[http.CanonicalHeaderKey(tc.hdr[i])] = []string{tc.hdr[i+1]}
		}
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d, want 200 with the shared token", tc.name, resp.StatusCode)
		}
	}
	for _, r := range s.fake.Requests(dingtalktest.PathDeptList) {
		q, _ := url.ParseQuery(r.RawQuery)
		if toks := q[dingtalk.QueryAccessToken]; len(toks) != 1 || toks[0] == "" || toks[0] == placeholder || q.Get("id") != "5" {
			t.Errorf("DingTalk got query %q: want the other parameters and exactly one real access_token", redactQuery(r.RawQuery))
		}
	}
	for _, r := range s.fake.Requests(dingtalktest.PathContactUsers + "u2") {
		if v := r.Header.Values(dingtalk.HeaderAccessToken); len(v) != 1 || v[0] == placeholder {
			t.Errorf("the placeholder header reached DingTalk")
		}
	}

	// Without the placeholder configured, the same value is the client's
	// own token: left alone, and DingTalk's rejection of it does not cost
	// the shared token.
	s2 := newStack(t, nil)
	s2.do(http.MethodGet, dingtalktest.PathDeptList, nil) // the shared token is fetched
	fetches := s2.fake.TokenFetches()
	resp, body := s2.do(http.MethodGet, dingtalktest.PathDeptList+"?access_token="+placeholder, nil)
	if resp.StatusCode != 200 || errcodeOf(t, body) != dingtalk.ErrcodeTokenInvalid {
		t.Errorf("a client's own token: %d %s, want DingTalk's 40014", resp.StatusCode, body)
	}
	if n := s2.fake.TokenFetches() - fetches; n != 0 {
		t.Errorf("a client's own bad token caused %d fetches of the shared token", n)
	}
}

func redactQuery(q string) string {
	return regexp.MustCompile(`access_token=[^&]{8,}`).ReplaceAllString(q, "access_token=<token>")
}

// TestRouteIsTheAPI: 10,000 distinct user ids, spelled every way SDKs send
// them (plain, LWCP union ids, Chinese, bytes that are not UTF-8), make one
// route in every metric, one breaker and one pacing window: DingTalk's
// per-API limit counts GetUser as one API.
func TestRouteIsTheAPI(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	s := newStack(t, nil)
	h := s.app.Handler()
	breakersBefore, pacingBefore := s.app.Breakers().Len(), s.app.Pacer().Len()
	ids := make(chan string)
	go func() {
		defer close(ids)
		for i := range n {
			switch i % 4 {
			case 0:
				ids <- fmt.Sprintf("user%d", i)
			case 1:
				ids <- fmt.Sprintf("$:LWCP_v1:$%dAbC==", i)
			case 2:
				ids <- fmt.Sprintf("中文%d", i)
			default:
				ids <- fmt.Sprintf("zhang san\xe9%d", i)
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for range 8 {
		wg.Go(func() {
			for id := range ids {
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req.URL.Path, req.URL.RawPath = dingtalktest.PathContactUsers+id, ""
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					mu.Lock()
					if bad++; bad < 5 {
						t.Errorf("GET users/%q: %d %s", id, rec.Code, rec.Body.String())
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if got := s.fake.TotalHits() - s.fake.TokenFetches(); got != n {
		t.Errorf("DingTalk got %d calls, want %d", got, n)
	}
	routes := metricRoutes(t, s.app, "/v1.0/contact")
	if len(routes) != 1 || !routes["/v1.0/contact/users/{unionId}"] {
		some := make([]string, 0, 5)
		for r := range routes {
			if some = append(some, r); len(some) == 5 {
				break
			}
		}
		t.Errorf("%d route label values (%q, ...), want only /v1.0/contact/users/{unionId}", len(routes), some)
	}
	if d := s.app.Breakers().Len() - breakersBefore; d != 1 {
		t.Errorf("%d new breakers, want 1", d)
	}
	if d := s.app.Pacer().Len() - pacingBefore; d != 1 {
		t.Errorf("%d new pacing windows, want 1", d)
	}
}

// metricRoutes is the set of route label values on /metrics that start
// with prefix.
func metricRoutes(t *testing.T, a *app.App, prefix string) map[string]bool {
	t.Helper()
	rec := httptest.NewRecorder()
	a.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	out := map[string]bool{}
	re := regexp.MustCompile(`route="([^"]*)"`)
	for _, m := range re.FindAllStringSubmatch(rec.Body.String(), -1) {
		if strings.HasPrefix(m[1], prefix) {
			out[m[1]] = true
		}
	}
	return out
}

// TestPathsNotUTF8: paths with bytes that are not UTF-8 (SDKs put path
// parameters into the URL unescaped) are forwarded, and DingTalk's answer
// reaches the client as it was: no panic, no "internal error", even for a
// send DingTalk executed. The two raw requests are the issue's.
func TestPathsNotUTF8(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	s := newStack(t, zap.New(core))
	cases := []struct {
		name, raw, path string
		executed        bool
	}{
		{"old-API read", "GET /user/get\xff\xfe?userid=u1 HTTP/1.1\r\nHost: x\r\n\r\n", "/user/get\xff\xfe", false},
		{"old-API send", "POST /topapi/message/corpconversation/asyncsend_v2/\xe9 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", "/topapi/message/corpconversation/asyncsend_v2/\xe9", false},
		{"new-API user id", "GET /v1.0/contact/users/zhang\xe9 HTTP/1.1\r\nHost: x\r\n\r\n", "/v1.0/contact/users/zhang\xe9", true},
	}
	for _, tc := range cases {
		before := s.fake.Hits(tc.path)
		status, body := s.raw(t, tc.raw)
		if s.fake.Hits(tc.path)-before != 1 {
			t.Errorf("%s: reached DingTalk %d times, want once", tc.name, s.fake.Hits(tc.path)-before)
		}
		if status != 200 || strings.Contains(body, "internal error") || strings.Contains(body, "dingproxy") {
			t.Errorf("%s: %d %s, want DingTalk's own answer", tc.name, status, body)
		}
		if tc.executed && !strings.Contains(body, `"userId"`) {
			t.Errorf("%s: %s, want the user DingTalk returned", tc.name, body)
		}
	}
	for _, e := range logs.All() {
		t.Errorf("error logged: %s %v", e.Message, e.ContextMap())
	}
	for r := range metricRoutes(t, s.app, "/") {
		if !dingtalk.ValidRoute(r) {
			t.Errorf("route label %q is not a valid route", r)
		}
	}
}

// TestBookkeepingCannotFailAnAnswer: a panic in what runs after an attempt
// was sent (here the attempt observer that feeds metrics and pacing) is
// logged, and DingTalk's answer to a send still reaches the client.
func TestBookkeepingCannotFailAnAnswer(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	s := newStackHooked(t, zap.New(core), func(a *app.App) {
		app.SetTestHookAttempted(a, func() { panic("bookkeeping bug") })
	})
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, []byte(`{"agent_id":1}`))
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 || !strings.Contains(string(body), "task_id") {
		t.Fatalf("send: %d %s, want DingTalk's answer with its task_id", resp.StatusCode, body)
	}
	if n := s.fake.Executions(dingtalktest.PathAsyncSend); n != 1 {
		t.Errorf("executed %d times, want 1", n)
	}
	if n := logs.FilterMessageSnippet("bookkeeping failed").Len(); n == 0 {
		t.Errorf("the bookkeeping panic was not logged")
	}
	if n := logs.FilterMessageSnippet("panic serving a request").Len(); n != 0 {
		t.Errorf("the bookkeeping panic reached the request's handler")
	}
}

// TestEncodedTokenNameIsTheClients: access%5Ftoken is access_token to
// DingTalk: a client's own token so spelled is left alone (no shared token
// appended behind it, so DingTalk's 40014 costs no shared-token fetch), and
// a stand-in so spelled is replaced.
func TestEncodedTokenNameIsTheClients(t *testing.T) {
	s := newStack(t, nil)
	s.do(http.MethodGet, dingtalktest.PathDeptList, nil) // the shared token is fetched
	fetches := s.fake.TokenFetches()
	for range 3 {
		resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList+"?access%5Ftoken=BOGUS&id=5", nil)
		if resp.StatusCode != 200 || errcodeOf(t, body) != dingtalk.ErrcodeTokenInvalid {
			t.Errorf("a client's own token: %d %s, want DingTalk's 40014", resp.StatusCode, body)
		}
	}
	if n := s.fake.TokenFetches() - fetches; n != 0 {
		t.Errorf("a client's own token spelled access%%5Ftoken cost %d shared-token fetches", n)
	}
	resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList+"?access%5ftoken=&id=6", nil)
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("an empty access%%5ftoken: %d %s, want the shared token put in", resp.StatusCode, body)
	}
	reqs := s.fake.Requests(dingtalktest.PathDeptList)
	if q := reqs[len(reqs)-1].RawQuery; strings.Contains(q, "%5f") || !strings.HasPrefix(q, "id=6&access_token=") {
		t.Errorf("DingTalk got %q, want id=6 then the shared token", redactQuery(q))
	}
}

// TestUpstreamCannotSpeakForTheProxy: X-Dingproxy-* headers in DingTalk's
// answer are dropped: the client never takes them for the proxy's word,
// and they never become metric labels.
func TestUpstreamCannotSpeakForTheProxy(t *testing.T) {
	// A fake of its own, in place before the proxy's first token fetch.
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == dingtalktest.PathDeptList {
			w.Header().Set("X-Dingproxy-Fallback", r.URL.Query().Get("kind"))
			w.Header().Set("x-dingproxy-cache", "hit")
		}
		fake.Handler().ServeHTTP(w, r)
	}))
	defer up.Close()
	core, logs := observer.New(zapcore.ErrorLevel)
	s := newStackOn(t, fake, zap.New(core), nil, func(c *config.Config) { c.Upstreams.OAPI, c.Upstreams.API = up.URL, up.URL })
	before := testutil.CollectAndCount(s.app.Metrics().Fallbacks)
	for _, k := range []string{"u1", "u2", "%FF"} {
		resp, _ := s.do(http.MethodGet, dingtalktest.PathDeptList+"?kind="+k, nil)
		if resp.StatusCode != 200 || resp.Header.Get("X-Dingproxy-Fallback") != "" || resp.Header.Get("X-Dingproxy-Cache") != "" {
			t.Errorf("kind %s: %d, client sees %v", k, resp.StatusCode, resp.Header)
		}
	}
	if n := testutil.CollectAndCount(s.app.Metrics().Fallbacks) - before; n != 0 {
		t.Errorf("DingTalk's X-Dingproxy-Fallback headers made %d fallback series", n)
	}
	for _, e := range logs.All() {
		t.Errorf("logged %q", e.Message)
	}
}
