package breaker

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// Kinds of open breaker, as X-Dingproxy-Fallback names them.
const (
	KindCircuitOpen = "circuit-open"
	KindIPBan       = "ip-ban"
)

// Settings configure every breaker of a Set.
type Settings struct {
	// FailureRatio of ended calls in the window at which a breaker opens.
	FailureRatio float64
	// MinRequests is the least number of ended calls in the window before
	// the ratio is considered.
	MinRequests uint32
	// Window is the rolling window over which calls are counted, in ten buckets.
	Window time.Duration
	// OpenTimeout is how long a breaker stays open before probing.
	OpenTimeout time.Duration
	// HalfOpenRequests probes are let through; all must succeed to close.
	HalfOpenRequests uint32
	// SlowCall is the default slow-call limit (breaker.slow_call): a call
	// DingTalk answered more slowly counts as a failure (Slow). A route's
	// own limit (call.RoutePolicy.SlowCall) overrides it; 0 is off.
	SlowCall time.Duration
}

// WindowBuckets is how many buckets the rolling window has.
const WindowBuckets = 10

// Trips is the breaker's rule, alone and shared alike: a route whose
// window holds at least MinRequests ended calls (successes and failures;
// ignored calls do not count), failures at least FailureRatio of them,
// opens.
func (s Settings) Trips(failures, successes uint64) bool {
	ended := failures + successes
	return ended > 0 && ended >= uint64(s.MinRequests) && float64(failures)/float64(ended) >= s.FailureRatio
}

// Verdict is how a call's final outcome counts.
type Verdict uint8

const (
	// Ignore: neither a success nor a failure (business errors, throttling,
	// client cancellations).
	Ignore Verdict = iota
	Success
	Failure
)

// OpenError is returned by Allow when a call must not go.
type OpenError struct {
	Route string
	// Kind is KindCircuitOpen or KindIPBan.
	Kind string
	// RetryAfter is how long the breaker stays open, at least 1 s.
	RetryAfter time.Duration
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("breaker: %s for %s, retry after %s", e.Kind, e.Route, e.RetryAfter)
}

// Unwrap lets errors.Is(err, gobreaker.ErrOpenState) hold.
func (e *OpenError) Unwrap() error { return gobreaker.ErrOpenState }

// Open is the *OpenError for route, open for left more (at least 1 s).
func Open(route, kind string, left time.Duration) *OpenError {
	return &OpenError{Route: route, Kind: kind, RetryAfter: atLeastSecond(left)}
}

var errFailure = errors.New("breaker: failed call")

// State names a breaker state for metrics: 0 closed, 1 half-open, 2 open.
type State = gobreaker.State

// States of a breaker.
const (
	StateClosed   = gobreaker.StateClosed
	StateHalfOpen = gobreaker.StateHalfOpen
	StateOpen     = gobreaker.StateOpen
)

// Observer is told of every transition of a breaker and of every IP ban,
// outside every lock, once each.
type Observer interface {
	BreakerChanged(route string, from, to State)
}

// Set holds the breakers, one per route name it is asked about (the
// proxy's route table bounds the names), and the proxy-wide breaker that
// DingTalk's egress-IP ban opens. It is safe for concurrent use.
type Set struct {
	log      *zap.Logger
	obs      Observer
	settings atomic.Pointer[Settings]

	mu     sync.RWMutex
	routes map[string]*entry

	banUntil atomic.Int64 // unix nanoseconds; the IP ban ends then

	// changes holds the transitions gobreaker reported under its own lock,
	// to be told to obs once that lock is released.
	changesMu sync.Mutex
	changes   []transition
	pending   atomic.Bool
}

type transition struct {
	route    string
	from, to State
}

type entry struct {
	route string
	built Settings // the settings this breaker was built with
	cb    *gobreaker.TwoStepCircuitBreaker[struct{}]
	// opened is when the breaker last opened, for Retry-After.
	opened atomic.Int64
	// last counts seen when a call failed, for the transition log.
	lastCounts atomic.Pointer[gobreaker.Counts]
}

