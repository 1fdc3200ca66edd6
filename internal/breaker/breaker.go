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

// Overflow is the route name of the breaker shared by paths beyond MaxRoutes.
const Overflow = "_other"

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
	// MaxRoutes caps the routes with a breaker of their own.
	MaxRoutes int
}

// windowBuckets is how many buckets the rolling window has.
const windowBuckets = 10

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

var errFailure = errors.New("breaker: failed call")

// State names a breaker state for metrics: 0 closed, 1 half-open, 2 open.
type State = gobreaker.State

// StateOpen is the open state.
const StateOpen = gobreaker.StateOpen

// Settings returns the settings in force.
func (s *Set) Settings() Settings { return *s.settings.Load() }

// Set holds the breakers. It is safe for concurrent use.
type Set struct {
	log      *zap.Logger
	settings atomic.Pointer[Settings]
	// OnStateChange, if set before use, is told of every transition. It runs
	// under the breaker's lock: it must be quick and not call back into Set.
	OnStateChange func(route string, from, to State)
	// OnBan, if set before use, is told of every IP ban met here (not of
	// the fleet's, applied with BanUntil), to share it.
	OnBan func(d time.Duration)

	mu         sync.RWMutex
	routes     map[string]*entry
	configured map[string]bool
	overflow   *entry

	banUntil atomic.Int64 // unix nanoseconds; the IP ban ends then
}

type entry struct {
	route string
	built Settings // the settings this breaker was built with
	cb    *gobreaker.TwoStepCircuitBreaker[struct{}]
	// opened is when the breaker last opened, for Retry-After.
	opened atomic.Int64
	// last counts seen when a call failed, for the transition log.
	lastCounts atomic.Pointer[gobreaker.Counts]
	// remoteUntil (unix nanoseconds) holds the route open until then: its
	// breaker opened on another proxy of the fleet.
	remoteUntil atomic.Int64
}

// NewSet returns a Set with a breaker for each configured route.
func NewSet(s Settings, configured []string, log *zap.Logger) *Set {
	if log == nil {
		log = zap.NewNop()
	}
	set := &Set{log: log, routes: make(map[string]*entry), configured: make(map[string]bool)}
	set.settings.Store(&s)
	set.overflow = set.newEntry(Overflow, s)
	set.mu.Lock()
	for _, r := range configured {
		set.configured[r] = true
		set.routes[r] = set.newEntry(r, s)
	}
	set.mu.Unlock()
	return set
}

func (s *Set) newEntry(route string, st Settings) *entry {
	e := &entry{route: route, built: st}
	bucket := st.Window / windowBuckets
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
			cur := s.settings.Load() // ratio and minimum apply live
			ended := c.TotalSuccesses + c.TotalFailures
			return ended >= cur.MinRequests && ended > 0 &&
				float64(c.TotalFailures)/float64(ended) >= cur.FailureRatio
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				e.opened.Store(time.Now().UnixNano())
			}
			fields := []zap.Field{zap.String("route", name), zap.Stringer("from", from), zap.Stringer("to", to)}
			if c := e.lastCounts.Load(); c != nil && from == gobreaker.StateClosed {
				fields = append(fields, zap.Uint32("failures", c.TotalFailures), zap.Uint32("successes", c.TotalSuccesses))
			}
			if to == gobreaker.StateOpen {
				s.log.Warn("breaker opened", fields...)
			} else {
				s.log.Info("breaker state changed", fields...)
			}
			if s.OnStateChange != nil {
				s.OnStateChange(name, from, to)
			}
		},
		IsExcluded: func(err error) bool { return err == errIgnore },
	})
	return e
}

var errIgnore = errors.New("breaker: ignored call")

// Route returns the breaker route for a request path: the path itself while
// it is configured or fits under MaxRoutes, Overflow beyond. Metrics use the
// same name, so their cardinality is bounded too.
func (s *Set) Route(path string) string {
	return s.entry(path).route
}

func (s *Set) entry(path string) *entry {
	s.mu.RLock()
	e, ok := s.routes[path]
	s.mu.RUnlock()
	if ok {
		return s.fresh(e)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.routes[path]; ok {
		return e
	}
	if len(s.routes) >= s.settings.Load().MaxRoutes {
		return s.overflow
	}
	e = s.newEntry(path, *s.settings.Load())
	s.routes[path] = e
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
	if e.route == Overflow {
		if s.overflow != e {
			return s.overflow
		}
	} else if now, ok := s.routes[e.route]; ok && now != e {
		return now
	}
	n := s.newEntry(e.route, *cur)
	if e.route == Overflow {
		s.overflow = n
	} else {
		s.routes[e.route] = n
	}
	return n
}

// overflowEntry returns the overflow breaker, which fresh may replace.
func (s *Set) overflowEntry() *entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.overflow
}

