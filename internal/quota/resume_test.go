package quota

import (
	"errors"
	"strconv"
	"testing"
	"time"
)

// A stop heard from the fleet ends at its end (probed then, not an hour
// later), a resumption lifts it, and a flood of stops heard stops at most
// MaxHeard routes.
func TestStopsHeard(t *testing.T) {
	m := New(Settings{}, nil)
	if !m.StopUntil("/a", time.Now().Add(2*time.Second)) || !m.IsStopped("/a") {
		t.Fatal("StopUntil did not stop the route")
	}
	var qe *Error
	if err := m.Admit("/a", true); !errors.As(err, &qe) || qe.RetryAfter > 2*time.Second {
		t.Errorf("Admit = %v, want a refusal until the stop's end", err)
	}
	if m.StopUntil("/b", time.Now().Add(-time.Second)) || m.IsStopped("/b") {
		t.Error("a stop that has ended stopped the route")
	}
	if !m.Resume("/a") || m.IsStopped("/a") || m.Admit("/a", true) != nil {
		t.Error("Resume did not lift the stop")
	}
	if m.Resume("/a") {
		t.Error("Resume of a route not stopped reported a change")
	}
	for i := range 3 * MaxHeard {
		m.StopUntil("/junk/"+strconv.Itoa(i), time.Now().Add(time.Hour))
	}
	if n := m.State().Stopped; n != MaxHeard {
		t.Errorf("%d routes stopped after %d stops heard, want MaxHeard (%d)", n, 3*MaxHeard, MaxHeard)
	}
}

// The organisation's stop heard from the fleet stops every metered route;
// its resumption lifts them all.
func TestOrganisationStopHeard(t *testing.T) {
	m := New(Settings{}, nil)
	m.StopUntil("/a", time.Now().Add(time.Hour))
	if !m.StopUntil(Organisation, time.Now().Add(time.Hour)) || !m.IsStopped(Organisation) {
		t.Fatal("StopUntil(Organisation) did not stop the organisation")
	}
	var qe *Error
	if err := m.Admit("/b", true); !errors.As(err, &qe) || !qe.Organisation {
		t.Errorf("a metered call: %v, want the organisation's refusal", err)
	}
	if m.Admit("/b", false) != nil {
		t.Error("a call the list calls free was refused")
	}
	if !m.Resume(Organisation) || m.IsStopped(Organisation) || m.IsStopped("/a") {
		t.Error("Resume(Organisation) did not lift every stop")
	}
}
