package app_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// An organisation with a quota of 50 and 200 metered reads on two paths
// (one per host): DingTalk answers 90020 about once per path; every call
// past it is answered "quota" at once, without reaching DingTalk; the
// unmetered contacts calls keep working; the metrics say what DingTalk said.
func TestQuotaStopsAtTheFirst90020(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{MonthlyQuota: 50})
	s := newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil)
	paths := []string{dingtalktest.PathAttendanceList, dingtalktest.PathAPIEcho}
	var quotaAnswers, ok atomic.Int32
	var mu sync.Mutex
	var slowest time.Duration
	const calls, workers = 200, 4
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				p := paths[i%2]
				start := time.Now()
				resp, body := s.do(http.MethodPost, p, fmt.Appendf(nil, `{"workDateFrom":"2026-12-01 00:00:00","offset":%d}`, i))
				d := time.Since(start)
				switch {
				case resp.Header.Get(proxy.HeaderFallback) == "" && (p == dingtalktest.PathAttendanceList && errcodeOf(t, body) == 0 || p != dingtalktest.PathAttendanceList && resp.StatusCode == 200):
					ok.Add(1)
				case resp.Header.Get(proxy.HeaderFallback) == proxy.KindQuota:
					quotaAnswers.Add(1)
					mu.Lock()
					slowest = max(slowest, d)
					mu.Unlock()
					if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Retry-After") == "" {
						t.Errorf("quota answer on %s: %d, Retry-After %q; want 403 with Retry-After", p, resp.StatusCode, resp.Header.Get("Retry-After"))
					}
					if p == dingtalktest.PathAttendanceList && errcodeOf(t, body) != 90020 {
						t.Errorf("quota answer on oapi: %s, want errcode 90020", body)
					}
				}
			}
		})
	}
	for i := range calls {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, p := range paths {
		if n := fake.QuotaRejected(p); n > 1+workers {
			t.Errorf("%s: DingTalk answered 90020 %d times, want once (plus calls in flight, %d)", p, n, workers)
		}
	}
	if ok.Load() != 50 {
		t.Errorf("%d calls succeeded, want the quota's 50", ok.Load())
	}
	if got, want := quotaAnswers.Load(), int32(calls-50-fake.QuotaRejected(paths[0])-fake.QuotaRejected(paths[1])); got != want {
		t.Errorf("%d calls answered quota by dingproxy, want %d (every call past the quota DingTalk did not answer itself)", got, want)
	}
	t.Logf("slowest quota answer: %v", slowest)
	// The contacts APIs are not metered: they go on.
	resp, _ := s.do(http.MethodGet, dingtalktest.PathContactUsers+"u1", nil)
	if resp.StatusCode != 200 {
		t.Errorf("an unmetered contacts call after the quota: %d, want 200", resp.StatusCode)
	}
	m := s.app.Metrics()
	if used, limit := testutil.ToFloat64(m.QuotaUsed()), testutil.ToFloat64(m.QuotaLimit()); used < 51 || limit != 50 {
		t.Errorf("dingproxy_quota_used %v, dingproxy_quota_limit %v; want DingTalk's usage (> 50) and quota (50)", used, limit)
	}
	if n := testutil.ToFloat64(m.QuotaCalls.WithLabelValues(dingtalktest.PathAttendanceList)); n < 25 || n > 30 {
		t.Errorf("dingproxy_quota_calls_total{attendance} = %v, want the calls sent there (about 26)", n)
	}
}

