package fleet

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
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
	if _, err := srv.Do("DEBUG", "POPULATE", "300000", "dp:"+testKey+":cache:junk"); err != nil {
		t.Fatal(err)
	}
	if n, _ := srv.Do("DBSIZE"); n != "300000" {
		t.Fatalf("DBSIZE = %s, want 300000", n)
	}
	a := newFleet(t, srv.URL(), testSecret, nil)
	a.PublishOpen("/topapi/v2/user/get", time.Minute)
	a.PublishBan(time.Minute)
	waitFor(t, "the opening and the ban recorded", func() bool {
		n, _ := srv.Do("ZCARD", "dp:"+testKey+":state:open")
		b, _ := srv.Do("ZCARD", "dp:"+testKey+":state:ban")
		return n == "1" && b == "1"
	})
	for _, k := range []string{"open", "ban"} {
		if ttl, _ := srv.Do("PTTL", "dp:"+testKey+":state:"+k); ttl == "-1" {
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
	if _, err := srv.Do("ZADD", "dp:"+testKey+":state:open", strconv.FormatInt(until, 10), "/topapi/v2/department/get"); err != nil {
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
	want := "dp:" + testKey + ":events " + strconv.Itoa(n)
	waitFor(t, "the proxies to subscribe", func() bool {
		got, _ := srv.Do("PUBSUB", "NUMSUB", "dp:"+testKey+":events")
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
	a := decorate(newFleet(t, srv.URL(), testSecret, nil), s)
	b := decorate(newFleet(t, srv.URL(), testSecret, nil), s)
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
	if n, _ := srv.Do("ZSCORE", "dp:"+testKey+":state:quota", route); n == "" {
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
		n, _ := srv.Do("ZSCORE", "dp:"+testKey+":state:quota", route)
		return n == ""
	})
	c := decorate(newFleet(t, srv.URL(), testSecret, nil), s)
	subscribed(t, srv, 3)
	if c.Quota.local.IsStopped(route) {
		t.Error("a proxy joining after the lift starts stopped")
	}

	// A stop in force, read by a joiner, with its end: the joiner probes
	// then, not an hour later.
	const other = "/topapi/processinstance/get"
	fa := a.Breakers.f
	fa.publish(kindQuota, other, 3*time.Second)
	waitFor(t, "the stop recorded", func() bool {
		n, _ := srv.Do("ZSCORE", "dp:"+testKey+":state:quota", other)
		return n != ""
	})
	d := decorate(newFleet(t, srv.URL(), testSecret, nil), s)
	waitFor(t, "the joiner to read the stop", func() bool { return d.Quota.local.IsStopped(other) })
	if err := d.Quota.Admit(other, true); !errors.As(err, &qe) || qe.RetryAfter > 3*time.Second {
		t.Errorf("the joiner's Admit = %v, want a refusal until the stop's end (3 s), not the hour's probe", err)
	}
}
