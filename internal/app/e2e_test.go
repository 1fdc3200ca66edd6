package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

func errcodeOf(t *testing.T, body []byte) int {
	t.Helper()
	var v struct {
		Errcode json.Number `json:"errcode"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("answer is not JSON: %v: %q", err, body)
	}
	n, _ := strconv.Atoi(v.Errcode.String())
	return n
}

// checkOwnShape checks that body, an answer of dingproxy's own to a request
// for path, is in the shape of path's host: errcode/errmsg for oapi;
// code (dingproxy.*)/message/requestid for api, as SDKs of each read them.
func checkOwnShape(t *testing.T, name, path string, body []byte) {
	t.Helper()
	var v map[string]json.RawMessage
	if err := json.Unmarshal(body, &v); err != nil {
		t.Errorf("%s: answer is not JSON: %v: %q", name, err, body)
		return
	}
	u, err := url.Parse(path)
	if err != nil {
		u = &url.URL{Path: path}
	}
	if dingtalk.UpstreamFor(u.Path) == dingtalk.API {
		var code, msg, id string
		json.Unmarshal(v["code"], &code)
		json.Unmarshal(v["message"], &msg)
		json.Unmarshal(v["requestid"], &id)
		if !strings.HasPrefix(code, "dingproxy.") || msg == "" || len(id) != 36 || v["errcode"] != nil {
			t.Errorf("%s: %s: body %q is not in the new-API shape", name, path, body)
		}
		return
	}
	var errcode int
	var errmsg string
	if json.Unmarshal(v["errcode"], &errcode) != nil || json.Unmarshal(v["errmsg"], &errmsg) != nil || errcode == 0 || errmsg == "" || v["code"] != nil {
		t.Errorf("%s: %s: body %q is not in the old-API shape", name, path, body)
	}
}

// requestPath is the target of a raw request's request line.
func requestPath(raw string) string {
	line, _, _ := strings.Cut(raw, "\r\n")
	f := strings.Fields(line)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

func attempts(t *testing.T, resp *http.Response) int {
	t.Helper()
	n, err := strconv.Atoi(resp.Header.Get(proxy.HeaderAttempts))
	if err != nil {
		t.Fatalf("%s = %q, want a number", proxy.HeaderAttempts, resp.Header.Get(proxy.HeaderAttempts))
	}
	return n
}

func idempotentRoute(path string) stackOpt {
	return func(c *config.Config) {
		t := true
		c.Routes = append(c.Routes, config.Route{Path: path, Idempotent: &t})
	}
}

func TestConcurrentCallsWithoutTokenFetchOnce(t *testing.T) {
	// 200 calls at once under -race on a loaded machine can take longer
	// than the test stack's 10 s retry.timeout; this test is about the
	// token, not timeouts.
	s := newStack(t, nil, func(c *config.Config) { c.Retry.PerTryTimeout, c.Retry.Timeout = 30*time.Second, time.Minute })
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Appendf(nil, `{"userid":"u%d"}`, i)
			req, _ := http.NewRequest(http.MethodPost, s.proxy.URL+dingtalktest.PathUserGet, bytes.NewReader(body))
			resp, err := s.client.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			var v struct{ Errcode int }
			if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != 200 || v.Errcode != 0 {
				errs <- fmt.Sprintf("status %d errcode %d err %v", resp.StatusCode, v.Errcode, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := s.fake.TokenFetches(); got != 1 {
		t.Errorf("token fetches = %d, want 1", got)
	}
}

func TestRevokedTokenRefreshedOnce(t *testing.T) {
	s := newStack(t, nil)
	if resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); errcodeOf(t, body) != 0 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	before := s.fake.TokenFetches()
	s.fake.ExpireTokens()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := dingtalktest.PathUserGet
			if i%2 == 1 {
				path = dingtalktest.PathContactUsers + "u1" // the api host's shape
			}
			method := http.MethodPost
			var body []byte = []byte(`{"userid":"u1"}`)
			if i%2 == 1 {
				method, body = http.MethodGet, nil
			}
			resp, b := s.do(method, path, body)
			if resp.StatusCode != 200 {
				t.Errorf("%s after revocation: %d %s", path, resp.StatusCode, b)
			}
			if i%2 == 0 && errcodeOf(t, b) != 0 {
				t.Errorf("%s after revocation: %s", path, b)
			}
		}()
	}
	wg.Wait()
	if got := s.fake.TokenFetches() - before; got != 1 {
		t.Errorf("token fetches after revocation = %d, want 1", got)
	}
}

func TestRobotSendKeepsItsOwnToken(t *testing.T) {
	s := newStack(t, nil)
	path := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken + "&timestamp=1&sign=abc"
	resp, body := s.do(http.MethodPost, path, []byte(`{"msgtype":"text","text":{"content":"hi"}}`), "Content-Type", "application/json")
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Fatalf("robot send: %d %s", resp.StatusCode, body)
	}
	reqs := s.fake.Requests(dingtalk.PathRobotSend)
	if len(reqs) != 1 {
		t.Fatalf("robot requests = %d, want 1", len(reqs))
	}
	q, _ := url.ParseQuery(reqs[0].RawQuery)
	if got := q[dingtalk.QueryAccessToken]; len(got) != 1 || got[0] != dingtalktest.DefaultRobotToken {
		t.Errorf("robot access_token = %q, want only the robot's own", got)
	}
	if q.Get("sign") != "abc" || q.Get("timestamp") != "1" {
		t.Errorf("robot query changed: %q", reqs[0].RawQuery)
	}
	// A robot token error never touches the app token. (The background
	// refresher's first fetch, which a robot send does not wait for, is
	// over first: on a busy machine it can come this late.)
	waitFor(t, "the shared token", func() bool { tok, _ := s.app.Tokens().Peek(); return tok != "" })
	before := s.fake.TokenFetches()
	resp, body = s.do(http.MethodPost, dingtalk.PathRobotSend+"?access_token=wrong", []byte(`{"msgtype":"text"}`))
	if errcodeOf(t, body) != dingtalk.ErrcodeRobotNoToken || attempts(t, resp) != 1 {
		t.Errorf("robot with a wrong token: %s, attempts %d", body, attempts(t, resp))
	}
	if s.fake.TokenFetches() != before {
		t.Error("a robot token error caused an app token fetch")
	}
}

func TestClientTokenIsKept(t *testing.T) {
	s := newStack(t, nil)
	// A token of the client's own, valid at DingTalk: fetched straight from the fake.
	resp, err := http.Get(s.fake.URL() + "/gettoken?appkey=" + dingtalktest.DefaultAppKey + "&appsecret=" + dingtalktest.DefaultAppSecret)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()

	r, body := s.do(http.MethodGet, dingtalktest.PathDeptList+"?access_token="+tok.AccessToken+"&id=1", nil)
	if errcodeOf(t, body) != 0 {
		t.Fatalf("own token on oapi: %d %s", r.StatusCode, body)
	}
	got := s.fake.Requests(dingtalktest.PathDeptList)
	if q, _ := url.ParseQuery(got[len(got)-1].RawQuery); len(q[dingtalk.QueryAccessToken]) != 1 || q.Get(dingtalk.QueryAccessToken) != tok.AccessToken {
		t.Errorf("oapi query = %q, want the client's token alone", got[len(got)-1].RawQuery)
	}
	r, _ = s.do(http.MethodGet, dingtalktest.PathContactUsers+"u1", nil, dingtalk.HeaderAccessToken, tok.AccessToken)
	if r.StatusCode != 200 {
		t.Fatalf("own token on api: %d", r.StatusCode)
	}
	gotAPI := s.fake.Requests(dingtalktest.PathContactUsers + "u1")
	if h := gotAPI[len(gotAPI)-1].Header.Values(dingtalk.HeaderAccessToken); len(h) != 1 || h[0] != tok.AccessToken {
		t.Errorf("api header = %q, want the client's token alone", h)
	}
	// A client's own token that DingTalk rejects is the client's business:
	// forwarded once, and the shared token is not refetched. (The
	// background refresher's first fetch, which no call here waited for,
	// is over first.)
	waitFor(t, "the shared token", func() bool { tok, _ := s.app.Tokens().Peek(); return tok != "" })
	before := s.fake.TokenFetches()
	r, body = s.do(http.MethodGet, dingtalktest.PathDeptList+"?access_token=not-a-token", nil)
	if errcodeOf(t, body) != dingtalk.ErrcodeTokenInvalid || attempts(t, r) != 1 {
		t.Errorf("bad own token: %s, attempts %d; want 40014 after 1", body, attempts(t, r))
	}
	if s.fake.TokenFetches() != before {
		t.Error("a client's bad token caused a shared token fetch")
	}
}

func TestClientTokenCallAnsweredFromCache(t *testing.T) {
	s := newStack(t, nil)
	s.do(http.MethodGet, dingtalktest.PathDeptList, nil) // the proxy holds a token now
	fetches, hits := s.fake.TokenFetches(), s.fake.Hits(dingtalk.PathGetToken)
	resp, body := s.do(http.MethodGet, "/gettoken?appkey="+dingtalktest.DefaultAppKey+"&appsecret="+dingtalktest.DefaultAppSecret, nil)
	var got struct {
		Errcode     int    `json:"errcode"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 || got.Errcode != 0 || got.AccessToken == "" {
		t.Fatalf("gettoken from cache: %d %s", resp.StatusCode, body)
	}
	if got.ExpiresIn <= 0 || got.ExpiresIn > 7200 {
		t.Errorf("expires_in = %d, want the remaining lifetime", got.ExpiresIn)
	}
	held, _ := s.app.Tokens().Peek()
	if got.AccessToken != held {
		t.Error("answered token differs from the shared one")
	}
	resp, body = s.do(http.MethodPost, dingtalk.PathOAuth2Token, []byte(`{"appKey":"`+dingtalktest.DefaultAppKey+`","appSecret":"`+dingtalktest.DefaultAppSecret+`"}`), "Content-Type", "application/json")
	var got2 struct {
		AccessToken string `json:"accessToken"`
		ExpireIn    int    `json:"expireIn"`
	}
	if err := json.Unmarshal(body, &got2); err != nil || resp.StatusCode != 200 || got2.AccessToken != held || got2.ExpireIn <= 0 {
		t.Fatalf("oauth2 from cache: %d %s", resp.StatusCode, body)
	}
	if s.fake.TokenFetches() != fetches || s.fake.Hits(dingtalk.PathGetToken) != hits {
		t.Error("a token call with the configured credentials reached DingTalk")
	}
	// Other credentials are forwarded: DingTalk answers them.
	_, body = s.do(http.MethodGet, "/gettoken?appkey=other&appsecret=other", nil)
	if errcodeOf(t, body) != dingtalk.ErrcodeBadAppKey {
		t.Errorf("foreign credentials: %s, want DingTalk's 40096", body)
	}
	if s.fake.Hits(dingtalk.PathGetToken) != hits+1 {
		t.Error("a token call with other credentials was not forwarded")
	}
}

func TestBodyReplayedByteForByte(t *testing.T) {
	s := newStack(t, nil, idempotentRoute(dingtalktest.PathEcho))
	body := make([]byte, 64<<10)
	rand.Read(body)
	s.fake.Script(dingtalktest.PathEcho, dingtalktest.SystemBusy(), dingtalktest.ResetBeforeExec(), dingtalktest.OK())
	resp, ans := s.do(http.MethodPost, dingtalktest.PathEcho, body, "Content-Type", "application/octet-stream")
	if resp.StatusCode != 200 || errcodeOf(t, ans) != 0 || attempts(t, resp) != 3 {
		t.Fatalf("echo: %d attempts %s: %s", resp.StatusCode, resp.Header.Get(proxy.HeaderAttempts), ans)
	}
	sum := sha256.Sum256(body)
	var echo struct {
		SHA256 string `json:"sha256"`
		Length int    `json:"length"`
	}
	json.Unmarshal(ans, &echo)
	if echo.SHA256 != hex.EncodeToString(sum[:]) || echo.Length != len(body) {
		t.Errorf("echo saw %d bytes %s, want %d %x", echo.Length, echo.SHA256, len(body), sum)
	}
	reqs := s.fake.Requests(dingtalktest.PathEcho)
	if len(reqs) != 3 {
		t.Fatalf("fake got %d requests, want 3", len(reqs))
	}
	for i, r := range reqs {
		if !bytes.Equal(r.Body, body) {
			t.Errorf("attempt %d body differs (%d bytes)", i+1, len(r.Body))
		}
	}
}

func TestLargeBodyDeliveredOnce(t *testing.T) {
	s := newStack(t, nil, idempotentRoute(dingtalktest.PathEcho))
	body := make([]byte, 4<<20)
	rand.Read(body)
	resp, ans := s.do(http.MethodPost, dingtalktest.PathEcho, body)
	var echo struct {
		SHA256 string `json:"sha256"`
	}
	json.Unmarshal(ans, &echo)
	sum := sha256.Sum256(body)
	if resp.StatusCode != 200 || echo.SHA256 != hex.EncodeToString(sum[:]) || attempts(t, resp) != 1 {
		t.Fatalf("4 MiB echo: %d attempts %d: %.200s", resp.StatusCode, attempts(t, resp), ans)
	}
	// Too large to replay: even on an idempotent route a failure is not retried.
	s.fake.Script(dingtalktest.PathEcho, dingtalktest.SystemBusy())
	resp, ans = s.do(http.MethodPost, dingtalktest.PathEcho, body)
	if errcodeOf(t, ans) != dingtalk.ErrcodeSystemBusy || attempts(t, resp) != 1 {
		t.Errorf("4 MiB after system busy: %s attempts %d, want -1 after 1", ans, attempts(t, resp))
	}
	if got := s.fake.Hits(dingtalktest.PathEcho); got != 2 {
		t.Errorf("fake hits = %d, want 2 (one per call)", got)
	}
}

func TestSendResetAfterExecutionNotRepeated(t *testing.T) {
	s := newStack(t, nil)
	s.fake.Script(dingtalktest.PathAsyncSend, dingtalktest.ResetAfterExec())
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, []byte(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"once"}}}`))
	if resp.StatusCode != http.StatusBadGateway || attempts(t, resp) != 1 {
		t.Errorf("send reset after execution: %d attempts %d, want 502 after 1", resp.StatusCode, attempts(t, resp))
	}
	if errcodeOf(t, body) != dingtalk.ErrcodeSystemBusy {
		t.Errorf("body %s is not DingTalk-shaped", body)
	}
	if ex, dup := s.fake.Executions(dingtalktest.PathAsyncSend), s.fake.Duplicates(); ex != 1 || dup != 0 {
		t.Errorf("executions %d duplicates %d, want 1 and 0", ex, dup)
	}
	// The same send with DingTalk's throttle answer was never executed: retried.
	s.fake.Script(dingtalktest.PathAsyncSend, dingtalktest.Throttle(), dingtalktest.OK())
	resp, body = s.do(http.MethodPost, dingtalktest.PathAsyncSend, []byte(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"twice?"}}}`))
	if errcodeOf(t, body) != 0 || attempts(t, resp) != 2 || s.fake.Duplicates() != 0 {
		t.Errorf("throttled send: %s attempts %d duplicates %d", body, attempts(t, resp), s.fake.Duplicates())
	}
}

