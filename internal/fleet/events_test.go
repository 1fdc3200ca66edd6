package fleet

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// upCounts counts Redis's transitions as a Fleet reports them, besides the
// failed operations.
type upCounts struct {
	errCounts
	mu         sync.Mutex
	ups, downs int
}

func (u *upCounts) RedisUp(up bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if up {
		u.ups++
	} else {
		u.downs++
	}
}

func (u *upCounts) transitions() (ups, downs int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.ups, u.downs
}

// heard collects the transitions an Applier is told of.
type heard struct {
	mu     sync.Mutex
	opened map[string]time.Time
	bans   []time.Time
	quota  map[string]time.Time
}

func newHeard() *heard {
	return &heard{opened: map[string]time.Time{}, quota: map[string]time.Time{}}
}

func (h *heard) Opened(route string, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.opened[route] = until
}

func (h *heard) Banned(until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bans = append(h.bans, until)
}

func (h *heard) Penalized(string, time.Time) {}

func (h *heard) QuotaStopped(route string, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.quota[route] = until
}

func (h *heard) QuotaResumed(route string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.quota, route)
}

func (h *heard) open(route string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u, ok := h.opened[route]
	return u, ok
}

func (h *heard) banned() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.bans)
}

// listening starts a Fleet on url whose transitions heard go to h.
func listening(t *testing.T, url string, h Applier, obs Observer) *Fleet {
	t.Helper()
	o := Options{URL: url, KeyPrefix: "dp", AppKey: testKey, AppSecret: testSecret, Timeout: 500 * time.Millisecond,
		ProbeEvery: 50 * time.Millisecond, Observer: obs}
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.events.applyTo(h)
	f.Start()
	t.Cleanup(f.Close)
	return f
}

// With 300,000 other keys in the database, a proxy that joins reads the
// openings, the ban and the stops in force from their known keys in one
// round trip, never scanning the keyspace; and one that reconnects reads
// again what was recorded while it was not listening. Redis stays up
// throughout: nothing flaps.
func TestResyncReadsKnownKeysOnly(t *testing.T) {
	srv := redistest.Start(t)
	if _, err := srv.Do("DEBUG", "POPULATE", "300000", "dp:{"+testKey+"}:cache:junk"); err != nil {
		t.Fatal(err)
	}
	if n, _ := srv.Do("DBSIZE"); n != "300000" {
		t.Fatalf("DBSIZE = %s, want 300000", n)
	}
	a := newFleet(t, srv.URL(), testSecret, nil)
	a.PublishOpen("/topapi/v2/user/get", time.Minute)
	a.PublishBan(time.Minute)
	waitFor(t, "the opening and the ban recorded", func() bool {
		n, _ := srv.Do("ZCARD", "dp:{"+testKey+"}:state:open")
		b, _ := srv.Do("ZCARD", "dp:{"+testKey+"}:state:ban")
		return n == "1" && b == "1"
	})
	for _, k := range []string{"open", "ban"} {
		if ttl, _ := srv.Do("PTTL", "dp:{"+testKey+"}:state:"+k); ttl == "-1" {
			t.Errorf("state:%s has no expiry", k)
		}
	}

	var obs upCounts
	h := newHeard()
	b := listening(t, srv.URL(), h, &obs)
	waitFor(t, "the joiner to read the opening in force", func() bool {
		_, ok := h.open("/topapi/v2/user/get")
		return ok && h.banned() > 0
	})
	if u, _ := h.open("/topapi/v2/user/get"); time.Until(u) < 50*time.Second {
		t.Errorf("the opening read ends in %v, want its minute", time.Until(u))
	}

	// One resync is one round trip, whatever the keyspace holds.
	before, syncs := b.RoundTrips(), b.events.syncs.Load()
	b.events.sync()
	if n := b.RoundTrips() - before; n > 3 {
		t.Errorf("a resync with 300k other keys made %d round trips, want 1 (2 with a script load)", n)
	}
	if b.events.syncs.Load() != syncs+1 || obs.get(OpSync) != 0 {
		t.Errorf("sync errors: %d", obs.get(OpSync))
	}

	// Recorded while b was not listening (no message): read at reconnect.
	until := time.Now().Add(time.Minute).UnixMilli()
	if _, err := srv.Do("ZADD", "dp:{"+testKey+"}:state:open", strconv.FormatInt(until, 10), "/topapi/v2/department/get"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	_ = b.do(context.Background(), OpPing, func(ctx context.Context) error { return b.rdb.Ping(ctx).Err() })
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if b.Up() {
		t.Fatal("Up with Redis paused past the timeout")
	}
	waitFor(t, "the reconnected proxy to read the opening recorded meanwhile", func() bool {
		_, ok := h.open("/topapi/v2/department/get")
		return ok
	})
	if ups, downs := obs.transitions(); downs != 1 || ups != 2 {
		t.Errorf("Redis reported up %d times and down %d times, want up at start, down once (the pause), up once again", ups, downs)
	}
	if n := obs.get(OpSync); n != 0 {
		t.Errorf("%d resyncs failed with 300k other keys", n)
	}
}

// subscribed waits until n proxies listen on the fleet's channel.
func subscribed(t *testing.T, srv *redistest.Server, n int) {
	t.Helper()
	want := "dp:{" + testKey + "}:events " + strconv.Itoa(n)
	waitFor(t, "the proxies to subscribe", func() bool {
		got, _ := srv.Do("PUBSUB", "NUMSUB", "dp:{"+testKey+"}:events")
		return got == want
	})
}

var (
	quotaSpent = dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonQuota, Errcode: 90020, QuotaUsed: -1, QuotaLimit: -1}
	succeeded  = dingtalk.Result{Class: dingtalk.Success, Reason: dingtalk.ReasonSuccess}
)

