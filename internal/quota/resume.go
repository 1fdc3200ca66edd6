package quota

import "time"

// What the fleet tells a meter: stops and resumptions other proxies met.

// MaxHeard bounds the routes a meter stops at once on another proxy's word
// (StopUntil): a flood of stops heard, junk or not, cannot grow the meter
// without bound; past it, a route stops here when DingTalk answers 90020
// here.
const MaxHeard = 1024

// IsStopped says whether route is stopped for the month now.
func (m *Meter) IsStopped(route string) bool {
	m.mu.Lock()
	defer m.unlock()
	m.rollLocked(time.Now())
	_, ok := m.stopped[route]
	return ok
}

// StopUntil stops route as a 90020 there would, on another proxy's word:
// that proxy met it, and its stop ends at until (the month's turn as that
// proxy counts it; the turn here ends it too). The route is probed at
// until if that comes before the hour's probe. It reports whether the
// route was not stopped before; a stop heard when MaxHeard routes are
// stopped already, or one that has ended, changes nothing.
func (m *Meter) StopUntil(route string, until time.Time) bool {
	now := time.Now()
	if !until.After(now) {
		return false
	}
	probe := now.Add(ProbeEvery)
	if until.Before(probe) {
		probe = until
	}
	m.mu.Lock()
	m.rollLocked(now)
	added := false
	switch st, was := m.stopped[route]; {
	case was:
		if !st.probing && probe.Before(st.nextProbe) {
			st.nextProbe = probe
		}
	case len(m.stopped) < MaxHeard:
		m.stopped[route] = &stop{nextProbe: probe}
		m.told = append(m.told, stopNote{route, true})
		added = true
	}
	m.unlock()
	return added
}

// Resume lifts route's stop, as an answer DingTalk processed there would:
// another proxy's call on it got through. It reports whether the route was
// stopped.
func (m *Meter) Resume(route string) bool {
	m.mu.Lock()
	m.rollLocked(time.Now())
	_, was := m.stopped[route]
	if was {
		delete(m.stopped, route)
		m.told = append(m.told, stopNote{route, false})
	}
	m.unlock()
	return was
}
