package fleet

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// Breakers is the fleet's breaker set: the local breaker.Set, decorated so
// that a route's opening and the IP ban reach every proxy, and a route
// fails across the fleet by the local rule.
//
// Openings and bans are shared as transitions (events.go): no Redis on a
// call's way. Failures are counted across the fleet in the same unit and
// window as alone: a proxy whose window holds failures on a route reports
// that window's counts (calls, after their retries) every 100 ms at most,
// in one pipeline for all such routes, into a hash per route holding each
// proxy's counts; when the sum trips the local rule (breaker.Settings.Trips),
// the route opens on every proxy. A proxy that sees no failure on a route
// does not report it: an outage only one proxy sees is judged on that
// proxy's own calls. A slow call (breaker.slow_call) is a failure in those
// counts as it is alone: the breaker layer judges it a failure before its
// verdict reaches the done that Allow returns.
type Breakers struct {
	f     *Fleet
	local *breaker.Set

	// held are routes another proxy opened, until when; heldN how many.
	mu    sync.RWMutex
	held  map[string]time.Time
	heldN atomic.Int32

	// failing are routes whose window here holds failures: reported at
	// each flush. tripped are routes this proxy opened for the fleet.
	rmu     sync.Mutex
	failing map[string]struct{}
	tripped map[string]time.Time
}

// maxReported bounds the routes reported at once.
const maxReported = 1024

// flushEvery is how often failing routes are reported.
const flushEvery = 100 * time.Millisecond

// staleCount is how old a proxy's report may be and still count: a proxy
// that stopped reporting (its failures aged out of its window, or it
// died) stops counting.
const staleCount = time.Second

func newBreakers(f *Fleet, local *breaker.Set) *Breakers {
	b := &Breakers{f: f, local: local, held: make(map[string]time.Time),
		failing: make(map[string]struct{}), tripped: make(map[string]time.Time)}
	f.every(flushEvery, b.flush)
	return b
}

// Allow is the local Set's, unless another proxy opened route. A verdict
// that opens the route here tells the fleet.
func (b *Breakers) Allow(route string) (func(breaker.Verdict) bool, error) {
	if err := b.heldOpen(route); err != nil {
		return nil, err
	}
	done, err := b.local.Allow(route)
	if err != nil {
		return nil, err
	}
	return func(v breaker.Verdict) bool {
		opened := done(v)
		if v == breaker.Failure {
			b.rmu.Lock()
			if len(b.failing) < maxReported {
				b.failing[route] = struct{}{}
			}
			b.rmu.Unlock()
		}
		if opened && route != proxy.Overflow {
			// The overflow route holds different APIs on each proxy: not shared.
			b.f.publish(kindOpen, route, b.local.Settings().OpenTimeout)
		}
		return opened
	}, nil
}

// Check is the local Set's, unless another proxy opened route.
func (b *Breakers) Check(route string) error {
	if err := b.heldOpen(route); err != nil {
		return err
	}
	return b.local.Check(route)
}

// Settings are the local Set's: the fleet judges a call, slow or not, by
// the same settings as a proxy alone, and sums the verdicts.
func (b *Breakers) Settings() breaker.Settings { return b.local.Settings() }

// Ban bans here and tells the fleet.
func (b *Breakers) Ban(until time.Time) bool {
	if !b.local.Ban(until) {
		return false
	}
	b.f.publish(kindBan, "", time.Until(until))
	return true
}

// heldOpen is the *OpenError for a route another proxy opened, nil if none.
func (b *Breakers) heldOpen(route string) error {
	if b.heldN.Load() == 0 {
		return nil
	}
	b.mu.RLock()
	until, ok := b.held[route]
	b.mu.RUnlock()
	if left := time.Until(until); ok && left > 0 {
		return breaker.Open(route, breaker.KindCircuitOpen, left)
	}
	return nil
}

