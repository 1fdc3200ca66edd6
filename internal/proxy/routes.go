package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Overflow is the route of calls whose API has no route of its own.
const Overflow = call.OverflowRoute

// routeIdle is how long a route may go unused before its slot may go to
// another API.
const routeIdle = 10 * time.Minute

// RouteObserver is told of every route the table gives up, so that what
// was kept by its name (breakers, metric series) can go too. It runs
// outside the table's lock.
type RouteObserver interface {
	RouteReleased(route string)
}

// routeTable names each call's route, once, at the door: a configured
// route by its path, an API by its template, and otherwise the overflow
// route. Every per-route thing (breakers, metric labels, logs, the quota's
// stops) takes the name it gives, so they are all bounded by it, and
// nothing else makes a route.
//
// A new API takes a free slot on its first call, for a trial: the first
// answer from DingTalk that shows the API exists (anything but "no such
// API" or a refused token) keeps it for good; one that shows nothing gives
// the slot back at once. So paths DingTalk does not know hold slots only
// while their calls are in flight, however many a client sends, and a slot
// idle for routeIdle goes to the next new API once the table is full.
// Calls the table has no slot for run on the overflow route, which decides
// nothing for them: it has no breaker of its own (the IP ban still holds)
// and no quota stop.
type routeTable struct {
	max        int // configured routes and slots together
	configured map[string]bool
	mu         sync.RWMutex
	slots      map[string]*slot
}

type slot struct {
	used  atomic.Int64 // unix nanoseconds of the last call
	known atomic.Bool  // DingTalk answered it as an API it knows
}

func newRouteTable(max int, configured map[string]*call.RoutePolicy) *routeTable {
	t := &routeTable{max: max, configured: make(map[string]bool, len(configured)), slots: make(map[string]*slot)}
	for p := range configured {
		t.configured[p] = true
	}
	return t
}

// name is the route for a call whose API is named name (a configured path
// or an API template).
func (t *routeTable) name(name string, now time.Time) string {
	if t.configured[name] {
		return name
	}
	t.mu.RLock()
	s, ok := t.slots[name]
	t.mu.RUnlock()
	if ok {
		s.used.Store(now.UnixNano())
		return name
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.slots[name]; ok {
		s.used.Store(now.UnixNano())
		return name
	}
	if len(t.slots)+len(t.configured) >= t.max {
		t.freeIdleLocked(now)
		if len(t.slots)+len(t.configured) >= t.max {
			return Overflow
		}
	}
	s = &slot{}
	s.used.Store(now.UnixNano())
	t.slots[name] = s
	return name
}

// settle learns from DingTalk's answer r to a call on route: an answer
// that shows the API exists (DingTalk answered it, or throttled it) keeps
// its slot; "no such API", or a token refused before DingTalk looked, gives
// back a slot no answer has shown yet; a ban page or a gateway's 5xx, which
// could answer any path, shows nothing either way. It reports whether the
// slot was given back.
func (t *routeTable) settle(route string, r dingtalk.Result) (released bool) {
	if r.Reason == "" || t.configured[route] {
		return false // no answer came; or the route is configured
	}
	t.mu.RLock()
	s, ok := t.slots[route]
	t.mu.RUnlock()
	if !ok {
		return false
	}
	switch {
	case r.Class == dingtalk.Success || r.Class == dingtalk.Throttled ||
		r.Class == dingtalk.Business && r.Reason != dingtalk.ReasonUnknownAPI:
		s.known.Store(true)
		return false
	case r.Executed() || s.known.Load():
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.slots[route]; ok && cur == s && !s.known.Load() {
		delete(t.slots, route)
		return true
	}
	return false
}

// has reports whether route is a route of the table's: configured, holding
// a slot, or the overflow route.
func (t *routeTable) has(route string) bool {
	if route == Overflow || t.configured[route] {
		return true
	}
	t.mu.RLock()
	_, ok := t.slots[route]
	t.mu.RUnlock()
	return ok
}

// freeIdleLocked frees the slots of routes idle for routeIdle; t.mu must
// be held.
func (t *routeTable) freeIdleLocked(now time.Time) {
	idle := now.Add(-routeIdle).UnixNano()
	for name, s := range t.slots {
		if s.used.Load() < idle {
			delete(t.slots, name)
		}
	}
}

// withRoutes is t under a new policy: the routes that have slots keep
// them (their breakers and series exist), the configured ones are new.
func (t *routeTable) withRoutes(max int, configured map[string]*call.RoutePolicy) *routeTable {
	n := newRouteTable(max, configured)
	if t != nil {
		t.mu.RLock()
		for k, s := range t.slots {
			if !n.configured[k] {
				n.slots[k] = s
			}
		}
		t.mu.RUnlock()
	}
	return n
}

// len is how many routes have names of their own, configured ones
// included: max_routes bounds it.
func (t *routeTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.slots) + len(t.configured)
}
