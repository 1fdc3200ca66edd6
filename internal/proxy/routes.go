package proxy

import (
	"sync"

	"github.com/dingproxy/dingproxy/internal/call"
)

// Overflow is the route of every API past breaker.max_routes.
const Overflow = "_other"

// routeTable names each call's route, once, at the door: a configured
// route by its path, an API by its template, and past max routes the
// overflow route. Every per-route thing (breakers, metric labels, logs,
// the quota's stops) takes the name it gives, so they are all bounded by
// it, and nothing else creates a route.
type routeTable struct {
	max        int
	configured map[string]bool
	mu         sync.RWMutex
	seen       map[string]struct{}
}

func newRouteTable(max int, configured map[string]*call.RoutePolicy) *routeTable {
	t := &routeTable{max: max, configured: make(map[string]bool, len(configured)), seen: make(map[string]struct{})}
	for p := range configured {
		t.configured[p] = true
	}
	return t
}

// name is the route for name (a configured path or an API template).
func (t *routeTable) name(name string) string {
	if t.configured[name] {
		return name
	}
	t.mu.RLock()
	_, ok := t.seen[name]
	t.mu.RUnlock()
	if ok {
		return name
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.seen[name]; ok {
		return name
	}
	if len(t.seen)+len(t.configured) >= t.max {
		return Overflow
	}
	t.seen[name] = struct{}{}
	return name
}

// withRoutes is t under a new policy: the routes seen so far keep their
// names (their breakers and series exist), the configured ones are new.
func (t *routeTable) withRoutes(max int, configured map[string]*call.RoutePolicy) *routeTable {
	n := newRouteTable(max, configured)
	if t != nil {
		t.mu.RLock()
		for k := range t.seen {
			n.seen[k] = struct{}{}
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
	return len(t.seen) + len(t.configured)
}