// A route's quota stop is shared both ways: stopped on every proxy when
// one meets 90020, lifted on every proxy when one's call there gets
// through, and its record removed, so a proxy that joins later is not
// stopped by a stop already lifted. A joiner reads a stop in force with
// its end, not "an hour from now".
func TestQuotaStopsSharedBothWays(t *testing.T) {
	srv := redistest.Start(t)
	s := pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}
	a := joined(t, srv.URL(), s)
	b := joined(t, srv.URL(), s)
	subscribed(t, srv, 2)
	const route = "/topapi/attendance/list"
	if !a.Quota.Answered(route, quotaSpent) {
		t.Fatal("90020 did not stop the route")
	}
	waitFor(t, "b to stop the route", func() bool { return b.Quota.local.IsStopped(route) })
	var qe *quota.Error
	if err := b.Quota.Admit(route, true); !errors.As(err, &qe) || qe.RetryAfter < 50*time.Minute {
		t.Errorf("b's Admit on the stopped route = %v, want a quota refusal until the hour's probe", err)
	}
	if n, _ := srv.Do("ZSCORE", "dp:{"+testKey+"}:state:quota", route); n == "" {
		t.Errorf("the stop is not recorded for joiners")
	}

	// a's probe gets through: lifted everywhere, the record removed.
	a.Quota.Answered(route, succeeded)
	if a.Quota.local.IsStopped(route) {
		t.Fatal("a success did not lift the stop here")
	}
	waitFor(t, "b to lift the stop", func() bool { return !b.Quota.local.IsStopped(route) })
	if err := b.Quota.Admit(route, true); err != nil {
		t.Errorf("b's Admit after the lift = %v, want nil", err)
	}
	waitFor(t, "the stop's record removed", func() bool {
		n, _ := srv.Do("ZSCORE", "dp:{"+testKey+"}:state:quota", route)
		return n == ""
	})
	c := joined(t, srv.URL(), s)
	subscribed(t, srv, 3)
	if c.Quota.local.IsStopped(route) {
		t.Error("a proxy joining after the lift starts stopped")
	}

	// A stop in force, read by a joiner, with its end: the joiner probes
	// then, not an hour later.
	const other = "/topapi/processinstance/get"
	fa := a.Breakers.f
	fa.publish(kindQuota, other, 30*time.Second) // long enough to outlive a slow join
	waitFor(t, "the stop recorded", func() bool {
		n, _ := srv.Do("ZSCORE", "dp:{"+testKey+"}:state:quota", other)
		return n != ""
	})
	d := joined(t, srv.URL(), s)
	waitFor(t, "the joiner to read the stop", func() bool { return d.Quota.local.IsStopped(other) })
	if err := d.Quota.Admit(other, true); !errors.As(err, &qe) || qe.RetryAfter > 30*time.Second {
		t.Errorf("the joiner's Admit = %v, want a refusal until the stop's end (30 s), not the hour's probe", err)
	}
}

