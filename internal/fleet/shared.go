package fleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The month's quota count and the read cache, shared.

// QuotaCount is the fleet's count of the month's metered calls in Redis
// (quota.Shared): this proxy's sends are added in the background, one
// INCRBY per flush at most, never on a call's way.
type QuotaCount struct {
	f       *Fleet
	mu      sync.Mutex
	month   string
	pending int64 // added here, not yet in Redis
	total   int64 // the fleet's total as last read
	idle    int   // flushes with nothing to add since the last read
}

// QuotaCount returns the fleet's month count; it flushes every flushEvery.
func (f *Fleet) QuotaCount() *QuotaCount {
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
	var total int64
	err := q.f.do(context.Background(), OpQuota, func(ctx context.Context) error {
		key := q.f.key("month", month)
		p := q.f.rdb.Pipeline()
		incr := p.IncrBy(ctx, key, n)
		p.Expire(ctx, key, 40*24*time.Hour)
		if _, err := p.Exec(ctx); err != nil {
			return err
		}
		total = incr.Val()
		return nil
	})
	if err != nil {
		return // kept pending: added at the next flush that gets through
	}
	q.mu.Lock()
	if q.month == month {
		q.pending -= n
		q.total = max(q.total, total)
	}
	q.mu.Unlock()
}

// StopMonth tells the fleet that route answered 90020 (the organisation's
// quota is spent there) until until: every proxy stops it.
func (f *Fleet) StopMonth(route string, until time.Time) {
	f.publish(kindQuota, route, time.Until(until))
}

// OnQuotaStop sets what a route stopped by another proxy does here (set it
// before Start).
func (f *Fleet) OnQuotaStop(fn func(route string, until time.Time)) {
	f.events.mu.Lock()
	f.events.onQuota = fn
	f.events.mu.Unlock()
}

// Cache is the read cache shared through Redis: answers sealed with the
// token's key (AES-GCM from the app secret), under digests of their keys.
type Cache struct {
	f        *Fleet
	inflight atomic.Int64 // background writes
}

// Cache returns the shared read cache, nil in pass-through mode (no secret
// to seal with).
func (f *Fleet) Cache() *Cache {
	if f.sealer == nil {
		return nil
	}
	return &Cache{f: f}
}

type cachedAnswer struct {
	Status int         `json:"s"`
	Header http.Header `json:"h"`
	Body   []byte      `json:"b"`
	Stored int64       `json:"t"` // unix ms
}

// Get returns the answer kept under key if it is no older than ttl.
func (c *Cache) Get(ctx context.Context, key [32]byte, ttl time.Duration) (status int, header http.Header, body []byte, stored time.Time, ok bool) {
	var v string
	err := c.f.do(ctx, OpCache, func(ctx context.Context) (err error) {
		v, err = c.f.rdb.Get(ctx, c.f.key("cache", hex.EncodeToString(key[:]))).Result()
		return err
	})
	if err != nil {
		return 0, nil, nil, time.Time{}, false
	}
	plain, _, _, err := c.f.sealer.open(v)
	if err != nil {
		return 0, nil, nil, time.Time{}, false
	}
	var a cachedAnswer
	if json.Unmarshal([]byte(plain), &a) != nil {
		return 0, nil, nil, time.Time{}, false
	}
	stored = time.UnixMilli(a.Stored)
	if time.Since(stored) > ttl {
		return 0, nil, nil, time.Time{}, false
	}
	return a.Status, a.Header, a.Body, stored, true
}

// Put keeps an answer under key for ttl, in the background.
func (c *Cache) Put(key [32]byte, status int, header http.Header, body []byte, stored time.Time, ttl time.Duration) {
	if !c.f.Up() || c.inflight.Load() >= maxCachePuts {
		return
	}
	b, err := json.Marshal(cachedAnswer{Status: status, Header: header, Body: body, Stored: stored.UnixMilli()})
	if err != nil {
		return
	}
	v := c.f.sealer.seal(string(b), stored, stored.Add(ttl))
	c.inflight.Add(1)
	c.f.wg.Add(1)
	go func() {
		defer c.f.wg.Done()
		defer c.inflight.Add(-1)
		_ = c.f.do(context.Background(), OpCache, func(ctx context.Context) error {
			return c.f.rdb.Set(ctx, c.f.key("cache", hex.EncodeToString(key[:])), v, ttl).Err()
		})
	}()
}

// maxCachePuts bounds the background writes of the shared cache at once.
const maxCachePuts = 64