// NewSet returns an empty Set under s; obs (may be nil) hears of every
// transition.
func NewSet(s Settings, log *zap.Logger, obs Observer) *Set {
	if log == nil {
		log = zap.NewNop()
	}
	set := &Set{log: log, obs: obs, routes: make(map[string]*entry)}
	set.settings.Store(&s)
	return set
}

// Settings returns the settings in force.
func (s *Set) Settings() Settings { return *s.settings.Load() }

func (s *Set) newEntry(route string, st Settings) *entry {
	e := &entry{route: route, built: st}
	bucket := st.Window / WindowBuckets
	if bucket <= 0 {
		bucket = st.Window
	}
	e.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         route,
		MaxRequests:  st.HalfOpenRequests,
		Interval:     st.Window,
		BucketPeriod: bucket,
		Timeout:      st.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			e.lastCounts.Store(&c)
			// ratio and minimum apply live
			return s.settings.Load().Trips(uint64(c.TotalFailures), uint64(c.TotalSuccesses))
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			// Under gobreaker's lock: note it, tell it once released.
			if to == gobreaker.StateOpen {
				e.opened.Store(time.Now().UnixNano())
			}
			s.changesMu.Lock()
			s.changes = append(s.changes, transition{name, from, to})
			s.changesMu.Unlock()
			s.pending.Store(true)
		},
		IsExcluded: func(err error) bool { return err == errIgnore },
	})
	return e
}

// flush logs the transitions noted since the last flush and tells obs of
// them, outside every lock of the set and of gobreaker.
func (s *Set) flush() {
	if !s.pending.Load() {
		return
	}
	s.changesMu.Lock()
	changes := s.changes
	s.changes = nil
	s.pending.Store(false)
	s.changesMu.Unlock()
	for _, t := range changes {
		fields := []zap.Field{zap.String("route", t.route), zap.Stringer("from", t.from), zap.Stringer("to", t.to)}
		if t.from == gobreaker.StateClosed {
			if c := s.counts(t.route); c != nil {
				fields = append(fields, zap.Uint32("failures", c.TotalFailures), zap.Uint32("successes", c.TotalSuccesses))
			}
		}
		if t.to == gobreaker.StateOpen {
			s.log.Warn("breaker opened", fields...)
		} else {
			s.log.Info("breaker state changed", fields...)
		}
		if s.obs != nil {
			s.obs.BreakerChanged(t.route, t.from, t.to)
		}
	}
}

func (s *Set) counts(route string) *gobreaker.Counts {
	s.mu.RLock()
	e := s.routes[route]
	s.mu.RUnlock()
	if e == nil {
		return nil
	}
	return e.lastCounts.Load()
}

var errIgnore = errors.New("breaker: ignored call")