// hostileFleet is a decorated proxy of app testKey on url whose log lines
// are kept, with the failed operations counted.
func hostileFleet(t *testing.T, url string) (*Fleet, Shared, *errCounts, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	errs := &errCounts{}
	f, err := New(Options{URL: url, KeyPrefix: "dp", AppKey: testKey, AppSecret: testSecret, Timeout: 500 * time.Millisecond,
		ProbeEvery: 50 * time.Millisecond, Logger: zap.New(core), Observer: errs})
	if err != nil {
		t.Fatal(err)
	}
	s := decorate(f, pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000})
	f.Start()
	t.Cleanup(f.Close)
	return f, s, errs, logs
}

// publishRaw publishes msg on the fleet's channel, as a party with Redis
// access may.
func publishRaw(t *testing.T, srv *redistest.Server, msg string) {
	t.Helper()
	if _, err := srv.Do("PUBLISH", "dp:{"+testKey+"}:events", msg); err != nil {
		t.Fatal(err)
	}
}

// heldOpen is how long route is held open here by the fleet, 0 if not.
func heldOpen(b *Breakers, route string) time.Duration {
	var oe *breaker.OpenError
	if err := b.heldOpen(route); errors.As(err, &oe) {
		return oe.RetryAfter
	}
	return 0
}

