package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// Slow calls (breaker.slow_call, routes[].slow_call) end to end. No
// verdict here depends on the machine's speed: every call the tests want
// slow waits slowLatency in the fake before DingTalk's answer, far past
// the limit, so it is slow however fast the machine; the calls they want
// counted as successes are on routes whose limit is off. The wall-clock
// target (an API answering in 1.5 s) is in slowcall_soak_test.go.

const (
	slowLimit   = 50 * time.Millisecond  // the slow_call these tests set
	slowLatency = 150 * time.Millisecond // how long the fake takes on a slow path
)

// withSlowCall sets breaker.slow_call.
func withSlowCall(d time.Duration) stackOpt {
	return func(c *config.Config) { c.Breaker.SlowCall = d }
}

// slowOn makes the fake answer every call on path after d, with the answer
// it would give at once.
func slowOn(fake *dingtalktest.Server, path string, d time.Duration) {
	fake.SetChaos(dingtalktest.Chaos{Paths: []string{path}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Latency(d), P: 1}}})
}

// userOf is the user id in DingTalk's answer to a user lookup, "" if none.
func userOf(body []byte) string {
	var v struct {
		Errcode int `json:"errcode"`
		Result  struct {
			UserID string `json:"userid"`
			Name   string `json:"name"`
		} `json:"result"`
	}
	if json.Unmarshal(body, &v) != nil || v.Errcode != 0 || v.Result.Name != "User "+v.Result.UserID {
		return ""
	}
	return v.Result.UserID
}

// lookUp makes a user lookup through s and fails t unless DingTalk's own
// answer came back: the user asked for, one attempt, no fallback.
func lookUp(t *testing.T, s *stack, user string) {
	t.Helper()
	resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":%q}`, user))
	if resp.StatusCode != 200 || resp.Header.Get(proxy.HeaderFallback) != "" ||
		resp.Header.Get(proxy.HeaderAttempts) != "1" || userOf(body) != user {
		t.Fatalf("lookup of %s: %d, fallback %q, attempts %q, %s; want DingTalk's own answer",
			user, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), resp.Header.Get(proxy.HeaderAttempts), body)
	}
}

// fallsBack makes a user lookup through s and fails t unless it is answered
// by the breaker with fallback kind, without a call to DingTalk.
func fallsBack(t *testing.T, s *stack, path, kind string) {
	t.Helper()
	before := s.fake.Hits(path)
	resp, body := s.do(http.MethodPost, path, []byte(`{"userid":"late"}`))
	if resp.Header.Get(proxy.HeaderFallback) != kind || s.fake.Hits(path) != before {
		t.Fatalf("%s once open: %d, fallback %q, DingTalk called %d times, %s; want %s without a call",
			path, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), s.fake.Hits(path)-before, body, kind)
	}
}

// attemptHistogram is route's dingproxy_upstream_attempt_duration_seconds.
func attemptHistogram(t *testing.T, s *stack, route string, up dingtalk.Upstream) *dto.Histogram {
	t.Helper()
	var m dto.Metric
	if err := s.app.Metrics().AttemptDuration.WithLabelValues(route, up.String()).(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram()
}

// Slow successful answers open the breaker: each slow call's client gets
// DingTalk's own answer, and once min_requests of them have ended the
// route is open, its callers get the fallback at once and DingTalk is not
// called. The attempt histogram holds the slow attempts above slow_call:
// it is what the limit is chosen from.
func TestSlowCallsOpenTheBreaker(t *testing.T) {
	const minRequests = 5
	s := newStack(t, nil, breakerSettings(minRequests, time.Minute), withSlowCall(slowLimit))
	slowOn(s.fake, dingtalktest.PathUserGet, slowLatency)
	for i := range minRequests {
		if st := s.app.Breakers().State(dingtalktest.PathUserGet); st != breaker.StateClosed {
			t.Fatalf("after %d slow calls the breaker is %v, want closed until min_requests (%d)", i, st, minRequests)
		}
		lookUp(t, s, fmt.Sprintf("u%d", i))
	}
	if n := s.fake.Hits(dingtalktest.PathUserGet); n != minRequests {
		t.Fatalf("DingTalk got %d calls, want %d", n, minRequests)
	}
	// The verdict is given before the answer goes back: open now.
	if st := s.app.Breakers().State(dingtalktest.PathUserGet); st != breaker.StateOpen {
		t.Fatalf("after %d slow calls the breaker is %v, want open", minRequests, st)
	}
	for range 10 {
		fallsBack(t, s, dingtalktest.PathUserGet, breaker.KindCircuitOpen)
	}
	h := attemptHistogram(t, s, dingtalktest.PathUserGet, dingtalk.OAPI)
	if h.GetSampleCount() != minRequests {
		t.Errorf("attempt histogram of the route: %d samples, want the %d slow attempts", h.GetSampleCount(), minRequests)
	}
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() < slowLatency.Seconds() && b.GetCumulativeCount() != 0 {
			t.Errorf("attempt histogram: %d attempts within %gs; the fake took %v over each", b.GetCumulativeCount(), b.GetUpperBound(), slowLatency)
		}
	}
}