func TestClientHangUpStopsTheLoop(t *testing.T) {
	s := newStack(t, nil, idempotentRoute(dingtalktest.PathEcho))
	s.fake.Script(dingtalktest.PathEcho, dingtalktest.Hang(), dingtalktest.OK(), dingtalktest.OK())
	done := make(chan struct{})
	s.proxy.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		s.app.Handler().ServeHTTP(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.proxy.URL+dingtalktest.PathEcho, bytes.NewReader([]byte("x")))
		resp, err := s.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, "the first attempt to reach the fake", func() bool { return s.fake.Hits(dingtalktest.PathEcho) == 1 })
	cancel()
	if err := <-errc; err == nil {
		t.Error("client got an answer after hanging up")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("proxy handler still running 5 s after the client hung up")
	}
	if got := s.fake.Hits(dingtalktest.PathEcho); got != 1 {
		t.Errorf("fake hits = %d after the client hung up, want 1", got)
	}
}

func TestAbsoluteFormAndConnectRejected(t *testing.T) {
	s := newStack(t, nil)
	other := newOtherHost(t)
	addr := other.addr()
	for _, line := range []string{
		"GET http://" + addr + "/gettoken HTTP/1.1\r\nHost: " + addr + "\r\n\r\n",
		"POST http://" + addr + "/topapi/v2/user/get HTTP/1.1\r\nHost: " + addr + "\r\nContent-Length: 2\r\n\r\n{}",
		"CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n",
	} {
		c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%.30q: status %d, want 400", line, resp.StatusCode)
		}
	}
	other.close()
	if n, fwd := other.contacted(), forwarded(s); n != 0 || fwd != 0 {
		t.Errorf("rejected requests reached a host: other %d, fake %d", n, fwd)
	}
}