// entry returns route's breaker, making it on first use.
func (s *Set) entry(route string) *entry {
	s.mu.RLock()
	e, ok := s.routes[route]
	s.mu.RUnlock()
	if ok {
		return s.fresh(e)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.routes[route]; ok {
		return e
	}
	e = s.newEntry(route, *s.settings.Load())
	s.routes[route] = e
	return e
}

// fresh replaces a breaker built with older window, timeout or probe
// settings by a new one, but only while it is closed: a reload applies to
// new windows and never cuts short an open breaker.
func (s *Set) fresh(e *entry) *entry {
	cur := s.settings.Load()
	if e.built.Window == cur.Window && e.built.OpenTimeout == cur.OpenTimeout && e.built.HalfOpenRequests == cur.HalfOpenRequests {
		return e
	}
	if e.cb.State() != gobreaker.StateClosed {
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Another call may have rebuilt it meanwhile: use that one.
	if now, ok := s.routes[e.route]; ok && now != e {
		return now
	}
	n := s.newEntry(e.route, *cur)
	s.routes[e.route] = n
	return n
}

// Allow asks whether a call on route may go. When it may, done must be
// called once with the call's verdict; it reports whether that verdict
// opened the breaker. While the IP ban or the route's breaker is open it
// returns an *OpenError.
func (s *Set) Allow(route string) (done func(Verdict) (opened bool), err error) {
	defer s.flush()
	if err := s.banned(route); err != nil {
		return nil, err
	}
	e := s.entry(route)
	d, err := e.cb.Allow()
	if err != nil {
		return nil, e.openError(err)
	}
	return func(v Verdict) bool {
		defer s.flush()
		before := e.opened.Load()
		switch v {
		case Success:
			d(nil)
		case Failure:
			d(errFailure)
		default:
			d(errIgnore)
		}
		return e.opened.Load() != before
	}, nil
}

// Check says whether route is open now (the IP ban, or its own breaker
// open), without taking a call's place as Allow does: an *OpenError if so.
// A half-open breaker lets Check pass.
func (s *Set) Check(route string) error {
	defer s.flush()
	if err := s.banned(route); err != nil {
		return err
	}
	s.mu.RLock()
	e, ok := s.routes[route]
	s.mu.RUnlock()
	if !ok || e.cb.State() != gobreaker.StateOpen {
		return nil
	}
	return e.openError(gobreaker.ErrOpenState)
}

// banned is the IP ban's *OpenError for route, nil when none is in force.
func (s *Set) banned(route string) error {
	if left := s.Banned(); left > 0 {
		return Open(route, KindIPBan, left)
	}
	return nil
}

// openError is the *OpenError for a call e's breaker refused with err:
// open (until its timeout ends), or half-open with every probe out (an
// answer comes within a call).
func (e *entry) openError(err error) *OpenError {
	left := time.Second
	if opened := e.opened.Load(); opened != 0 && errors.Is(err, gobreaker.ErrOpenState) {
		left = e.built.OpenTimeout - time.Since(time.Unix(0, opened))
	}
	return Open(e.route, KindCircuitOpen, left)
}

func atLeastSecond(d time.Duration) time.Duration {
	if d < time.Second {
		return time.Second
	}
	return d.Round(time.Second)
}

// Ban opens the proxy-wide breaker until until: DingTalk banned the egress
// IP. A longer ban already in force is kept. It reports whether the ban
// was lengthened.
func (s *Set) Ban(until time.Time) bool {
	n := until.UnixNano()
	for {
		cur := s.banUntil.Load()
		if cur >= n {
			return false
		}
		if s.banUntil.CompareAndSwap(cur, n) {
			s.log.Warn("egress IP banned by DingTalk: every route is open", zap.Duration("for", time.Until(until).Round(time.Second)))
			return true
		}
	}
}

// Banned returns how long the IP ban still lasts, zero when none.
func (s *Set) Banned() time.Duration {
	if until := s.banUntil.Load(); until != 0 {
		if left := time.Until(time.Unix(0, until)); left > 0 {
			return left
		}
	}
	return 0
}

// Update installs new settings. Ratio, minimum and the slow-call limit
// apply at once (the limit to calls that end from then on); a changed
// window, open timeout or probe count applies to each breaker's next
// window. Breakers keep their state.
func (s *Set) Update(st Settings) { s.settings.Store(&st) }

// Len is how many breakers exist.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.routes)
}

// State returns the state of route's breaker (closed for one not made).
func (s *Set) State(route string) State {
	defer s.flush()
	s.mu.RLock()
	e, ok := s.routes[route]
	s.mu.RUnlock()
	if !ok {
		return gobreaker.StateClosed
	}
	return e.cb.State()
}

// Counts are route's ended calls in its window, for the fleet's count.
func (s *Set) Counts(route string) (failures, successes uint64) {
	s.mu.RLock()
	e, ok := s.routes[route]
	s.mu.RUnlock()
	if !ok {
		return 0, 0
	}
	c := e.cb.Counts()
	return uint64(c.TotalFailures), uint64(c.TotalSuccesses)
}

// Restart starts route's window over while its breaker is closed, as the
// breaker does when it opens: the fleet opened the route, and the calls
// before that opening are judged. An open or probing breaker is left.
func (s *Set) Restart(route string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.routes[route]; ok && e.cb.State() == gobreaker.StateClosed {
		s.routes[route] = s.newEntry(route, *s.settings.Load())
	}
}

// Forget drops route's breaker while it is closed (the route table gave
// the route up): a breaker that is open or probing is kept.
func (s *Set) Forget(route string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.routes[route]; ok && e.cb.State() == gobreaker.StateClosed {
		delete(s.routes, route)
	}
}
