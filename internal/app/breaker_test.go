package app_test

import (
	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

func breakerSettings(minRequests uint32, openTimeout time.Duration) stackOpt {
	return func(c *config.Config) {
		c.Breaker.MinRequests = minRequests
		c.Breaker.OpenTimeout = openTimeout
		c.Breaker.HalfOpenRequests = 3
		c.Breaker.FailureRatio = 0.5
		c.Breaker.Window = 30 * time.Second
	}
}

func TestBusinessErrorsNeverOpenBreaker(t *testing.T) {
	s := newStack(t, nil, breakerSettings(5, time.Minute))
	for _, code := range []int{dingtalk.ErrcodeNoPermission, dingtalk.ErrcodeBadParameter} {
		script := make([]dingtalktest.Fault, 50)
		for i := range script {
			script[i] = dingtalktest.Errcode(code, "business")
		}
		s.fake.Script(dingtalktest.PathUserGet, script...)
		for range 50 {
			resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
			if resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != code {
				t.Fatalf("business error %d: got %s (fallback %q)", code, body, resp.Header.Get(proxy.HeaderFallback))
			}
		}
	}
	if st := s.app.Breakers().State(dingtalktest.PathUserGet); st != gobreaker.StateClosed {
		t.Errorf("breaker = %v after 100 business errors, want closed", st)
	}
}

// tripBreaker makes path's breaker open with a run of 503s.
func tripBreaker(t *testing.T, s *stack, method, path string, body []byte) {
	t.Helper()
	prefix, _, _ := strings.Cut(path, "?")
	s.fake.SetChaos(dingtalktest.Chaos{Paths: []string{prefix}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})
	defer s.fake.SetChaos(dingtalktest.Chaos{})
	for i := 0; i < 100; i++ {
		resp, _ := s.do(method, path, body)
		if resp.Header.Get(proxy.HeaderFallback) != "" {
			return
		}
	}
	t.Fatalf("breaker on %s did not open", path)
}

func TestFallbacks(t *testing.T) {
	echoFallback := func(c *config.Config) {
		c.Routes = append(c.Routes,
			config.Route{Path: dingtalktest.PathChatSend, Fallback: &config.Fallback{
				Status: 202, Body: `{"errcode":0,"errmsg":"accepted by fallback"}`,
				Headers: map[string]string{"x-team": "notify"}, // viper lower-cases header names
			}},
			config.Route{Path: dingtalktest.PathDeptList, Fallback: &config.Fallback{Stale: time.Minute}},
			config.Route{Path: dingtalktest.PathUserGet, Fallback: &config.Fallback{Stale: time.Minute, Status: 200, Body: `{"errcode":0,"result":{}}`}},
		)
	}
	s := newStack(t, nil, breakerSettings(5, time.Minute), echoFallback)

	t.Run("default", func(t *testing.T) {
		tripBreaker(t, s, http.MethodGet, dingtalktest.PathContactUsers+"u9", nil)
		resp, body := s.do(http.MethodGet, dingtalktest.PathContactUsers+"u9", nil)
		if resp.StatusCode != 503 || resp.Header.Get(proxy.HeaderFallback) != breaker.KindCircuitOpen {
			t.Fatalf("default fallback: %d %q", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 1 || ra > 60 {
			t.Errorf("Retry-After = %q, want the remaining open time in seconds", resp.Header.Get("Retry-After"))
		}
		// An api path: the new API's shape, and the route is the API's
		// template, not the user id.
		var v struct{ Code, Message, RequestID string }
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatal(err)
		}
		wantMsg := fmt.Sprintf("dingproxy: circuit open for /v1.0/contact/users/{unionId}, retry after %ds", ra)
		if v.Code != proxy.CodeCircuitOpen || v.Message != wantMsg || v.RequestID != resp.Header.Get(proxy.HeaderRequestID) || len(v.RequestID) != 36 {
			t.Errorf("body = %s, want code %s, message %q and the x-acs-request-id header's id", body, proxy.CodeCircuitOpen, wantMsg)
		}
		if resp.Header.Get(proxy.HeaderAttempts) != "0" {
			t.Errorf("attempts = %q, want 0", resp.Header.Get(proxy.HeaderAttempts))
		}
	})
	t.Run("configured", func(t *testing.T) {
		tripBreaker(t, s, http.MethodPost, dingtalktest.PathChatSend, []byte(`{"chatid":"c"}`))
		hits := s.fake.Hits(dingtalktest.PathChatSend)
		resp, body := s.do(http.MethodPost, dingtalktest.PathChatSend, []byte(`{"chatid":"c"}`))
		if resp.StatusCode != 202 || string(body) != `{"errcode":0,"errmsg":"accepted by fallback"}` ||
			resp.Header.Get(proxy.HeaderFallback) != proxy.KindRoute || resp.Header.Get("X-Team") != "notify" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("configured fallback: %d %s %v", resp.StatusCode, body, resp.Header)
		}
		if s.fake.Hits(dingtalktest.PathChatSend) != hits {
			t.Error("a call reached DingTalk while the breaker was open")
		}
	})
	t.Run("stale", func(t *testing.T) {
		path := dingtalktest.PathDeptList + "?id=7"
		_, good := s.do(http.MethodGet, path, nil)
		if errcodeOf(t, good) != 0 {
			t.Fatalf("warm-up: %s", good)
		}
		tripBreaker(t, s, http.MethodGet, dingtalktest.PathDeptList+"?id=8", nil)
		resp, body := s.do(http.MethodGet, path, nil)
		if resp.Header.Get(proxy.HeaderFallback) != proxy.KindStale || string(body) != string(good) || resp.StatusCode != 200 {
			t.Errorf("stale fallback: %d %q %s, want the last good answer", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), body)
		}
		if resp.Header.Get("Age") == "" {
			t.Error("stale answer without Age")
		}
		// Nothing cached for this query: no stale answer; no configured one: the default.
		resp, _ = s.do(http.MethodGet, dingtalktest.PathDeptList+"?id=9", nil)
		if resp.Header.Get(proxy.HeaderFallback) != breaker.KindCircuitOpen || resp.StatusCode != 503 {
			t.Errorf("no stale entry: %d %q, want the default fallback", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
		}
	})
	t.Run("stale is per body, then configured", func(t *testing.T) {
		_, good := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"alice"}`))
		tripBreaker(t, s, http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"x"}`))
		resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"alice"}`))
		if resp.Header.Get(proxy.HeaderFallback) != proxy.KindStale || string(body) != string(good) {
			t.Errorf("stale for alice: %q %s", resp.Header.Get(proxy.HeaderFallback), body)
		}
		resp, body = s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"bob"}`))
		if resp.Header.Get(proxy.HeaderFallback) != proxy.KindRoute || string(body) != `{"errcode":0,"result":{}}` {
			t.Errorf("bob must not get alice's answer: %q %s", resp.Header.Get(proxy.HeaderFallback), body)
		}
	})
}

