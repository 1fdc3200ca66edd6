package app_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// upstreamTap sits between dingproxy and the fake DingTalk and keeps what
// the fake answered to each call that is not the proxy's own token fetch.
type upstreamTap struct {
	next    atomic.Pointer[http.Handler]
	mu      sync.Mutex
	answers []tapped
}

type tapped struct {
	status int
	body   []byte
}

func (u *upstreamTap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	(*u.next.Load()).ServeHTTP(rec, r)
	// The proxy's own token fetches are the only calls that get a token
	// issued: a fuzzed client does not know the secret (and one that did
	// would be answered from the cache, not forwarded).
	issued := (r.URL.Path == dingtalk.PathOAuth2Token || r.URL.Path == dingtalk.PathGetToken) && rec.Code == 200 &&
		(bytes.Contains(rec.Body.Bytes(), []byte(`"accessToken"`)) || bytes.Contains(rec.Body.Bytes(), []byte(`"access_token"`)))
	if !issued {
		u.mu.Lock()
		u.answers = append(u.answers, tapped{rec.Code, bytes.Clone(rec.Body.Bytes())})
		u.mu.Unlock()
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

func (u *upstreamTap) take() []tapped {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.answers
	u.answers = nil
	return out
}

// FuzzRawRequest drives raw HTTP/1.1 request bytes through the real
// listener and the whole app (routing, retry, breakers, pacing, metrics,
// logs at debug), against the fake DingTalk. It fails on a recovered panic
// (in serving or in bookkeeping), on a 502 "internal error", and on an
// answer that is not the one DingTalk gave once DingTalk answered: nothing
// that happens after DingTalk may have executed a call may turn its answer
// into an error of the proxy's own.
//
// Seeds: below (the two raw requests first); make fuzz runs it.
func FuzzRawRequest(f *testing.F) {
	seeds := []string{
		// The two: paths that are not UTF-8.
		"GET /user/get\xff\xfe?userid=u1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /topapi/message/corpconversation/asyncsend_v2/\xe9 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		"GET /v1.0/contact/users/zhang\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1.0/contact/users/%E4%B8%AD%E6%96%87 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /department/list?access_token=&id=5 HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /topapi/v2/user/get HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"userid\":\"u1\"}",
		"POST /v1.0/oauth2/jsapiTickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
		"GET /v1.0/contact/users/u1 HTTP/1.1\r\nHost: x\r\nx-acs-dingtalk-access-token: \r\n\r\n",
		"POST //attendance/list HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"userIdList\":[\"a\"]}",
		"HEAD /department/list HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /gettoken?appkey=k&appsecret=s HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /robot/send?access_token=x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		"GET /v1.0/contact/users/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /department/list HTTP/1.1\r\nHost: x\r\n\r\nGET /v1.0/contact/users/u2 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /" + strings.Repeat("a/", 40) + " HTTP/1.1\r\nHost: x\r\n\r\n",
		// Hostile clients: ambiguous credentials, a bogus own token on a
		// metered path, a path DingTalk does not know.
		"GET /v1.0/contact/users/u1 HTTP/1.1\r\nHost: x\r\nx-acs-dingtalk-access-token: \r\nx-acs-dingtalk-access-token: BogusTokenXYZ\r\n\r\n",
		"POST /topapi/attendance/list?access_token=Bogus&access_token= HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
		"GET /topapi/unknown/1 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	core, logs := observer.New(zapcore.DebugLevel)
	// The tap's fake is in place before the proxy's first token fetch.
	fake := dingtalktest.NewServer(f, dingtalktest.Options{})
	tap := &upstreamTap{}
	h := fake.Handler()
	tap.next.Store(&h)
	upstream := httptest.NewServer(tap)
	f.Cleanup(upstream.Close)
	s := newStackOn(f, fake, zap.New(core), nil, func(c *config.Config) {
		c.Upstreams.OAPI, c.Upstreams.API = upstream.URL, upstream.URL
		c.Retry.Timeout, c.Retry.PerTryTimeout = 5*time.Second, 4*time.Second
		// The read cache and the quota meter on the way too.
		c.Quota.MonthlyBudget = 1 << 40
		c.Routes = append(c.Routes,
			config.Route{Path: dingtalktest.PathDeptListSub, Cache: time.Minute},
			config.Route{Path: dingtalktest.PathDeptList, Idempotent: ptrTo(true), Cache: time.Minute})
	})
	// The shared token, fetched before the first input.
	s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
	tap.take()
	logs.TakeAll()

	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 64<<10 {
			return
		}
		answers := rawExchange(t, s.proxy.Listener.Addr().String(), raw)
		// Requests the proxy still serves (a client that hung up) end
		// before the next input, so their answers are not taken for its.
		waitFor(t, "requests in flight to end", func() bool { return s.app.Inflight() == 0 })
		upstreamAnswers := tap.take()
		for _, e := range logs.TakeAll() {
			if strings.Contains(e.Message, "panic") || strings.Contains(e.Message, "bookkeeping failed") {
				t.Fatalf("%q: logged %q %v", raw, e.Message, e.ContextMap())
			}
		}
		secrets := append(s.fake.IssuedTokens(), dingtalktest.DefaultAppSecret)
		for _, a := range answers {
			if a.status == http.StatusBadGateway && bytes.Contains(a.body, []byte("internal error")) {
				t.Fatalf("%q: answered %d %s", raw, a.status, a.body)
			}
			for _, sec := range secrets {
				// A token call with the right credentials is answered from
				// the cache; a fuzzed client has none, so no answer may
				// carry a token or the secret.
				if sec != "" && bytes.Contains(a.body, []byte(sec)) {
					t.Fatalf("%q: the answer carries a token or the secret", raw)
				}
			}
		}
		// One request that DingTalk answered: the client gets that answer.
		if len(answers) == 1 && len(upstreamAnswers) > 0 && !answers[0].head {
			got, want := answers[0], upstreamAnswers[len(upstreamAnswers)-1]
			if got.status != want.status || !bytes.Equal(got.body, want.body) {
				t.Fatalf("%q: DingTalk answered %d %.200s; the client got %d %.200s", raw, want.status, want.body, got.status, got.body)
			}
		}
	})
}

type rawAnswer struct {
	status int
	body   []byte
	head   bool
}

// rawExchange writes raw to a new connection and reads an answer for each
// whole request in it (as net/http parses them), then hangs up. It does not
// half-close: net/http takes that for a client that went away.
func rawExchange(t *testing.T, addr string, raw []byte) []rawAnswer {
	methods := wholeRequests(raw)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(raw); err != nil {
		return nil // the proxy closed early: nothing was answered
	}
	br := bufio.NewReader(c)
	var out []rawAnswer
	for _, m := range methods {
		// A HEAD's answer has no body; ReadResponse needs to know.
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%q: no answer within 20 s", raw)
			}
			return out // closed, or net/http's own answer to bytes that are not HTTP
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, rawAnswer{resp.StatusCode, body, m == http.MethodHead})
		if resp.Close {
			break
		}
	}
	return out
}

// wholeRequests is the methods of the requests in raw whose headers and
// bodies are all there, in order, up to the first that is not.
func wholeRequests(raw []byte) []string {
	br := bufio.NewReader(bytes.NewReader(raw))
	var out []string
	for len(out) < 16 {
		req, err := http.ReadRequest(br)
		if err != nil {
			return out
		}
		_, err = io.Copy(io.Discard, req.Body)
		if err != nil {
			return out
		}
		out = append(out, req.Method)
	}
	return out
}

func ptrTo[T any](v T) *T { return &v }
