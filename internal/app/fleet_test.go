package app_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// The fleet's end-to-end tests: N whole proxies of one app on one fake
// DingTalk, sharing through a real redis-server.

// shared puts a stack in the fleet on url. The Redis timeout is generous:
// -race on 2 busy cores is slow, and these tests are not about timeouts.
func shared(url string) stackOpt {
	return func(c *config.Config) {
		c.Fleet.RedisURL = config.RedisURL(url)
		c.Fleet.Timeout = 500 * time.Millisecond
	}
}

func fleetOf(t *testing.T, n int, fake *dingtalktest.Server, url string, opts ...stackOpt) []*stack {
	t.Helper()
	var out []*stack
	for range n {
		out = append(out, newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil, append([]stackOpt{shared(url)}, opts...)...))
	}
	return out
}

func readyzFleet(t *testing.T, s *stack) (from string, up bool) {
	t.Helper()
	rec := httpGet(t, s.app.AdminHandler(), "/readyz")
	var v struct {
		Token struct{ From string }
		Fleet struct {
			Mode    string
			RedisUp *bool `json:"redis_up"`
		}
	}
	if err := json.Unmarshal(rec, &v); err != nil {
		t.Fatalf("readyz: %v: %s", err, rec)
	}
	if v.Fleet.Mode != "shared" || v.Fleet.RedisUp == nil {
		t.Fatalf("readyz fleet = %+v, want shared with redis_up", v.Fleet)
	}
	return v.Token.From, *v.Fleet.RedisUp
}

func httpGet(t *testing.T, h http.Handler, path string) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Body.Bytes()
}

// Four proxies fetch one token; a revocation mid-run costs the fleet one
// refetch, and the calls succeed.
func TestFleetTokenOnceAndOneRefetch(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 4, fake, srv.URL())
	var ok, calls atomic.Int32
	round := func() {
		var wg sync.WaitGroup
		for i, s := range fl {
			for j := range 10 {
				wg.Go(func() {
					resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i*10+j))
					calls.Add(1)
					if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
						ok.Add(1)
					}
				})
			}
		}
		wg.Wait()
	}
	round()
	if n := fake.TokenFetches(); n != 1 {
		t.Errorf("4 proxies x 10 calls: %d token fetches, want 1", n)
	}
	fromRedis := 0
	for _, s := range fl {
		if from, _ := readyzFleet(t, s); from == "redis" {
			fromRedis++
		}
	}
	if fromRedis != 3 {
		t.Errorf("%d proxies' /readyz say the token came from Redis, want 3", fromRedis)
	}
	fake.ExpireTokens() // revoked: every proxy meets 40014 on its next call
	round()
	if n := fake.TokenFetches(); n != 2 {
		t.Errorf("after a revocation: %d token fetches in all, want 2 (one refetch for the fleet)", n)
	}
	if got, all := ok.Load(), calls.Load(); float64(got) < 0.99*float64(all) {
		t.Errorf("%d of %d calls succeeded, want >= 99%%", got, all)
	}
}

