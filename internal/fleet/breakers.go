package fleet

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Fleet-wide failure counting. A breaker alone opens after min_requests
// calls through this proxy; ten replicas each see a tenth of an outage's
// failures and open ten times later. So each proxy also reports its
// verdicts on a route, but only while the route fails here: every 100 ms
// at most, one pipeline for all such routes (never a round trip on a
// call's way), into a hash per route and breaker window that holds each
// proxy's failures and successes. When the fleet's sum reaches
// min_requests at failure_ratio, the route opens on every proxy (the
// opening is shared as any other, as is a breaker that opens on one proxy
// by its own count).

// BreakerRule is what trips a route for the fleet: breaker's settings.
type BreakerRule struct {
	MinRequests  uint32
	FailureRatio float64
	Window       time.Duration
	OpenTimeout  time.Duration
}

type verdicts struct {
	mu     sync.Mutex
	counts map[string]*[2]uint32 // route -> failures, successes since the last flush
	// tripped holds routes this proxy opened for the fleet, until when.
	tripped map[string]time.Time
}

// maxReported bounds the routes counted between two flushes.
const maxReported = 1024

// flushEvery is how often verdicts are reported.
const flushEvery = 100 * time.Millisecond

// Verdict records a call's verdict on route for the fleet's count: failed,
// or a success. It never touches Redis.
func (f *Fleet) Verdict(route string, failed bool) {
	v := &f.verdicts
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.counts[route]
	if c == nil {
		if !failed || len(v.counts) >= maxReported {
			return // a route not failing here is not reported at all
		}
		if v.counts == nil {
			v.counts = make(map[string]*[2]uint32)
		}
		c = new([2]uint32)
		v.counts[route] = c
	}
	if failed {
		c[0]++
	} else {
		c[1]++
	}
}

// OnTrip sets what a fleet-wide trip does (set it before Start): open route
// here and tell the others; rule gives the breaker settings in force.
func (f *Fleet) OnTrip(rule func() BreakerRule, trip func(route string)) {
	f.tripRule, f.onTrip = rule, trip
}

// flushOnce reports the failing routes' counts, and trips those the
// fleet's sum condemns (every flushEvery, in the background).
func (f *Fleet) flushOnce() {
	v := &f.verdicts
	v.mu.Lock()
	counts := v.counts
	v.counts = nil
	now := time.Now()
	for r, until := range v.tripped {
		if now.After(until) {
			delete(v.tripped, r)
		}
	}
	v.mu.Unlock()
	if len(counts) == 0 || f.onTrip == nil || !f.Up() {
		return
	}
	rule := f.tripRule()
	if rule.Window <= 0 || rule.MinRequests == 0 {
		return
	}
	win := now.UnixMilli() / rule.Window.Milliseconds()
	routes := make([]string, 0, len(counts))
	var cmds []*redis.MapStringStringCmd
	err := f.do(context.Background(), OpVerdicts, func(ctx context.Context) error {
		p := f.rdb.Pipeline()
		for r, c := range counts {
			key := f.key("brk", Digest(r), strconv.FormatInt(win, 10))
			if c[0] > 0 {
				p.HIncrBy(ctx, key, "f:"+f.events.id, int64(c[0]))
			}
			if c[1] > 0 {
				p.HIncrBy(ctx, key, "s:"+f.events.id, int64(c[1]))
			}
			p.PExpire(ctx, key, 2*rule.Window)
			routes = append(routes, r)
			cmds = append(cmds, p.HGetAll(ctx, key))
		}
		_, err := p.Exec(ctx)
		return err
	})
	if err != nil {
		return
	}
	for i, r := range routes {
		var fails, oks uint64
		failing := 0
		for k, val := range cmds[i].Val() {
			n, _ := strconv.ParseUint(val, 10, 64)
			if strings.HasPrefix(k, "f:") {
				fails += n
				if n > 0 {
					failing++
				}
			} else {
				oks += n
			}
		}
		total := fails + oks
		if total < uint64(rule.MinRequests) || float64(fails)/float64(total) < rule.FailureRatio {
			continue
		}
		v.mu.Lock()
		_, done := v.tripped[r]
		if !done {
			if v.tripped == nil {
				v.tripped = make(map[string]time.Time)
			}
			v.tripped[r] = now.Add(rule.OpenTimeout)
		}
		v.mu.Unlock()
		if !done {
			f.log.Warn("fleet: route failing across the fleet: opening it on every proxy", zap.String("route", r),
				zap.Uint64("failures", fails), zap.Uint64("successes", oks), zap.Int("proxies_failing", failing))
			f.onTrip(r)
		}
	}
}