// A slow business error counts as a failure too: the caller waited as long
// as for a slow success (fast ones never open a breaker:
// TestBusinessErrorsNeverOpenBreaker). Its client gets DingTalk's error.
func TestSlowBusinessErrorsCount(t *testing.T) {
	const minRequests = 5
	s := newStack(t, nil, breakerSettings(minRequests, time.Minute), withSlowCall(slowLimit))
	slowOn(s.fake, dingtalktest.PathUserGet, slowLatency)
	for i := range minRequests {
		resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{}`)) // no userid
		if resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != dingtalk.ErrcodeBadParameter {
			t.Fatalf("slow business error %d: fallback %q, %s; want DingTalk's errcode %d", i+1, resp.Header.Get(proxy.HeaderFallback), body, dingtalk.ErrcodeBadParameter)
		}
	}
	fallsBack(t, s, dingtalktest.PathUserGet, breaker.KindCircuitOpen)
}

// A route's own slow_call wins over breaker.slow_call, 0 included; a route
// without one takes the breaker's, and answers with its own fallback once
// open.
func TestSlowCallPerRoute(t *testing.T) {
	const minRequests = 5
	zero, own := time.Duration(0), slowLimit
	t.Run("slow_call 0 on a route under a default", func(t *testing.T) {
		t.Parallel()
		s := newStack(t, nil, breakerSettings(minRequests, time.Minute), withSlowCall(slowLimit), func(c *config.Config) {
			c.Routes = append(c.Routes,
				config.Route{Path: dingtalktest.PathUserGet, SlowCall: &zero},
				config.Route{Path: dingtalktest.PathDeptListSub, Fallback: &config.Fallback{Status: 200, Body: `{"errcode":0,"result":[]}`}})
		})
		slowOn(s.fake, "/topapi/v2/", slowLatency) // both paths
		for i := range 2 * minRequests {
			lookUp(t, s, fmt.Sprintf("u%d", i))
		}
		if fails, oks := s.app.Breakers().Counts(dingtalktest.PathUserGet); fails != 0 || oks != 2*minRequests {
			t.Errorf("route with slow_call 0: %d failures, %d successes; want every slow call a success", fails, oks)
		}
		// The other route takes the default, and its own fallback.
		for i := range minRequests {
			resp, body := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
			if resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != 0 {
				t.Fatalf("slow call %d on the default's route: fallback %q, %s; want DingTalk's answer", i+1, resp.Header.Get(proxy.HeaderFallback), body)
			}
		}
		fallsBack(t, s, dingtalktest.PathDeptListSub, proxy.KindRoute)
	})
	t.Run("a route's own slow_call with the default off", func(t *testing.T) {
		t.Parallel()
		s := newStack(t, nil, breakerSettings(minRequests, time.Minute), func(c *config.Config) {
			c.Routes = append(c.Routes, config.Route{Path: dingtalktest.PathUserGet, SlowCall: &own})
		})
		slowOn(s.fake, "/topapi/v2/", slowLatency)
		// An API without a route of its own takes the default: off.
		for range 2 * minRequests {
			resp, body := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
			if resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != 0 {
				t.Fatalf("slow call with slow_call off: fallback %q, %s; want DingTalk's answer", resp.Header.Get(proxy.HeaderFallback), body)
			}
		}
		if st := s.app.Breakers().State(dingtalktest.PathDeptListSub); st != breaker.StateClosed {
			t.Errorf("route with slow_call off after %d slow calls: %v, want closed", 2*minRequests, st)
		}
		for i := range minRequests {
			lookUp(t, s, fmt.Sprintf("u%d", i))
		}
		fallsBack(t, s, dingtalktest.PathUserGet, breaker.KindCircuitOpen)
	})
}

// A reload changes the limit for the calls that end from then on: slow
// calls count as successes while it is off and as failures once a reload
// sets it; a reload that gives a route slow_call 0 turns it off there.
func TestSlowCallLimitReloads(t *testing.T) {
	const minRequests = 5
	s := newStack(t, nil, breakerSettings(minRequests, time.Minute))
	slowOn(s.fake, "/topapi/v2/", slowLatency)
	for i := range minRequests {
		lookUp(t, s, fmt.Sprintf("u%d", i))
	}
	if fails, oks := s.app.Breakers().Counts(dingtalktest.PathUserGet); fails != 0 || oks != minRequests {
		t.Fatalf("slow calls with slow_call off: %d failures, %d successes; want %d successes", fails, oks, minRequests)
	}
	breakerYAML := fmt.Sprintf("breaker: {min_requests: %d, failure_ratio: 0.5, window: 30s, open_timeout: 1m, slow_call: %s}\n", minRequests, slowLimit)
	if err := s.app.Reload(writeFile(t, reloadYAML(s, 4, breakerYAML+"routes:\n  - {path: "+dingtalktest.PathDeptListSub+", slow_call: 0s}\n"))); err != nil {
		t.Fatal(err)
	}
	// The window holds minRequests successes: as many failures trip it.
	for i := range minRequests {
		if st := s.app.Breakers().State(dingtalktest.PathUserGet); st != breaker.StateClosed {
			t.Fatalf("after %d slow calls under the new limit the breaker is %v, want closed", i, st)
		}
		lookUp(t, s, fmt.Sprintf("v%d", i))
	}
	fallsBack(t, s, dingtalktest.PathUserGet, breaker.KindCircuitOpen)
	// The route the reload gave slow_call 0 counts its slow calls as successes.
	for range 2 * minRequests {
		resp, body := s.do(http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
		if resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != 0 {
			t.Fatalf("slow call on the route with slow_call 0: fallback %q, %s", resp.Header.Get(proxy.HeaderFallback), body)
		}
	}
	if fails, _ := s.app.Breakers().Counts(dingtalktest.PathDeptListSub); fails != 0 {
		t.Errorf("route reloaded with slow_call 0: %d failures, want none", fails)
	}
}

// One count, alone and shared: a route opens after the same number of slow
// calls (min_requests) whether one proxy makes them all or two proxies of a
// fleet share them, as TestBreakerOpensAtTheSameCountAloneAndShared shows
// for failed calls. Every slow call's client gets DingTalk's answer.
func TestFleetSlowCallsOpenAtTheSameCountAsAlone(t *testing.T) {
	const minRequests = 6
	const path = dingtalktest.PathDeptListSub // openHere's
	body := []byte(`{"dept_id":1}`)
	srv := redistest.Start(t)
	opts := []stackOpt{breakerSettings(minRequests, time.Minute), withSlowCall(slowLimit)}
	alone, shared, fl := opensAloneAndShared(t, srv, path, minRequests, opts,
		func(fake *dingtalktest.Server) { slowOn(fake, path, slowLatency) },
		func(n int, s *stack) {
			resp, got := s.do(http.MethodPost, path, body)
			if resp.Header.Get(proxy.HeaderFallback) != "" || resp.StatusCode != 200 || errcodeOf(t, got) != 0 {
				t.Fatalf("slow call %d: %d %q %s, want DingTalk's answer before the route was seen open", n, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), got)
			}
		})
	if alone != minRequests || shared != alone {
		t.Errorf("the route opened after %d slow calls alone and %d shared; want min_requests (%d) both", alone, shared, minRequests)
	}
	for _, s := range fl {
		fallsBack(t, s, path, breaker.KindCircuitOpen)
	}
}