// quota.monthly_budget caps this app: past it, metered calls are answered
// quota without reaching DingTalk, and unmetered ones go on.
func TestQuotaMonthlyBudget(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil, func(c *config.Config) { c.Quota.MonthlyBudget = 10 })
	for i := range 15 {
		resp, _ := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
		if fb := resp.Header.Get(proxy.HeaderFallback); (i < 10) != (fb == "") {
			t.Fatalf("call %d: %d %q, want the first 10 sent and the rest answered quota", i, resp.StatusCode, fb)
		}
	}
	if n := fake.Hits(dingtalktest.PathAttendanceList); n != 10 {
		t.Errorf("DingTalk saw %d calls, want the budget's 10", n)
	}
	if resp, _ := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`)); resp.StatusCode != 200 || resp.Header.Get(proxy.HeaderFallback) != "" {
		t.Errorf("an unmetered call past the budget: %d %q", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
	}
}

// A route with cache: 100 identical reads make one upstream call; another
// body is its own entry; hits are marked; a failed answer is not kept.
func TestReadCache(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil, func(c *config.Config) {
		c.Routes = append(c.Routes, config.Route{Path: dingtalktest.PathDeptListSub, Cache: 30 * time.Second})
	})
	body := []byte(`{"dept_id":1}`)
	var hits atomic.Int32
	var wg sync.WaitGroup
	var first []byte
	var once sync.Once
	for range 100 {
		wg.Go(func() {
			resp, b := s.do(http.MethodPost, dingtalktest.PathDeptListSub, body)
			if resp.StatusCode != 200 || errcodeOf(t, b) != 0 {
				t.Errorf("cached read: %d %s", resp.StatusCode, b)
			}
			switch resp.Header.Get(proxy.HeaderCache) {
			case proxy.CacheHit:
				hits.Add(1)
				if resp.Header.Get(proxy.HeaderAttempts) != "0" {
					t.Errorf("a hit says %q attempts, want 0", resp.Header.Get(proxy.HeaderAttempts))
				}
			case proxy.CacheMiss:
			default:
				t.Errorf("X-Dingproxy-Cache = %q, want hit or miss", resp.Header.Get(proxy.HeaderCache))
			}
			once.Do(func() { first = b })
		})
	}
	wg.Wait()
	if n := fake.Hits(dingtalktest.PathDeptListSub); n > 2 {
		t.Errorf("DingTalk saw %d of 100 identical reads, want at most 2", n)
	}
	if hits.Load() < 98 {
		t.Errorf("%d hits of 100, want at least 98", hits.Load())
	}
	_ = first
	before := fake.Hits(dingtalktest.PathDeptListSub)
	resp, _ := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":2}`))
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss || fake.Hits(dingtalktest.PathDeptListSub) != before+1 {
		t.Errorf("another body: %q, DingTalk saw %d more; want its own entry (a miss)", resp.Header.Get(proxy.HeaderCache), fake.Hits(dingtalktest.PathDeptListSub)-before)
	}
	// A business error is not kept: the next identical call goes upstream.
	fake.Script(dingtalktest.PathDeptListSub, dingtalktest.Errcode(60003, "部门不存在"))
	s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":3}`))
	before = fake.Hits(dingtalktest.PathDeptListSub)
	resp, _ = s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":3}`))
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss || fake.Hits(dingtalktest.PathDeptListSub) != before+1 {
		t.Errorf("after a failed answer: %q, want a miss that reaches DingTalk", resp.Header.Get(proxy.HeaderCache))
	}
	m := s.app.Metrics()
	if n := testutil.ToFloat64(m.CacheRequests.WithLabelValues(dingtalktest.PathDeptListSub, "hit")); n < 98 {
		t.Errorf("dingproxy_cache_requests_total{hit} = %v, want >= 98", n)
	}
}

// DingTalk's word beats the proxy's list: an organisation whose DingTalk
// meters the contacts reads the list calls free answers them 90020 once
// its quota is spent, and from then on each such path is answered "quota"
// at once, without reaching DingTalk, though the proxy never counted them.
func TestQuota90020OnAPathTheListCallsFree(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{MonthlyQuota: 10, Metered: dingtalktest.MeterEverything})
	s := newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil)
	paths := []string{dingtalktest.PathUserGet, dingtalktest.PathDeptListSub}
	told := map[string]bool{}   // DingTalk answered the path 90020
	stopped := map[string]int{} // calls the proxy answered "quota" after that
	for i := range 60 {
		p := paths[i%2]
		resp, body := s.do(http.MethodPost, p, fmt.Appendf(nil, `{"userid":"u%d","dept_id":%d}`, i, i))
		quota := resp.Header.Get(proxy.HeaderFallback) == proxy.KindQuota
		switch {
		case quota && !told[p]:
			t.Fatalf("call %d on %s answered quota before DingTalk said so", i, p)
		case quota:
			stopped[p]++
		case told[p]:
			t.Errorf("call %d on %s went on after DingTalk answered 90020: %d %s", i, p, resp.StatusCode, body)
		case errcodeOf(t, body) == 90020:
			told[p] = true
		}
	}
	for _, p := range paths {
		if !told[p] || fake.QuotaRejected(p) != 1 {
			t.Errorf("DingTalk answered %s 90020 %d times; want once, then the path stopped", p, fake.QuotaRejected(p))
		}
		if stopped[p] == 0 {
			t.Errorf("%s: no call answered quota by the proxy", p)
		}
	}
	// The fake's message says the organisation's usage is at its quota:
	// every metered path stops, a third one included, before it reaches
	// DingTalk; /readyz and /metrics say which stops are in force.
	resp, body := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
	if resp.Header.Get(proxy.HeaderFallback) != proxy.KindQuota || fake.Hits(dingtalktest.PathAttendanceList) != 0 {
		t.Errorf("a third metered path: %d %s, DingTalk saw %d; want quota, not sent", resp.StatusCode, body, fake.Hits(dingtalktest.PathAttendanceList))
	}
	rec := httptest.NewRecorder()
	s.app.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if !strings.Contains(rec.Body.String(), `"stops":["organisation","path"],"paths_stopped":2`) {
		t.Errorf("/readyz does not say the organisation's stop and two paths': %s", rec.Body)
	}
	m := scrape(t, s.app)
	for _, want := range []string{`dingproxy_quota_stops{scope="organisation"} 1`, `dingproxy_quota_stops{scope="path"} 2`, `dingproxy_quota_stops{scope="budget"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "dingproxy_quota_stops"))
		}
	}
}
