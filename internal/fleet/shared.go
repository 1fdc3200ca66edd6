package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
)

// The month's quota count and the read cache, shared.

// QuotaCount is the fleet's count of the month's metered calls in Redis:
// this proxy's sends are added in the background, one INCRBY per flush at
// most, never on a call's way.
type QuotaCount struct {
	f       *Fleet
	mu      sync.Mutex
	month   string
	pending int64 // added here, not yet in Redis
	total   int64 // the fleet's total as last read
	idle    int   // flushes with nothing to add since the last read
}

// quotaCount returns the fleet's month count; it flushes every flushEvery.
func (f *Fleet) quotaCount() *QuotaCount {
	q := &QuotaCount{f: f}
	f.every(flushEvery, q.flush)
	return q
}

// Add adds n to month's count. It never waits on Redis.
func (q *QuotaCount) Add(month string, n int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.monthLocked(month)
	q.pending += n
}

// Total is the fleet's count of month as best known (the last read and
// what was added here since); -1 while Redis is down (alone).
func (q *QuotaCount) Total(month string) int64 {
	if !q.f.Up() {
		return -1
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.monthLocked(month)
	return q.total + q.pending
}

func (q *QuotaCount) monthLocked(month string) {
	if month != q.month {
		q.month, q.pending, q.total = month, 0, 0
	}
}

// flush adds what this proxy sent to the fleet's count and reads the
// total back; with nothing to add it reads the total once a second.
func (q *QuotaCount) flush() {
	q.mu.Lock()
	month, n := q.month, q.pending
	if n == 0 {
		q.idle++
	}
	read := n > 0 || q.idle >= 10
	if read {
		q.idle = 0
	}
	q.mu.Unlock()
	if month == "" || !read || !q.f.Up() {
		return
	}
	var res []int64
	err := q.f.do(context.Background(), OpQuota, func(ctx context.Context) (err error) {
		res, err = countScript.Run(ctx, q.f.rdb, []string{q.f.key("month", month)}, n, (40 * 24 * time.Hour).Milliseconds()).Int64Slice()
		return err
	})
	if err != nil || len(res) != 2 {
		return // kept pending: added at the next flush that gets through
	}
	total := res[0]
	if res[1] != 0 {
		q.f.failed(OpQuota) // not a count: replaced
	}
	q.mu.Lock()
	if q.month == month {
		q.pending -= n
		q.total = max(q.total, total)
	}
	q.mu.Unlock()
}

// countScript adds ARGV[1] to the month's count KEYS[1] and keeps it
// ARGV[2] ms. A value that is not a count (another type, not a whole
// number, negative, past 2^53) is not the fleet's: it is replaced, the
// count starting again from what this proxy adds. Returns {the count, 1 if
// replaced else 0}.
var countScript = redis.NewScript(`
local bad = 0
local ty = redis.call('TYPE', KEYS[1]).ok
if ty == 'string' then
  local v = redis.call('GET', KEYS[1])
  if not string.match(v, '^%d+$') or #v > 15 then bad = 1 end
elseif ty ~= 'none' then
  bad = 1
end
if bad == 1 then redis.call('DEL', KEYS[1]) end
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {total, bad}
`)

// Quota is the fleet's monthly quota meter: the local quota.Meter,
// decorated so that the month's count is the fleet's (quota.monthly_budget
// holds for the fleet) and a route stopped by a 90020 stops on every proxy.
type Quota struct {
	f     *Fleet
	local *quota.Meter
	count *QuotaCount
}

// Admit is the local meter's answer, then the budget's for the fleet's
// count.
func (q *Quota) Admit(route string, metered bool) error {
	if err := q.local.Admit(route, metered); err != nil || !metered {
		return err
	}
	return q.spent(route)
}

// Refused is Admit without taking the hour's probe.
func (q *Quota) Refused(route string, metered bool) error {
	if err := q.local.Refused(route, metered); err != nil || !metered {
		return err
	}
	return q.spent(route)
}

func (q *Quota) spent(route string) error {
	total := q.count.Total(q.local.Month())
	if total < 0 {
		return nil // alone: the local count answered
	}
	return q.local.Spent(route, total)
}

// Sent counts here and for the fleet.
func (q *Quota) Sent(route string, metered bool) {
	q.local.Sent(route, metered)
	if metered {
		q.count.Add(q.local.Month(), 1)
	}
}

// Answered learns here; a route it stops is stopped for the fleet, and a
// route whose stop it lifts (its probe got through) is resumed for the
// fleet; so is the organisation's stop, which lifts every route's. The
// overflow route holds different APIs on each proxy: its stop is not
// shared.
func (q *Quota) Answered(route string, r dingtalk.Result) bool {
	was := q.local.IsStopped(route)
	var lifted []string // the stops the organisation's probe may lift
	orgWas := q.local.IsStopped(quota.Organisation)
	if orgWas && r.Reason != dingtalk.ReasonQuota {
		lifted = q.local.StoppedRoutes()
	}
	stopped := q.local.Answered(route, r)
	switch org := q.local.IsStopped(quota.Organisation); {
	case !orgWas && org:
		q.f.publish(kindQuota, quota.Organisation, time.Until(q.local.MonthEnd()))
	case orgWas && !org:
		q.f.publishResume(quota.Organisation)
		for _, rt := range lifted {
			q.f.publishResume(rt)
		}
		return stopped
	}
	switch {
	case route == proxy.Overflow:
	case stopped:
		q.f.publish(kindQuota, route, time.Until(q.local.MonthEnd()))
	case was && !q.local.IsStopped(route):
		q.f.publishResume(route)
	}
	return stopped
}

// claimProbe says whether this proxy sends the organisation's probe this
// hour: the first proxy of the fleet to ask takes it. With Redis away (or
// slow) it does: alone, each proxy probes for itself.
func (f *Fleet) claimProbe() bool {
	if !f.Up() {
		return true
	}
	var got int64
	err := f.do(context.Background(), OpQuota, func(ctx context.Context) (err error) {
		got, err = probeScript.Run(ctx, f.rdb, []string{f.key("quota", "probe")}, f.events.id, quota.ProbeEvery.Milliseconds()).Int64()
		return err
	})
	return err != nil || got == 1
}

// probeScript takes the hour's probe, KEYS[1], for ARGV[1] for ARGV[2] ms:
// 1 if taken, 0 if another proxy holds it. A value that cannot be the
// fleet's (another type, no expiry, or one past the hour) is junk, not a
// claim: it is replaced, so that no value written there stops the probes
// for good.
var probeScript = redis.NewScript(`
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 or ttl > tonumber(ARGV[2]) or redis.call('TYPE', KEYS[1]).ok ~= 'string' then
  redis.call('DEL', KEYS[1])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
`)

// State is the local meter's, counting the fleet's sends.
func (q *Quota) State() quota.State {
	st := q.local.State()
	st.Sent = max(st.Sent, q.count.Total(st.Month))
	return st
}

// Cache is the read cache shared through Redis, decorating the local
// store: a miss here asks Redis (once for all concurrent misses: the read
// cache's flight leader), and an answer kept here is kept there too.
// Answers are sealed with the token's key (AES-GCM from the app secret),
// under digests of their keys, bound to those keys (associated data): an
// answer copied to another key does not open there.
type Cache struct {
	f        *Fleet
	local    proxy.Store
	inflight atomic.Int64 // background writes
}

// Peek is the local store's: it never waits.
func (c *Cache) Peek(key [32]byte, ttl time.Duration) (proxy.Entry, bool) {
	return c.local.Peek(key, ttl)
}

// Get is the local store's answer, else Redis's (kept here too).
func (c *Cache) Get(ctx context.Context, key [32]byte, ttl time.Duration) (proxy.Entry, bool) {
	if e, ok := c.local.Get(ctx, key, ttl); ok {
		return e, true
	}
	e, ok := c.get(ctx, key, ttl)
	if ok {
		c.local.Put(key, e, ttl)
	}
	return e, ok
}

// Put keeps e here and, in the background, in Redis.
func (c *Cache) Put(key [32]byte, e proxy.Entry, ttl time.Duration) {
	c.local.Put(key, e, ttl)
	c.put(key, e, ttl)
}

type cachedAnswer struct {
	Status int         `json:"s"`
	Header http.Header `json:"h"`
	Body   []byte      `json:"b"`
	Stored int64       `json:"t"` // unix ms
}

// get returns the answer kept in Redis under key if it is no older than ttl.
func (c *Cache) get(ctx context.Context, key [32]byte, ttl time.Duration) (proxy.Entry, bool) {
	var v string
	name := hex.EncodeToString(key[:])
	err := c.f.do(ctx, OpCache, func(ctx context.Context) (err error) {
		v, err = c.f.rdb.Get(ctx, c.f.key("cache", name)).Result()
		return err
	})
	if err != nil {
		return proxy.Entry{}, false
	}
	plain, _, _, err := c.f.sealer.open(c.ad(name), v)
	if err != nil {
		c.f.failed(OpCache) // not sealed for this key: not used
		return proxy.Entry{}, false
	}
	var a cachedAnswer
	if json.Unmarshal([]byte(plain), &a) != nil {
		return proxy.Entry{}, false
	}
	stored := time.UnixMilli(a.Stored)
	if time.Since(stored) > ttl {
		return proxy.Entry{}, false
	}
	return proxy.Entry{Status: a.Status, Header: a.Header, Body: a.Body, Stored: stored}, true
}

// put keeps an answer in Redis under key for ttl, in the background.
func (c *Cache) put(key [32]byte, e proxy.Entry, ttl time.Duration) {
	if ttl <= 0 || !c.f.Up() || c.inflight.Load() >= maxCachePuts {
		return
	}
	b, err := json.Marshal(cachedAnswer{Status: e.Status, Header: e.Header, Body: e.Body, Stored: e.Stored.UnixMilli()})
	if err != nil {
		return
	}
	name := hex.EncodeToString(key[:])
	v := c.f.sealer.seal(c.ad(name), string(b), e.Stored, e.Stored.Add(ttl))
	c.inflight.Add(1)
	c.f.wg.Add(1)
	go func() {
		defer c.f.wg.Done()
		defer c.inflight.Add(-1)
		_ = c.f.do(context.Background(), OpCache, func(ctx context.Context) error {
			return c.f.rdb.Set(ctx, c.f.key("cache", name), v, ttl).Err()
		})
	}()
}

// ad is the associated data of the answer kept under cache:<name>.
func (c *Cache) ad(name string) []byte { return c.f.sealer.ad(purposeCache, "cache:"+name) }

// maxCachePuts bounds the background writes of the shared cache at once.
const maxCachePuts = 64