// hold opens route here until until: another proxy opened it, or the
// fleet's count tripped it. Expired holds are dropped as new ones come. At
// most maxReported routes are held, of which at most maxHeldUnseen on
// routes this proxy has no breaker for (never called here): openings heard
// on junk routes cannot crowd out those on routes in use.
func (b *Breakers) hold(route string, until time.Time) {
	known := b.local.Known(route)
	if known && time.Until(until) > 0 {
		// Opened for the fleet: the failures counted before are judged,
		// here as on the proxy that tripped it.
		b.local.Restart(route)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	unseen := 0
	for r, u := range b.held {
		switch {
		case !u.After(now):
			delete(b.held, r)
		case !b.local.Known(r):
			unseen++
		}
	}
	_, there := b.held[route]
	room := there || len(b.held) < maxReported && (known || unseen < maxHeldUnseen)
	if !room && known && len(b.held) >= maxReported {
		// Full: a route in use here takes the place of one that is not.
		for r := range b.held {
			if !b.local.Known(r) {
				delete(b.held, r)
				room = true
				break
			}
		}
	}
	if room && until.After(b.held[route]) {
		b.held[route] = until
	}
	b.heldN.Store(int32(len(b.held)))
}

// maxHeldUnseen bounds the openings held on routes this proxy has never
// called.
const maxHeldUnseen = 256

// flush reports the failing routes' windows and trips those the fleet's
// sum condemns (every flushEvery, in the background).
func (b *Breakers) flush() {
	now := time.Now()
	st := b.local.Settings()
	type report struct {
		route     string
		fails, ok uint64
	}
	var reports []report
	b.rmu.Lock()
	for r, until := range b.tripped {
		if now.After(until) {
			delete(b.tripped, r)
		}
	}
	for r := range b.failing {
		fails, ok := b.local.Counts(r)
		if fails == 0 {
			delete(b.failing, r) // its failures aged out of the window (or it opened)
			continue
		}
		reports = append(reports, report{r, fails, ok})
	}
	b.rmu.Unlock()
	if len(reports) == 0 || !b.f.Up() || st.Window <= 0 {
		return
	}
	f := b.f
	cmds := make([]*redis.Cmd, len(reports))
	err := f.do(context.Background(), OpVerdicts, func(ctx context.Context) error {
		p := f.rdb.Pipeline()
		for i, r := range reports {
			cmds[i] = reportScript.Eval(ctx, p, []string{f.key("brk", Digest(r.route))}, f.events.id,
				strconv.FormatUint(r.fails, 10)+" "+strconv.FormatUint(r.ok, 10)+" "+strconv.FormatInt(now.UnixMilli(), 10),
				st.Window.Milliseconds(), maxReporters)
		}
		_, err := p.Exec(ctx)
		return err
	})
	if err != nil {
		return
	}
	for i, r := range reports {
		vals, bad := reported(cmds[i])
		if bad {
			f.failed(OpVerdicts) // a key of another type, or too many reports: replaced
		}
		fails, oks, failing := sumCounts(vals, now)
		if !st.Trips(fails, oks) {
			continue
		}
		b.rmu.Lock()
		_, done := b.tripped[r.route]
		if !done {
			b.tripped[r.route] = now.Add(st.OpenTimeout)
		}
		b.rmu.Unlock()
		if done {
			continue
		}
		f.log.Warn("fleet: route failing across the fleet: opening it on every proxy", zap.String("route", r.route),
			zap.Uint64("failures", fails), zap.Uint64("successes", oks), zap.Int("proxies_failing", failing))
		b.hold(r.route, now.Add(st.OpenTimeout))
		if r.route != proxy.Overflow {
			f.publish(kindOpen, r.route, st.OpenTimeout)
		}
	}
}

// maxReporters bounds the proxies' reports in a route's hash: a hash with
// more is not the fleet's, and is replaced.
const maxReporters = 256

// reportScript records this proxy's report of a route and returns every
// proxy's. KEYS: the route's hash. ARGV: this proxy's id, its report, the
// window (ms), maxReporters. A key of another type, or a hash of more than
// maxReporters reports, is deleted first. Returns {1 if one was, else 0,
// {field, value, ...}}.
var reportScript = redis.NewScript(`
local bad = 0
local ty = redis.call('TYPE', KEYS[1]).ok
if ty ~= 'none' and (ty ~= 'hash' or redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4])) then
  redis.call('DEL', KEYS[1])
  bad = 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {bad, redis.call('HGETALL', KEYS[1])}
`)

// reported reads reportScript's reply: the reports by proxy, and whether
// a value not the fleet's was replaced.
func reported(cmd *redis.Cmd) (map[string]string, bool) {
	res, err := cmd.Slice()
	if err != nil || len(res) != 2 {
		return nil, false
	}
	bad, _ := res[0].(int64)
	flat, _ := res[1].([]any)
	vals := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		vals[k] = v
	}
	return vals, bad != 0
}

// sumCounts adds up the proxies' reports of a route ("failures successes
// unix-ms" each) made within staleCount of now (neither older, nor from
// the future: a report far ahead would count for ever), and counts the
// proxies failing.
func sumCounts(vals map[string]string, now time.Time) (fails, oks uint64, failing int) {
	for _, v := range vals {
		parts := strings.Fields(v)
		if len(parts) != 3 {
			continue
		}
		ms, err := strconv.ParseInt(parts[2], 10, 64)
		if age := now.Sub(time.UnixMilli(ms)); err != nil || age > staleCount || age < -staleCount {
			continue
		}
		fl, err1 := strconv.ParseUint(parts[0], 10, 32)
		ok, err2 := strconv.ParseUint(parts[1], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		fails += fl
		oks += ok
		if fl > 0 {
			failing++
		}
	}
	return fails, oks, failing
}