// Messages heard are bounded: an end later than any proxy would give is
// cut to the longest legitimate one (and counted); a message that is not a
// transition a proxy publishes (unknown kind, junk, no end, invalid or
// overflow route, oversized) is refused, counted, and changes nothing.
func TestEventsBounded(t *testing.T) {
	srv := redistest.Start(t)
	_, s, errs, _ := hostileFleet(t, srv.URL())
	subscribed(t, srv, 1)
	const api = "/topapi/v2/user/get"
	// This proxy paces api: a penalty heard on it applies here.
	if err := s.Pacer.Wait(context.Background(), api, time.Time{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	tenYears := strconv.FormatInt(time.Now().AddDate(10, 0, 0).UnixMilli(), 10)
	inAMinute := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)

	publishRaw(t, srv, "open x "+tenYears+" "+api)
	waitFor(t, "the opening applied", func() bool { return heldOpen(s.Breakers, api) > 0 })
	if d := heldOpen(s.Breakers, api); d > 5*time.Second {
		t.Errorf("an opening heard for 10 years holds %v, want at most breaker.open_timeout (5s)", d)
	}
	publishRaw(t, srv, "ban x "+tenYears+" ")
	waitFor(t, "the ban applied", func() bool { return s.Breakers.local.Banned() > 0 })
	if d := s.Breakers.local.Banned(); d > maxBan {
		t.Errorf("a ban heard for 10 years holds %v, want at most %v", d, maxBan)
	}
	publishRaw(t, srv, "pen x "+tenYears+" "+api)
	waitFor(t, "the penalty applied", func() bool { return s.Pacer.Local.BlockedUntil(api).After(time.Now()) })
	if d := time.Until(s.Pacer.Local.BlockedUntil(api)); d > maxPenalty {
		t.Errorf("a penalty heard for 10 years blocks %v, want at most %v", d, maxPenalty)
	}
	if n := errs.get(OpEvent); n != 3 {
		t.Errorf("%d events counted, want the 3 cut short", n)
	}

	junk := []string{
		"open x " + inAMinute + " " + proxy.Overflow,
		"quota x " + inAMinute + " " + proxy.Overflow,
		"open x " + inAMinute + " /a\x01b",
		"open x " + inAMinute + " ",
		"open x " + inAMinute,
		"open x soon /topapi/v2/department/get",
		"open x nan /topapi/v2/department/get",
		"close x " + inAMinute + " /topapi/v2/department/get",
		"garbage",
		"",
		"quota x " + inAMinute + " /" + strings.Repeat("a", 2*maxEventLen),
	}
	before := errs.get(OpEvent)
	for _, m := range junk {
		publishRaw(t, srv, m)
	}
	waitFor(t, "the junk counted", func() bool { return errs.get(OpEvent) >= before+len(junk) })
	if n := errs.get(OpEvent) - before; n != len(junk) {
		t.Errorf("%d junk messages counted, want %d", n, len(junk))
	}
	if heldOpen(s.Breakers, "/topapi/v2/department/get") > 0 || heldOpen(s.Breakers, proxy.Overflow) > 0 {
		t.Error("a junk opening was applied")
	}
	if st := s.Quota.local.State(); st.Stopped != 0 {
		t.Errorf("%d routes stopped by junk", st.Stopped)
	}
}

// Openings heard on routes this proxy has never called (600 junk routes,
// read at once at a resync, past the rate) hold at most maxHeldUnseen
// places, and an opening on a route in use here is still held.
func TestJunkOpeningsBounded(t *testing.T) {
	srv := redistest.Start(t)
	f, s, _, _ := hostileFleet(t, srv.URL())
	until := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
	args := []string{"ZADD", "dp:{" + testKey + "}:state:open"}
	for i := range 600 {
		args = append(args, until, "/junk/"+strconv.Itoa(i))
	}
	if _, err := srv.Do(args...); err != nil {
		t.Fatal(err)
	}
	f.events.sync()
	s.Breakers.mu.RLock()
	n := len(s.Breakers.held)
	s.Breakers.mu.RUnlock()
	if n != maxHeldUnseen {
		t.Errorf("600 junk openings hold %d places, want maxHeldUnseen (%d)", n, maxHeldUnseen)
	}
	const route = "/topapi/v2/user/get"
	done, err := s.Breakers.local.Allow(route) // called here: in use
	if err != nil {
		t.Fatal(err)
	}
	done(breaker.Success)
	s.Breakers.hold(route, time.Now().Add(time.Minute))
	if heldOpen(s.Breakers, route) == 0 {
		t.Error("an opening on a route in use here was not held past the junk")
	}
}

// A burst of 20,000 junk quota messages, each naming another route: at
// most rarePerSecond are applied a second, the stops they make are
// bounded (quota.MaxHeard), and the log holds at most logsPerSecond lines
// and one summary a second, not a line per message.
func TestQuotaFloodBounded(t *testing.T) {
	srv := redistest.Start(t)
	_, s, errs, logs := hostileFleet(t, srv.URL())
	subscribed(t, srv, 1)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	start := time.Now()
	const n = 20000
	until := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	pipe := rdb.Pipeline()
	for i := range n {
		pipe.Publish(ctx, "dp:{"+testKey+"}:events", "quota x "+until+" /junk/"+strconv.Itoa(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// Every message heard: applied, or dropped over the rate (counted).
	waitFor(t, "the flood heard", func() bool { return errs.get(OpEvent)+s.Quota.local.State().Stopped >= n })
	elapsed := time.Since(start)
	secs := int(elapsed/time.Second) + 2
	if st := s.Quota.local.State().Stopped; st > rarePerSecond*secs || st > quota.MaxHeard {
		t.Errorf("%d routes stopped in %v, want at most %d a second and %d in all", st, elapsed, rarePerSecond, quota.MaxHeard)
	}
	if lines := logs.Len(); lines > (logsPerSecond+1)*secs {
		t.Errorf("%d log lines for %d messages in %v, want at most %d a second and a summary", lines, n, elapsed, logsPerSecond)
	}
	waitFor(t, "the summary line", func() bool {
		return logs.FilterMessageSnippet("a burst of messages").Len() > 0
	})
	t.Logf("%d messages in %v: %d routes stopped, %d log lines", n, elapsed, s.Quota.local.State().Stopped, logs.Len())
}

// The organisation's stop is shared: a 90020 that says the organisation's
// usage is at its quota on one proxy stops every metered route on the
// others, a joiner reads it, one proxy of the fleet probes each hour, and
// the probe's success lifts it (and the routes' stops) everywhere.
func TestQuotaStopsOrganisationShared(t *testing.T) {
	srv := redistest.Start(t)
	s := pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}
	a := joined(t, srv.URL(), s)
	b := joined(t, srv.URL(), s)
	subscribed(t, srv, 2)
	orgSpent := dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonQuota, Errcode: 90020, QuotaUsed: 51, QuotaLimit: 50}
	const route, other = "/topapi/v2/user/get", "/topapi/processinstance/get"
	a.Quota.Answered(route, orgSpent)
	// Two records, published apart: the organisation's and the route's.
	waitFor(t, "b to stop the organisation and the route", func() bool {
		return b.Quota.local.IsStopped(quota.Organisation) && b.Quota.local.IsStopped(route)
	})
	var qe *quota.Error
	if err := b.Quota.Admit(other, true); !errors.As(err, &qe) || !qe.Organisation {
		t.Errorf("b's metered call on another route = %v, want the organisation's refusal", err)
	}
	if err := b.Quota.Admit(route, false); !errors.As(err, &qe) {
		t.Errorf("b's call on the route DingTalk refused, which the list calls free = %v, want refused", err)
	}
	if err := b.Quota.Admit("/topapi/v2/department/get", false); err != nil {
		t.Errorf("b's call the list calls free on a route never refused = %v", err)
	}
	c := joined(t, srv.URL(), s)
	waitFor(t, "a joiner to read the stops", func() bool {
		return c.Quota.local.IsStopped(quota.Organisation) && c.Quota.local.IsStopped(route)
	})

	// One probe an hour for the fleet: a takes it, b and c are refused.
	if !a.Breakers.f.claimProbe() {
		t.Fatal("the first claim of the hour was refused")
	}
	if b.Breakers.f.claimProbe() || c.Breakers.f.claimProbe() {
		t.Error("a second proxy took the hour's probe")
	}
	// A junk value at the probe's key (no expiry) does not stop the
	// probes for good.
	probeKey := a.Breakers.f.key("quota", "probe")
	if _, err := srv.Do("SET", probeKey, "junk"); err != nil {
		t.Fatal(err)
	}
	if !b.Breakers.f.claimProbe() {
		t.Error("a junk value without expiry at the probe's key held the probe")
	}

	// The next hour (brought forward: a stop heard that ends sooner moves
	// the probe to its end), a's probe gets through: every stop lifts,
	// everywhere.
	if _, err := srv.Do("DEL", probeKey); err != nil {
		t.Fatal(err)
	}
	a.Quota.local.StopUntil(quota.Organisation, time.Now().Add(time.Millisecond))
	waitFor(t, "a's probe to go", func() bool { return a.Quota.Admit(other, true) == nil })
	a.Quota.Answered(other, succeeded)
	if a.Quota.local.IsStopped(quota.Organisation) || a.Quota.local.IsStopped(route) {
		t.Fatal("the probe's success did not lift every stop on a")
	}
	for name, p := range map[string]Shared{"b": b, "c": c} {
		waitFor(t, name+" to lift every stop", func() bool {
			return !p.Quota.local.IsStopped(quota.Organisation) && !p.Quota.local.IsStopped(route)
		})
	}
	waitFor(t, "the records removed", func() bool {
		n, _ := srv.Do("ZCARD", a.Breakers.f.stateKey(kindQuota))
		return n == "0"
	})
}