func TestNoForwardedAddressesAndHostRewritten(t *testing.T) {
	s := newStack(t, nil)
	s.do(http.MethodGet, dingtalktest.PathDeptList, nil, "X-Forwarded-For", "10.1.2.3", "X-Real-Ip", "10.1.2.3", "Forwarded", "for=10.1.2.3")
	reqs := s.fake.Requests(dingtalktest.PathDeptList)
	if len(reqs) != 1 {
		t.Fatalf("fake got %d requests", len(reqs))
	}
	for _, h := range []string{"X-Forwarded-For", "X-Real-Ip", "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v := reqs[0].Header.Get(h); v != "" {
			t.Errorf("%s reached DingTalk: %q", h, v)
		}
	}
	u, _ := url.Parse(s.fake.URL())
	if host := reqs[0].Header.Get("Host"); host != "" && host != u.Host {
		t.Errorf("Host = %q, want %q", host, u.Host)
	}
}

func TestAttemptsHeaderOnEveryAnswer(t *testing.T) {
	s := newStack(t, nil)
	s.fake.Script(dingtalktest.PathUserGet, dingtalktest.SystemBusy(), dingtalktest.Throttle())
	resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	if errcodeOf(t, body) != 0 || attempts(t, resp) != 3 {
		t.Errorf("user/get: %s attempts %d, want success after 3", body, attempts(t, resp))
	}
	resp, _ = s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
	if attempts(t, resp) != 1 {
		t.Errorf("plain call attempts = %d, want 1", attempts(t, resp))
	}
	// An answer of dingproxy's own carries it too.
	resp, _ = s.do(http.MethodPost, dingtalktest.PathEcho, []byte("x"))
	resp2, _ := s.do(http.MethodGet, "/gettoken?appkey="+dingtalktest.DefaultAppKey+"&appsecret="+dingtalktest.DefaultAppSecret, nil)
	if resp.Header.Get(proxy.HeaderAttempts) == "" || resp2.Header.Get(proxy.HeaderAttempts) != "0" {
		t.Errorf("attempts header missing: %q %q", resp.Header.Get(proxy.HeaderAttempts), resp2.Header.Get(proxy.HeaderAttempts))
	}
}