func TestIPBanOpensEveryRoute(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fault   dingtalktest.Fault
		wantMin int // seconds
	}{
		// A few seconds' slack for a loaded machine; still far from a
		// breaker's open_timeout.
		{"html page", dingtalktest.IPBanHTML(), 290},
		{"json with wait", dingtalktest.IPBanJSON(2), 110},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStack(t, nil)
			s.fake.Script(dingtalktest.PathUserGet, tt.fault)
			resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
			if resp.Header.Get(proxy.HeaderFallback) != breaker.KindIPBan || resp.StatusCode != 503 || errcodeOf(t, body) != -1 {
				t.Fatalf("ban answer: %d %q %s", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), body)
			}
			before := s.fake.TotalHits()
			for _, p := range []string{dingtalktest.PathDeptList, dingtalktest.PathContactUsers + "u1", "/never/seen"} {
				resp, _ := s.do(http.MethodGet, p, nil)
				ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
				if resp.Header.Get(proxy.HeaderFallback) != breaker.KindIPBan || ra < tt.wantMin {
					t.Errorf("%s during the ban: %q Retry-After %d, want ip-ban >= %d", p, resp.Header.Get(proxy.HeaderFallback), ra, tt.wantMin)
				}
			}
			if s.fake.TotalHits() != before {
				t.Error("calls reached DingTalk during the IP ban")
			}
		})
	}
}

// Routes are kept by evidence: 3,000 paths DingTalk does not know keep no
// route of their own (nor breakers, nor metric series), a real API first
// called after them gets its own, and the overflow route the calls past
// max_routes run on decides nothing: its failures open no breaker.
func TestBreakerRoutesBounded(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) {
		c.Routes = nil
		c.Breaker.MaxRoutes = 3
		c.Breaker.MinRequests = 5
		c.Retry.MaxAttempts = 1
	})
	var wg sync.WaitGroup
	paths := make(chan string)
	for range 8 {
		wg.Go(func() {
			for p := range paths {
				if resp, _ := s.do(http.MethodGet, p, nil); resp.Header.Get(proxy.HeaderFallback) != "" {
					t.Errorf("%s: answered %q, want DingTalk's own answer", p, resp.Header.Get(proxy.HeaderFallback))
				}
			}
		})
	}
	const distinct = 3000
	for i := range distinct {
		paths <- fmt.Sprintf("/topapi/unknown/%d", i)
	}
	close(paths)
	wg.Wait()
	if got := s.app.Routes(); got != 0 {
		t.Errorf("routes = %d after %d unknown paths, want none kept", got, distinct)
	}
	if got := s.app.Breakers().Len(); got != 0 {
		t.Errorf("breakers = %d after %d unknown paths, want none kept", got, distinct)
	}
	if got := metricRoutes(t, s.app, "/topapi/unknown/"); len(got) != 0 {
		t.Errorf("%d unknown paths still have metric series, want none", len(got))
	}
	// A real API, first called now, gets its own route.
	for range 2 {
		if resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Fatalf("a real API after the junk: %d %s", resp.StatusCode, body)
		}
	}
	if got := testutil.ToFloat64(s.app.Metrics().Requests.WithLabelValues(dingtalktest.PathDeptList, "200")); got != 2 || s.app.Routes() != 1 {
		t.Errorf("requests on the API's own route = %v, routes %d; want 2 and 1", got, s.app.Routes())
	}
	// Past max_routes, failures on the overflow route open nothing.
	s.fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
	for i := range 20 {
		if resp, _ := s.do(http.MethodGet, fmt.Sprintf("/topapi/other/%d", i), nil); resp.Header.Get(proxy.HeaderFallback) != "" {
			t.Fatalf("call %d answered %q: a breaker opened for the overflow route", i, resp.Header.Get(proxy.HeaderFallback))
		}
	}
	if got := testutil.ToFloat64(s.app.Metrics().Requests.WithLabelValues(proxy.Overflow, "503")); got < 15 {
		t.Errorf("%v calls on the overflow route, want the 18 past max_routes", got)
	}
	if s.app.Check(proxy.Overflow) != nil || s.app.Breakers().State(proxy.Overflow) != breaker.StateClosed {
		t.Error("the overflow route has an open breaker")
	}
}
