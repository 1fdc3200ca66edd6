package quota

import "time"

// What the fleet tells a meter: stops and resumptions other proxies met.

// MaxHeard bounds the routes a meter stops at once on another proxy's word
// (StopUntil): a flood of stops heard, junk or not, cannot grow the meter
// without bound; past it, a route stops here when DingTalk answers 90020
// here.
const MaxHeard = 1024

// IsStopped says whether route is stopped for the month now (Organisation:
// whether every metered route is).
func (m *Meter) IsStopped(route string) bool {
	m.mu.Lock()
	defer m.unlock()
	m.rollLocked(time.Now())
	if route == Organisation {
		return m.org != nil
	}
	_, ok := m.stopped[route]
	return ok
}

// StopUntil stops route as a 90020 there would, on another proxy's word:
// that proxy met it, and its stop ends at until (the month's turn as that
// proxy counts it; the turn here ends it too). The route is probed at
// until if that comes before the hour's probe. It reports whether the
// route was not stopped before; a stop heard when MaxHeard routes are
// stopped already, or one that has ended, changes nothing. Organisation
// stops every metered route the same way.
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
	st, was := m.stopped[route]
	if route == Organisation {
		st, was = m.org, m.org != nil
	}
	switch {
	case was:
		if !st.probing && probe.Before(st.nextProbe) {
			st.nextProbe = probe
		}
	case route == Organisation:
		m.org = &stop{nextProbe: probe}
		m.told = append(m.told, stopNote{route, true})
		added = true
	case len(m.stopped) < MaxHeard:
		m.stopped[route] = &stop{nextProbe: probe}
		m.told = append(m.told, stopNote{route, true})
		added = true
	}
	m.unlock()
	return added
}

// StoppedRoutes are the routes stopped now (the fleet resumes them for
// all when the organisation's probe lifts every stop).
func (m *Meter) StoppedRoutes() []string {
	m.mu.Lock()
	defer m.unlock()
	out := make([]string, 0, len(m.stopped))
	for r := range m.stopped {
		out = append(out, r)
	}
	return out
}

// Resume lifts route's stop, as an answer DingTalk processed there would:
// another proxy's call on it got through. Organisation lifts every stop, as
// the organisation's probe getting through does. It reports whether the
// route was stopped.
func (m *Meter) Resume(route string) bool {
	m.mu.Lock()
	m.rollLocked(time.Now())
	if route == Organisation {
		was := m.org != nil
		if was {
			m.liftLocked()
		}
		m.unlock()
		return was
	}
	_, was := m.stopped[route]
	if was {
		delete(m.stopped, route)
		m.told = append(m.told, stopNote{route, false})
	}
	m.unlock()
	return was
}