// A call that cannot go for want of a token (DingTalk refuses the app's
// credentials) is answered 503 TokenUnavailable and says that no attempt
// was sent: X-Dingproxy-Attempts counts attempts sent, not tried for.
func TestTokenUnavailableSaysNoAttempt(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.App.Secret = "not-the-secret" })
	for _, path := range []string{dingtalktest.PathUserGet, dingtalktest.PathAPIEcho} {
		before := s.fake.Hits(path)
		resp, body := s.do(http.MethodPost, path, []byte(`{"userid":"u1"}`))
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "no access token") {
			t.Errorf("%s: %d %s, want 503: no access token", path, resp.StatusCode, body)
		}
		if got := attempts(t, resp); got != 0 {
			t.Errorf("%s: X-Dingproxy-Attempts = %d, want 0", path, got)
		}
		if n := s.fake.Hits(path) - before; n != 0 {
			t.Errorf("%s: DingTalk saw %d calls, want none", path, n)
		}
	}
	if strings.Contains(fmt.Sprint(s.app.Tokens().State()), "not-the-secret") {
		t.Error("the token state quotes the secret")
	}
}

func TestUnreachableUpstreamGetsDingTalkShaped502(t *testing.T) {
	dead := dingtalktest.DeadAddr(t)
	s := newStack(t, nil, func(c *config.Config) { c.App = config.App{}; c.Upstreams.OAPI = "http://" + dead })
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, []byte(`{"agent_id":1}`))
	if resp.StatusCode != http.StatusBadGateway || errcodeOf(t, body) != dingtalk.ErrcodeSystemBusy {
		t.Errorf("dead upstream: %d %s", resp.StatusCode, body)
	}
	// Nothing was sent, so even a send is tried max_attempts times.
	if got := attempts(t, resp); got != 4 {
		t.Errorf("attempts = %d, want 4", got)
	}
}

func TestPassThroughModeInjectsNothing(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.App = config.App{} })
	_, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
	if errcodeOf(t, body) != dingtalk.ErrcodeTokenMissing {
		t.Errorf("pass-through: %s, want DingTalk's missing-token answer", body)
	}
	if s.fake.TokenFetches() != 0 {
		t.Error("pass-through mode fetched a token")
	}
}