// Allow asks whether a call on route may go. When it may, done must be
// called once with the call's verdict. While the IP ban or the route's
// breaker is open it returns an *OpenError.
func (s *Set) Allow(route string) (done func(Verdict), err error) {
	if until := s.banUntil.Load(); until != 0 {
		if left := time.Until(time.Unix(0, until)); left > 0 {
			return nil, &OpenError{Route: route, Kind: KindIPBan, RetryAfter: atLeastSecond(left)}
		}
	}
	var e *entry
	if route == Overflow {
		e = s.fresh(s.overflowEntry())
	} else {
		e = s.entry(route)
	}
	if until := e.remoteUntil.Load(); until != 0 {
		if left := time.Until(time.Unix(0, until)); left > 0 {
			return nil, &OpenError{Route: e.route, Kind: KindCircuitOpen, RetryAfter: atLeastSecond(left)}
		}
	}
	d, err := e.cb.Allow()
	if err != nil {
		// Half-open with all probes out: the answer comes within a call.
		left := time.Second
		if opened := e.opened.Load(); opened != 0 && errors.Is(err, gobreaker.ErrOpenState) {
			left = e.built.OpenTimeout - time.Since(time.Unix(0, opened))
		}
		return nil, &OpenError{Route: e.route, Kind: KindCircuitOpen, RetryAfter: atLeastSecond(left)}
	}
	return func(v Verdict) {
		switch v {
		case Success:
			d(nil)
		case Failure:
			d(errFailure)
		default:
			d(errIgnore)
		}
	}, nil
}

// Check says whether route is open now (the IP ban, the fleet's opening,
// or its own breaker open), without taking a call's place as Allow does: an
// *OpenError if so. A half-open breaker lets Check pass.
func (s *Set) Check(route string) error {
	if until := s.banUntil.Load(); until != 0 {
		if left := time.Until(time.Unix(0, until)); left > 0 {
			return &OpenError{Route: route, Kind: KindIPBan, RetryAfter: atLeastSecond(left)}
		}
	}
	s.mu.RLock()
	e, ok := s.routes[route]
	if !ok && route == Overflow {
		e, ok = s.overflow, true
	}
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	if until := e.remoteUntil.Load(); until != 0 {
		if left := time.Until(time.Unix(0, until)); left > 0 {
			return &OpenError{Route: e.route, Kind: KindCircuitOpen, RetryAfter: atLeastSecond(left)}
		}
	}
	if e.cb.State() == gobreaker.StateOpen {
		left := time.Second
		if opened := e.opened.Load(); opened != 0 {
			left = e.built.OpenTimeout - time.Since(time.Unix(0, opened))
		}
		return &OpenError{Route: e.route, Kind: KindCircuitOpen, RetryAfter: atLeastSecond(left)}
	}
	return nil
}

func atLeastSecond(d time.Duration) time.Duration {
	if d < time.Second {
		return time.Second
	}
	return d.Round(time.Second)
}

// Ban opens the proxy-wide breaker for d: DingTalk banned the egress IP.
// A longer ban already in force is kept. OnBan hears of it.
func (s *Set) Ban(d time.Duration) {
	if s.banUntilTime(time.Now().Add(d)) && s.OnBan != nil {
		s.OnBan(d)
	}
}

// BanUntil opens the proxy-wide breaker until until: another proxy of the
// fleet met DingTalk's IP ban.
func (s *Set) BanUntil(until time.Time) { s.banUntilTime(until) }

func (s *Set) banUntilTime(t time.Time) bool {
	until := t.UnixNano()
	for {
		cur := s.banUntil.Load()
		if cur >= until {
			return false
		}
		if s.banUntil.CompareAndSwap(cur, until) {
			s.log.Warn("egress IP banned by DingTalk: every route is open", zap.Duration("for", time.Until(t).Round(time.Second)))
			return true
		}
	}
}

// OpenRemote holds route open until until: its breaker opened on another
// proxy of the fleet. A route this proxy has no breaker for, and cannot
// make one for (past max_routes), is left alone: the overflow breaker is
// not opened for a route it only may hold.
func (s *Set) OpenRemote(route string, until time.Time) {
	e := s.entry(route)
	if e.route != route {
		return
	}
	n := until.UnixNano()
	for {
		cur := e.remoteUntil.Load()
		if cur >= n || e.remoteUntil.CompareAndSwap(cur, n) {
			return
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

// Update installs new settings and configured routes. Ratio and minimum
// apply at once; a changed window, open timeout or probe count applies to
// each breaker's next window. Breakers of unchanged routes keep their state.
func (s *Set) Update(st Settings, configured []string) {
	s.settings.Store(&st)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.configured = make(map[string]bool, len(configured))
	for _, r := range configured {
		s.configured[r] = true
		if _, ok := s.routes[r]; !ok {
			s.routes[r] = s.newEntry(r, st)
		}
	}
}

// Len is how many breakers exist, the overflow one included.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.routes) + 1
}

// State returns the state of route's breaker.
func (s *Set) State(route string) State {
	if route == Overflow {
		return s.overflowEntry().cb.State()
	}
	s.mu.RLock()
	e, ok := s.routes[route]
	s.mu.RUnlock()
	if !ok {
		return gobreaker.StateClosed
	}
	return e.cb.State()
}
