package app_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The hostile-Redis suite, through whole proxies: a Redis that holds what
// no proxy of the fleet wrote there (an operator's mistake, a restore from
// backup, another program on the same database, a bug). Each case states
// its outcome; in none does the app stop, a limit lift, or memory grow
// without bound. The fleet's own tests (internal/fleet) take each key and
// message apart; these check that the proxies' bookkeeping holds with them.
// The wall-clock cases (a 300k-key database at the default fleet.timeout,
// a flood of 300k messages with its heap measured) are in
// hostile_redis_soak_test.go.

// keyOf is the fleet key of the test app: <prefix>:{<app key>}:<parts>.
func keyOf(parts ...string) string {
	return "dingproxy:{" + dingtalktest.DefaultAppKey + "}:" + strings.Join(parts, ":")
}

// redisDo runs each command on srv, failing t on an error.
func redisDo(t *testing.T, srv *redistest.Server, cmds ...[]string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := srv.Do(c...); err != nil {
			t.Fatalf("%v: %v", c, err)
		}
	}
}

// fleetErrors is dingproxy_fleet_errors_total{op} on s.
func fleetErrors(s *stack, op string) float64 {
	return testutil.ToFloat64(s.app.Metrics().FleetErrors.WithLabelValues(op))
}

// Garbage at each of the fleet's keys before the proxies start: a token
// that does not open and a lock with no expiry, pacing state out of
// bounds (blk 1e15, nan everywhere, log entries at +inf, the global log a
// string), a failure report from the future, a month's count in letters,
// the state keys of the wrong type and records at +inf. Outcome: two
// proxies serve every call; the token is fetched once for both; the API
// stays paced for the fleet (DingTalk at 20 a second throttles none of 40
// calls sent at once through the two); Redis stays up; the garbage is
// counted and every key it was in is gone or has an expiry.
func TestHostileRedisGarbageAtEveryKey(t *testing.T) {
	srv := redistest.Start(t)
	const api = dingtalktest.PathUserGet
	pace := keyOf("pace", fleet.Digest(api))
	month := keyOf("month", time.Now().In(quota.China).Format("2006-01"))
	future := strconv.FormatInt(time.Now().AddDate(1, 0, 0).UnixMilli(), 10)
	redisDo(t, srv,
		[]string{"SET", keyOf("token"), "not-a-sealed-token"},
		[]string{"SET", keyOf("token", "lock"), "stuck"},
		[]string{"HSET", pace, "blk", "1e15", "last", "nan", "ceil", "nan", "from", "nan", "sec", "inf", "n", "-1", "rate", "nan"},
		[]string{"ZADD", pace + ":log", "+inf", "a", "1e18", "b"},
		[]string{"SET", keyOf("pace", "global", "log"), "garbage"},
		[]string{"HSET", keyOf("brk", fleet.Digest(api)), "ghost", "1000000 0 " + future},
		[]string{"SET", month, "lots"},
		[]string{"SET", keyOf("state", "open"), "garbage"},
		[]string{"HSET", keyOf("state", "quota"), "a", "b"},
		[]string{"ZADD", keyOf("state", "ban"), "+inf", "ban"},
	)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fake.SetQPSLimit(20)
	fl := fleetOf(t, 2, fake, srv.URL(), func(c *config.Config) {
		c.Pacing.PerAPIQPS, c.Pacing.GlobalQPS = 20, 1500
	})
	var wg sync.WaitGroup
	var ok sync.Map
	for i := range 40 {
		s := fl[i%2]
		wg.Go(func() {
			resp, body := s.do(http.MethodPost, api, fmt.Appendf(nil, `{"userid":"u%d"}`, i))
			if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
				ok.Store(i, true)
			} else {
				t.Errorf("call %d: %d %s", i, resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	// A metered call: the month's count is added to.
	if resp, _ := fl[0].do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`)); resp.StatusCode != 200 {
		t.Errorf("a metered call: %d", resp.StatusCode)
	}
	if n := fake.TokenFetches(); n != 1 {
		t.Errorf("%d token fetches for two proxies, want 1 (the stuck lock broken, the garbage token replaced)", n)
	}
	// Lifted pacing lets about 20 of the 40 into DingTalk's second; a
	// loaded machine's arrival jitter may move a few across its edge.
	if th := fake.Throttled(); th > 4 {
		t.Errorf("DingTalk throttled %d of 40 calls: the fleet's pacing was lifted (each proxy alone, or none)", th)
	}
	for i, s := range fl {
		if !s.app.Fleet().Up() {
			t.Errorf("proxy %d: Redis marked down", i)
		}
		if s.app.Check(api) != nil || s.app.Breakers().Banned() > 0 {
			t.Errorf("proxy %d: the route is open or banned by garbage", i)
		}
	}
	waitFor(t, "the month's count replaced", func() bool {
		v, _ := srv.Do("GET", month)
		return v == "1"
	})
	// The count is written in the background and its error counted once
	// Redis has answered: Redis may show the new count first.
	waitFor(t, "the month's garbage counted", func() bool {
		return fleetErrors(fl[0], fleet.OpQuota)+fleetErrors(fl[1], fleet.OpQuota) > 0
	})
	var counted float64
	for _, op := range []string{fleet.OpTokenRead, fleet.OpTokenLockStale, fleet.OpPace, fleet.OpQuota} {
		n := fleetErrors(fl[0], op) + fleetErrors(fl[1], op)
		if n == 0 {
			t.Errorf("dingproxy_fleet_errors_total{op=%q} = 0: the garbage there was not counted", op)
		}
		counted += n
	}
	for _, k := range []string{keyOf("token"), keyOf("token", "lock"), pace, pace + ":log", keyOf("pace", "global", "log"), month} {
		if ttl, _ := srv.Do("PTTL", k); ttl == "-1" {
			t.Errorf("%s is left without an expiry", k)
		}
	}
	t.Logf("40 calls served; fleet errors counted: %v", counted)
}

// Messages no proxy sent, through whole proxies: an opening "for 10
// years" holds a route for breaker.open_timeout at most (the route is
// called again after it, not at the next restart), on the proxies that
// heard it and on one that joins later; 600 junk openings and 20,000 junk
// quota messages leave the proxies serving, the stops they make bounded,
// and the log a few lines a second.
func TestHostileRedisEvents(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	const route = dingtalktest.PathUserGet
	opts := []stackOpt{breakerSettings(5, time.Second)}
	fl := fleetOf(t, 2, fake, srv.URL(), opts...)
	waitFor(t, "the proxies to subscribe", func() bool {
		n, _ := srv.Do("PUBSUB", "NUMSUB", keyOf("events"))
		return n == keyOf("events")+" 2"
	})
	tenYears := strconv.FormatInt(time.Now().AddDate(10, 0, 0).UnixMilli(), 10)
	redisDo(t, srv, []string{"ZADD", keyOf("state", "open"), tenYears, route},
		[]string{"PUBLISH", keyOf("events"), "open intruder " + tenYears + " " + route})
	for i, s := range fl {
		waitFor(t, fmt.Sprintf("proxy %d to hear the opening", i), func() bool { return s.app.Check(route) != nil })
		resp, _ := s.do(http.MethodPost, route, []byte(`{"userid":"u1"}`))
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.Header.Get(proxy.HeaderFallback) != breaker.KindCircuitOpen || ra > 1 {
			t.Errorf("proxy %d: %q, Retry-After %d; want circuit-open for breaker.open_timeout (1 s) at most", i, resp.Header.Get(proxy.HeaderFallback), ra)
		}
	}
	late := fleetOf(t, 1, fake, srv.URL(), opts...)[0]
	waitFor(t, "the joiner to read the opening", func() bool { return late.app.Check(route) != nil })
	for i, s := range append(fl, late) {
		waitFor(t, fmt.Sprintf("proxy %d to call the route again", i), func() bool { return s.app.Check(route) == nil })
	}
	redisDo(t, srv, []string{"DEL", keyOf("state", "open")})

	// A flood, watched on a proxy whose warnings are counted.
	core, logs := observer.New(zapcore.WarnLevel)
	watched := newStackOn(t, fake, zap.New(core), nil, append([]stackOpt{shared(srv.URL())}, opts...)...)
	waitFor(t, "the watched proxy to subscribe", func() bool {
		n, _ := srv.Do("PUBSUB", "NUMSUB", keyOf("events"))
		return n == keyOf("events")+" 4"
	})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	start := time.Now()
	inAMinute := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
	pipe := rdb.Pipeline()
	const floods = 20000
	for i := range floods {
		pipe.Publish(ctx, keyOf("events"), "quota intruder "+inAMinute+" /junk/quota/"+strconv.Itoa(i))
	}
	for i := range 600 {
		pipe.Publish(ctx, keyOf("events"), "open intruder "+inAMinute+" /junk/open/"+strconv.Itoa(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// Each message heard is applied, or dropped over the rate (counted);
	// a line a second sums the burst up.
	waitFor(t, "the flood heard", func() bool {
		return fleetErrors(watched, fleet.OpEvent)+float64(watched.app.QuotaState().Stopped) >= floods+600-100
	})
	waitFor(t, "the burst summed up", func() bool { return logs.FilterMessageSnippet("a burst of messages").Len() > 0 })
	secs := int(time.Since(start)/time.Second) + 2
	for i, s := range append(fl, late, watched) {
		resp, body := s.do(http.MethodPost, route, []byte(`{"userid":"u1"}`))
		if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Errorf("proxy %d after the flood: %d %s", i, resp.StatusCode, body)
		}
		if st := s.app.QuotaState().Stopped; st > quota.MaxHeard {
			t.Errorf("proxy %d: %d routes stopped, want at most %d", i, st, quota.MaxHeard)
		}
	}
	// The watched proxy's warnings: the quota stops it applied (10 a
	// second at most, each logged by the meter and the fleet) and one
	// summary a second; not one per message.
	if n := logs.Len(); n > 25*secs {
		t.Errorf("%d warnings for %d messages in %d s, want a few a second", n, floods+600, secs)
	}
	t.Logf("%d messages: %d warnings logged, %d routes stopped on the watched proxy", floods+600, logs.Len(), watched.app.QuotaState().Stopped)
}

// A lock with no expiry, set by hand: a proxy's first call gets a token at
// once (the lock broken and counted), fetched for the fleet and shared.
func TestHostileRedisLockWithoutExpiry(t *testing.T) {
	srv := redistest.Start(t)
	redisDo(t, srv, []string{"SET", keyOf("token", "lock"), "stuck"})
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := fleetOf(t, 1, fake, srv.URL())[0]
	resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Fatalf("the first call with a stuck lock: %d %s", resp.StatusCode, body)
	}
	if v, _ := srv.Do("EXISTS", keyOf("token")); v != "1" || fake.TokenFetches() != 1 {
		t.Errorf("token shared %q after %d fetches, want it shared after 1", v, fake.TokenFetches())
	}
	if n := fleetErrors(s, fleet.OpTokenLockStale); n != 1 {
		t.Errorf("dingproxy_fleet_errors_total{op=\"token_lock_stale\"} = %v, want 1", n)
	}
}

// DEBUG SLEEP longer than fleet.timeout: a Redis that stalls. The calls
// made meanwhile are served alone, the stall is counted, and the proxy
// shares again once Redis answers.
func TestHostileRedisDebugSleep(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := fleetOf(t, 1, fake, srv.URL(), func(c *config.Config) { c.Fleet.Timeout = 100 * time.Millisecond })[0]
	call := func(i int) {
		resp, body := s.do(http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i))
		if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Errorf("call %d: %d %s", i, resp.StatusCode, body)
		}
	}
	call(0)
	slept := make(chan error, 1)
	go func() {
		_, err := srv.Do("DEBUG", "SLEEP", "1.5")
		slept <- err
	}()
	i := 1
	waitFor(t, "the proxy to find Redis stalled", func() bool {
		call(i)
		i++
		return !s.app.Fleet().Up()
	})
	for range 10 {
		call(i)
		i++
	}
	if err := <-slept; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the proxy to share again", s.app.Fleet().Up)
	call(i)
	if n := fleetErrors(s, fleet.OpPace); n < 1 {
		t.Errorf("the stall was not counted (pace errors %v)", n)
	}
	if up := testutil.ToFloat64(s.app.Metrics().FleetRedisUp); up != 1 {
		t.Errorf("dingproxy_fleet_redis_up = %v after the stall, want 1", up)
	}
}

// 300,000 unrelated keys in the database: a proxy that joins reads the
// opening in force from its known key (no scan), and no resync fails.
// (At the default fleet.timeout and under load: the soak suite.)
func TestHostileRedisBigKeyspace(t *testing.T) {
	srv := redistest.Start(t)
	redisDo(t, srv, []string{"DEBUG", "POPULATE", "300000", keyOf("cache", "junk")})
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	opts := []stackOpt{breakerSettings(5, time.Minute)}
	fl := fleetOf(t, 2, fake, srv.URL(), opts...)
	tripBreaker(t, fl[0], http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`))
	waitFor(t, "the other proxy to hear of the opening", func() bool { return openHere(fl[1]) })
	late := fleetOf(t, 1, fake, srv.URL(), opts...)[0]
	waitFor(t, "the joiner to read the opening", func() bool { return openHere(late) })
	for i, s := range append(fl, late) {
		if n := fleetErrors(s, fleet.OpSync); n != 0 {
			t.Errorf("proxy %d: %v resyncs failed", i, n)
		}
		if !s.app.Fleet().Up() {
			t.Errorf("proxy %d: Redis marked down", i)
		}
	}
}