// Four proxies at 10 calls/s each on one API, DingTalk allowing 20/s: the
// fleet paces to the app's limit together, and is (almost) never throttled.
func TestFleetSharedThrottle(t *testing.T) {
	if testing.Short() {
		t.Skip("3 s of load")
	}
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fake.SetQPSLimit(20)
	fl := fleetOf(t, 4, fake, srv.URL(), func(c *config.Config) {
		c.Pacing.PerAPIQPS, c.Pacing.GlobalQPS = 20, 1500
	})
	var wg sync.WaitGroup
	var ok atomic.Int32
	start := time.Now()
	for i := range 120 { // 40/s for 3 s, spread over the four
		at := start.Add(time.Duration(i) * time.Second / 40)
		time.Sleep(time.Until(at))
		s := fl[i%4]
		wg.Go(func() {
			resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i))
			if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	upstream := fake.Hits(dingtalktest.PathUserGet)
	if th := fake.Throttled(); float64(th) > 0.01*float64(upstream) {
		t.Errorf("%d of %d upstream attempts throttled, want at most 1 per 100", th, upstream)
	}
	if ok.Load() != 120 {
		t.Errorf("%d of 120 calls succeeded", ok.Load())
	}
}

// A breaker that opens on one proxy opens that route on the others: they
// answer the fallback without calling DingTalk.
func TestFleetBreakerOpensEverywhere(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 3, fake, srv.URL(), breakerSettings(5, time.Minute))
	fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
	tripBreaker(t, fl[0], http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
	for i, s := range fl[1:] {
		waitFor(t, fmt.Sprintf("proxy %d to hear of the opening", i+1), func() bool {
			return openHere(s)
		})
		hits := fake.Hits(dingtalktest.PathDeptListSub)
		resp, _ := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
		if resp.Header.Get(proxy.HeaderFallback) != breaker.KindCircuitOpen || fake.Hits(dingtalktest.PathDeptListSub) != hits {
			t.Errorf("proxy %d: %d %q, DingTalk called: want circuit-open without a call", i+1, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
		}
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if ra < 30 {
			t.Errorf("proxy %d: Retry-After %d, want the opening's remaining minute", i+1, ra)
		}
	}
}

// openHere is whether s answers its next dept-list call from the breaker.
func openHere(s *stack) bool {
	return s.app.Check(dingtalktest.PathDeptListSub) != nil
}

// An IP ban that one proxy meets stops the others: none of their calls
// reaches DingTalk during the ban.
func TestFleetIPBanStopsEveryProxy(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 4, fake, srv.URL())
	fake.Script(dingtalktest.PathUserGet, dingtalktest.IPBanJSON(60))
	resp, _ := fl[0].do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	if resp.Header.Get(proxy.HeaderFallback) != breaker.KindIPBan {
		t.Fatalf("ban answer: %d %q", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
	}
	for i, s := range fl[1:] {
		waitFor(t, fmt.Sprintf("proxy %d to hear of the ban", i+1), func() bool { return s.app.Breakers().Banned() > 0 })
	}
	before := fake.TotalHits()
	for i, s := range fl[1:] {
		for _, p := range []string{dingtalktest.PathDeptList, dingtalktest.PathUserGet, dingtalktest.PathContactUsers + "u1"} {
			resp, _ := s.do(http.MethodGet, p, nil)
			if resp.Header.Get(proxy.HeaderFallback) != breaker.KindIPBan {
				t.Errorf("proxy %d, %s during the ban: %d %q, want ip-ban", i+1, p, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
			}
		}
	}
	if n := fake.TotalHits() - before; n != 0 {
		t.Errorf("%d calls from the other three reached DingTalk during the ban, want 0", n)
	}
}

// Redis shut down mid-run (SHUTDOWN NOSAVE) and back: every call succeeds
// (each proxy carries on alone), /readyz stays ready, and the proxies share
// again once it is back.
func TestFleetRedisKilledMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("3 s of load")
	}
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 4, fake, srv.URL(), func(c *config.Config) { c.Fleet.Timeout = 100 * time.Millisecond })
	var wg sync.WaitGroup
	var ok, calls atomic.Int32
	start := time.Now()
	var killed, back time.Time
	for i := range 120 { // 40/s for 3 s
		at := start.Add(time.Duration(i) * time.Second / 40)
		time.Sleep(time.Until(at))
		switch i {
		case 30:
			srv.Shutdown()
			killed = time.Now()
		case 70:
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			back = time.Now()
		}
		s := fl[i%4]
		wg.Go(func() {
			resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i))
			calls.Add(1)
			if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if got, all := ok.Load(), calls.Load(); float64(got) < 0.99*float64(all) {
		t.Errorf("%d of %d calls succeeded with Redis killed mid-run, want >= 99%%", got, all)
	}
	_ = killed
	for i, s := range fl {
		waitFor(t, fmt.Sprintf("proxy %d to share again", i), func() bool { return s.app.Fleet().Up() })
		if _, up := readyzFleet(t, s); !up {
			t.Errorf("proxy %d: /readyz says redis_up false after Redis came back", i)
		}
	}
	if d := time.Since(back); d > 5*time.Second {
		t.Errorf("the proxies shared again %v after Redis came back, want within 5 s", d)
	}
	// Sharing again: the token is in Redis once more after a revocation.
	fake.ExpireTokens()
	resp, _ := fl[0].do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	if resp.StatusCode != 200 {
		t.Fatalf("call after the revocation: %d", resp.StatusCode)
	}
	if v, _ := srv.Do("EXISTS", "dingproxy:{"+dingtalktest.DefaultAppKey+"}:token"); v != "1" {
		t.Errorf("the new token was not shared after Redis came back (EXISTS = %q)", v)
	}
}

// A call through a shared-mode proxy makes one round trip to Redis in the
// common case: its turn.
func TestFleetOneRoundTripPerCall(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := fleetOf(t, 1, fake, srv.URL())[0]
	do := func() {
		resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
		io.Discard.Write(body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	do() // warm: the scripts loaded, the token held
	before := s.app.Fleet().RoundTrips()
	const n = 50
	for range n {
		do()
	}
	if got := s.app.Fleet().RoundTrips() - before; got > n+2 {
		t.Errorf("%d calls made %d round trips to Redis, want at most one each (and 2 for the background)", n, got)
	}
}

// An outage seen a little by each proxy opens the route for the fleet once
// the fleet's failures reach min_requests, though no proxy alone saw that
// many.
func TestFleetCountsFailuresTogether(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 4, fake, srv.URL(), breakerSettings(20, time.Minute), func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
	for _, s := range fl {
		for range 5 { // 20 failures in all, 5 a proxy: under min_requests each
			resp, _ := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
			if resp.Header.Get(proxy.HeaderFallback) != "" {
				t.Fatalf("the route opened before the fleet's failures reached min_requests")
			}
		}
	}
	for i, s := range fl {
		waitFor(t, fmt.Sprintf("proxy %d to open the route for the fleet", i), func() bool { return openHere(s) })
	}
	hits := fake.Hits(dingtalktest.PathDeptListSub)
	resp, _ := fl[3].do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
	if resp.Header.Get(proxy.HeaderFallback) != breaker.KindCircuitOpen || fake.Hits(dingtalktest.PathDeptListSub) != hits {
		t.Errorf("after the fleet's trip: %d %q, want circuit-open without a call", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
	}
}

// One trip rule, alone and shared: a route opens at the same count of
// failed calls (calls after their retries, not attempts) whether one proxy
// makes them all or two proxies of a fleet share them.
func TestBreakerOpensAtTheSameCountAloneAndShared(t *testing.T) {
	const minRequests, attempts = 6, 3
	srv := redistest.Start(t)
	opts := []stackOpt{breakerSettings(minRequests, time.Minute), func(c *config.Config) {
		c.Retry.MaxAttempts = attempts
		c.Retry.Backoff.Base, c.Retry.Backoff.Max = time.Millisecond, 2*time.Millisecond
		c.Retry.Budget.MinPerSecond = 100 // every retry is made
	}}
	const path = dingtalktest.PathDeptListSub // a read: a 503 is retried
	body := []byte(`{"dept_id":1}`)
	alone, shared, _ := opensAloneAndShared(t, srv, path, minRequests, opts,
		func(fake *dingtalktest.Server) {
			fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
		},
		func(n int, s *stack) {
			before := s.fake.Hits(path)
			resp, _ := s.do(http.MethodPost, path, body)
			if resp.Header.Get(proxy.HeaderFallback) != "" {
				t.Fatalf("call %d answered %q before the route was seen open", n, resp.Header.Get(proxy.HeaderFallback))
			}
			if got := s.fake.Hits(path) - before; got != attempts {
				t.Fatalf("call %d made %d attempts, want %d", n, got, attempts)
			}
		})
	if alone != minRequests || shared != alone {
		t.Errorf("the route opened after %d failed calls alone and %d shared; want min_requests (%d) both", alone, shared, minRequests)
	}
}

// opensAloneAndShared makes calls on path that its breaker counts as
// failures (fault sets the fake up; call makes call n through a proxy and
// checks its answer), first through one proxy, then through two proxies of
// a fleet on srv in turn, and returns the count after which the route was
// open on every proxy: alone, and shared; and the fleet. Between two shared
// calls it waits until the fleet's count holds every call made (each proxy
// reports its window within 100 ms), then, from minRequests on, until it
// has tripped.
func opensAloneAndShared(t *testing.T, srv *redistest.Server, path string, minRequests int, opts []stackOpt,
	fault func(*dingtalktest.Server), call func(n int, s *stack)) (alone, shared int, fl []*stack) {
	t.Helper()
	opensAt := func(stacks []*stack, settled func(calls int)) int {
		t.Helper()
		fault(stacks[0].fake)
		for n := 1; n <= 2*minRequests; n++ {
			call(n, stacks[n%len(stacks)])
			settled(n)
			open := 0
			for _, s := range stacks {
				if openHere(s) {
					open++
				}
			}
			if open == len(stacks) {
				return n
			}
			if open != 0 {
				t.Fatalf("after %d calls the route is open on %d of %d proxies", n, open, len(stacks))
			}
		}
		t.Fatalf("the route never opened in %d calls", 2*minRequests)
		return 0
	}
	alone = opensAt([]*stack{newStack(t, nil, opts...)}, func(int) {})
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl = fleetOf(t, 2, fake, srv.URL(), opts...)
	cfg := fl[0].app.Config()
	key := fleet.Prefix(cfg.Fleet.KeyPrefix, cfg.App.Key) + "brk:" + fleet.Digest(path)
	shared = opensAt(fl, func(calls int) {
		waitFor(t, fmt.Sprintf("the fleet's count to hold %d calls", calls), func() bool {
			return fleetFailures(t, srv, key) >= calls
		})
		if calls >= minRequests {
			waitFor(t, "the fleet to open the route", func() bool { return openHere(fl[0]) && openHere(fl[1]) })
		}
	})
	return alone, shared, fl
}

// fleetFailures is the failures the proxies reported under key: each
// proxy's report is "failures successes unix-ms", and the values come
// joined by spaces.
func fleetFailures(t *testing.T, srv *redistest.Server, key string) int {
	t.Helper()
	out, err := srv.Do("HVALS", key)
	if err != nil {
		return 0
	}
	n := 0
	for i, v := range strings.Fields(out) {
		if f, err := strconv.Atoi(v); err == nil && i%3 == 0 {
			n += f
		}
	}
	return n
}

// A Redis that hangs (SIGSTOP) costs the calls in flight at most
// fleet.timeout; the proxy then carries on alone at once, and shares again
// once Redis answers.
func TestFleetRedisHangs(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	const timeout = 100 * time.Millisecond
	s := fleetOf(t, 1, fake, srv.URL(), func(c *config.Config) { c.Fleet.Timeout = timeout })[0]
	call := func() time.Duration {
		start := time.Now()
		resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
		if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Fatalf("call with Redis hung: %d %s", resp.StatusCode, body)
		}
		return time.Since(start)
	}
	call()
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	defer srv.Resume()
	first := call() // waits for the timeout, then alone
	if first > timeout+time.Second {
		t.Errorf("the first call with Redis hung took %v, want about fleet.timeout (%v)", first, timeout)
	}
	if s.app.Fleet().Up() {
		t.Fatal("Up = true with Redis hung")
	}
	m := s.app.Metrics()
	if up := testutil.ToFloat64(m.FleetRedisUp); up != 0 {
		t.Errorf("dingproxy_fleet_redis_up = %v with Redis hung, want 0", up)
	}
	if n := testutil.ToFloat64(m.FleetErrors.WithLabelValues(fleet.OpPace)); n < 1 {
		t.Errorf("dingproxy_fleet_errors_total{op=\"pace\"} = %v, want the timed-out turn counted", n)
	}
	var slowest time.Duration
	for range 20 {
		slowest = max(slowest, call())
	}
	if slowest >= timeout {
		t.Errorf("once alone, the slowest call took %v: calls still wait on the hung Redis (fleet.timeout %v)", slowest, timeout)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the proxy to share again", s.app.Fleet().Up)
	if up := testutil.ToFloat64(m.FleetRedisUp); up != 1 {
		t.Errorf("dingproxy_fleet_redis_up = %v once Redis answers again, want 1", up)
	}
}

// A route that answered 90020 on one proxy is stopped on every proxy; the
// month's count and monthly_budget hold for the fleet.
func TestFleetQuota(t *testing.T) {
	srv := redistest.Start(t)
	t.Run("stop shared", func(t *testing.T) {
		fake := dingtalktest.NewServer(t, dingtalktest.Options{MonthlyQuota: 5})
		fl := fleetOf(t, 2, fake, srv.URL(), func(c *config.Config) { c.Fleet.KeyPrefix = "q1" })
		for range 6 { // the sixth meets 90020
			fl[0].do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
		}
		if fake.QuotaRejected(dingtalktest.PathAttendanceList) != 1 {
			t.Fatalf("DingTalk answered 90020 %d times, want once", fake.QuotaRejected(dingtalktest.PathAttendanceList))
		}
		waitFor(t, "the other proxy to stop the route", func() bool { return fl[1].app.QuotaState().Stopped == 1 })
		resp, _ := fl[1].do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
		if resp.Header.Get(proxy.HeaderFallback) != proxy.KindQuota || fake.QuotaRejected(dingtalktest.PathAttendanceList) != 1 {
			t.Errorf("the other proxy: %d %q, want the quota answer without a call", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
		}
	})
	t.Run("budget for the fleet", func(t *testing.T) {
		fake := dingtalktest.NewServer(t, dingtalktest.Options{})
		fl := fleetOf(t, 2, fake, srv.URL(), func(c *config.Config) {
			c.Fleet.KeyPrefix = "q2"
			c.Quota.MonthlyBudget = 10
		})
		for _, s := range fl {
			for range 5 {
				resp, _ := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
				if resp.Header.Get(proxy.HeaderFallback) != "" {
					t.Fatalf("refused within the budget: %q", resp.Header.Get(proxy.HeaderFallback))
				}
			}
		}
		waitFor(t, "each proxy to read the fleet's count", func() bool {
			return fl[0].app.QuotaState().Sent >= 10 && fl[1].app.QuotaState().Sent >= 10
		})
		for i, s := range fl {
			resp, _ := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
			if resp.Header.Get(proxy.HeaderFallback) != proxy.KindQuota {
				t.Errorf("proxy %d past the fleet's budget: %d %q, want quota", i, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
			}
		}
		if n := fake.Hits(dingtalktest.PathAttendanceList); n != 10 {
			t.Errorf("DingTalk saw %d calls, want the fleet's budget of 10", n)
		}
	})
}

// The read cache is shared: a read one proxy fetched is a hit on another,
// and Redis holds it sealed.
func TestFleetSharedCache(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := fleetOf(t, 2, fake, srv.URL(), func(c *config.Config) {
		c.Routes = append(c.Routes, config.Route{Path: dingtalktest.PathDeptListSub, Cache: time.Minute})
	})
	resp, body := fl[0].do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss {
		t.Fatalf("first read: %q, want a miss", resp.Header.Get(proxy.HeaderCache))
	}
	waitFor(t, "the answer in Redis", func() bool {
		keys, _ := srv.Do("KEYS", "dingproxy:*:cache:*")
		return keys != ""
	})
	keys, _ := srv.Do("KEYS", "dingproxy:*:cache:*")
	stored, _ := srv.Do("GET", keys)
	if strings.Contains(stored, "dept_id") || strings.Contains(stored, string(body[:min(len(body), 20)])) {
		t.Errorf("Redis holds the answer in the clear: %q", stored)
	}
	resp, body2 := fl[1].do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheHit || string(body2) != string(body) {
		t.Errorf("the other proxy: %q %s, want a hit with the same answer", resp.Header.Get(proxy.HeaderCache), body2)
	}
	if n := fake.Hits(dingtalktest.PathDeptListSub); n != 1 {
		t.Errorf("DingTalk saw %d reads, want 1 for the fleet", n)
	}
}

// An opening starts the route's count over on every proxy, as a breaker
// alone starts its window over when it opens: once the opening ends and
// DingTalk answers again, the failures from before it do not open the
// route a second time.
func TestFleetOpeningStartsTheCountOver(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	const openFor = 500 * time.Millisecond
	fl := fleetOf(t, 2, fake, srv.URL(), breakerSettings(10, openFor), func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
	for _, s := range fl {
		for range 5 {
			s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
		}
	}
	for i, s := range fl {
		waitFor(t, fmt.Sprintf("proxy %d to open the route for the fleet", i), func() bool { return openHere(s) })
	}
	fake.SetChaos(dingtalktest.Chaos{})
	for i, s := range fl {
		waitFor(t, fmt.Sprintf("proxy %d to end the opening", i), func() bool { return !openHere(s) })
	}
	for i, s := range fl {
		if resp, body := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`)); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Fatalf("proxy %d after the opening: %d %s", i, resp.StatusCode, body)
		}
	}
	// Ten of the fleet's reports (one each 100 ms): none opens it again.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		for i, s := range fl {
			if openHere(s) {
				t.Fatalf("proxy %d: the route opened again on the failures from before its opening", i)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}
