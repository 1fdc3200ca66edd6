package breaker_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/dingproxy/dingproxy/internal/breaker"
)

func TestRoutesBounded(t *testing.T) {
	t.Parallel()
	st := settings()
	st.MaxRoutes = 4
	configured := []string{"/a", "/b"}
	s := breaker.NewSet(st, configured, nil)
	if got, want := s.Len(), 3; got != want {
		t.Fatalf("Len() of a new Set = %d, want %d", got, want)
	}
	tests := []struct {
		path    string
		want    string
		wantLen int
	}{
		{"/a", "/a", 3},
		{"/x/1", "/x/1", 4},
		{"/x/1", "/x/1", 4},
		{"/x/2", "/x/2", 5}, // MaxRoutes + 1: full
		{"/x/3", breaker.Overflow, 5},
		{"/x/4", breaker.Overflow, 5},
		{"/b", "/b", 5},
		{"/x/2", "/x/2", 5},
		{"/x/3", breaker.Overflow, 5},
	}
	for _, tt := range tests {
		if got := s.Route(tt.path); got != tt.want {
			t.Errorf("Route(%q) = %q, want %q", tt.path, got, tt.want)
		}
		if got := s.Len(); got != tt.wantLen {
			t.Errorf("Len() after Route(%q) = %d, want %d", tt.path, got, tt.wantLen)
		}
	}
	for i := range 10_000 {
		p := fmt.Sprintf("/topapi/unknown/%d", i)
		if got := s.Route(p); got != breaker.Overflow {
			t.Fatalf("Route(%q) = %q, want %q", p, got, breaker.Overflow)
		}
		// The proxy asks with the route name; asking with the raw path
		// must not grow the set either.
		done, err := s.Allow(p)
		if err != nil {
			t.Fatalf("Allow(%q) = %v", p, err)
		}
		done(breaker.Success)
	}
	if got, want := s.Len(), st.MaxRoutes+1; got != want {
		t.Errorf("Len() after 10,000 paths = %d, want %d", got, want)
	}
}

func TestConfiguredRoutesBeyondMax(t *testing.T) {
	t.Parallel()
	st := settings()
	st.MaxRoutes = 1
	configured := []string{"/a", "/b", "/c"}
	s := breaker.NewSet(st, configured, nil)
	for _, r := range configured {
		if got := s.Route(r); got != r {
			t.Errorf("Route(%q) = %q, want itself", r, got)
		}
	}
	if got := s.Route("/d"); got != breaker.Overflow {
		t.Errorf("Route(/d) = %q, want %q", got, breaker.Overflow)
	}
	if got, want := s.Len(), len(configured)+1; got != want {
		t.Errorf("Len() = %d, want %d", got, want)
	}
}

func TestOverflowTripsAndRecovers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		st := settings()
		st.MaxRoutes = 2
		s := breaker.NewSet(st, []string{"/own"}, nil)
		call(t, s, s.Route("/also/own"), breaker.Success, 1)
		// Distinct paths beyond the cap add up on one breaker.
		for i := range int(st.MinRequests) {
			r := s.Route(fmt.Sprintf("/late/%d", i))
			if r != breaker.Overflow {
				t.Fatalf("Route(/late/%d) = %q, want %q", i, r, breaker.Overflow)
			}
			call(t, s, r, breaker.Failure, 1)
		}
		wantState(t, s, breaker.Overflow, gobreaker.StateOpen)
		refused(t, s, breaker.Overflow, circuitOpen(breaker.Overflow, st.OpenTimeout))
		// A path never seen before shares it, asked by route or by path.
		refused(t, s, s.Route("/late/new"), circuitOpen(breaker.Overflow, st.OpenTimeout))
		refused(t, s, "/late/newer", circuitOpen(breaker.Overflow, st.OpenTimeout))
		// Routes of their own keep working.
		call(t, s, "/own", breaker.Success, 1)
		call(t, s, "/also/own", breaker.Success, 1)

		time.Sleep(st.OpenTimeout + time.Millisecond)
		wantState(t, s, breaker.Overflow, gobreaker.StateHalfOpen)
		call(t, s, breaker.Overflow, breaker.Success, int(st.HalfOpenRequests))
		wantState(t, s, breaker.Overflow, gobreaker.StateClosed)
		call(t, s, s.Route("/late/0"), breaker.Success, 1)
	})
}

// TestConcurrentCalls has many goroutines on a few routes, the overflow one
// included, and checks every call was counted: each route has just one ended
// call to go to MinRequests, and opens on it.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	const (
		goroutines = 32
		each       = 60 // calls per goroutine and route: 20 of each verdict
	)
	st := settings()
	st.Window = time.Hour // real time passes here; nothing must age out
	st.MaxRoutes = 2
	st.MinRequests = goroutines*each*2/3 + 1 // the ended calls, plus one
	s := breaker.NewSet(st, []string{"/a"}, nil)
	routes := []string{"/a", "/b", "/c"} // /c is beyond the cap: overflow
	var (
		wg     sync.WaitGroup
		denied atomic.Int64
		paths  atomic.Int64
	)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				v := []breaker.Verdict{breaker.Success, breaker.Failure, breaker.Ignore}[(g+i)%3]
				for _, p := range routes {
					r := s.Route(p)
					done, err := s.Allow(r)
					if err != nil {
						denied.Add(1)
						continue
					}
					done(v)
				}
				// Distinct paths race for the last places, and beyond.
				s.Route(fmt.Sprintf("/distinct/%d/%d", g, i))
				paths.Add(1)
			}
		})
	}
	wg.Wait()
	if n := denied.Load(); n != 0 {
		t.Fatalf("%d calls refused, want 0", n)
	}
	if got, want := s.Len(), st.MaxRoutes+1; got != want {
		t.Errorf("Len() after %d distinct paths = %d, want %d", paths.Load(), got, want)
	}
	for _, p := range routes {
		r := s.Route(p)
		wantState(t, s, r, gobreaker.StateClosed)
		// ended = MinRequests-1, failures = half of them: one more failure
		// reaches both the minimum and the ratio, if no call was lost.
		call(t, s, r, breaker.Failure, 1)
		wantState(t, s, r, gobreaker.StateOpen)
	}
}

// TestConcurrentUpdate reloads settings that rebuild breakers while calls,
// lookups and bans run: the race detector must find nothing, and the Set
// must stay bounded.
func TestConcurrentUpdate(t *testing.T) {
	t.Parallel()
	st := settings()
	st.MaxRoutes = 2
	st.Window = time.Hour
	s := breaker.NewSet(st, []string{"/a"}, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 150 {
				for _, p := range []string{"/a", "/b", fmt.Sprintf("/c/%d/%d", g, i)} {
					r := s.Route(p)
					s.State(r)
					done, err := s.Allow(r)
					if err != nil {
						var oe *breaker.OpenError
						if !errors.As(err, &oe) {
							t.Errorf("Allow(%q) = %v, want *OpenError", r, err)
						}
						continue
					}
					done(breaker.Verdict(i % 3))
				}
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	for i := 0; ; i++ {
		select {
		case <-finished:
			if got, want := s.Len(), st.MaxRoutes+1; got != want {
				t.Errorf("Len() = %d, want %d", got, want)
			}
			return
		default:
		}
		next := st
		next.Window = time.Duration(i%2+1) * time.Hour
		next.OpenTimeout = time.Duration(i%3+1) * time.Second
		s.Update(next, []string{"/a"})
		if i%50 == 0 {
			s.Ban(time.Millisecond)
			s.Banned()
		}
		runtime.Gosched()
	}
}

// TestRebuildLosesNoCalls releases many first calls at once right after an
// Update that rebuilds the breakers: every one must land on the one new
// breaker, for a route and for the overflow breaker alike.
func TestRebuildLosesNoCalls(t *testing.T) {
	t.Parallel()
	const goroutines = 8
	for _, path := range []string{"/a", "/beyond/the/cap"} {
		for round := range 50 {
			st := settings()
			st.Window = time.Hour
			st.MaxRoutes = 1
			st.MinRequests = goroutines
			s := breaker.NewSet(st, []string{"/a"}, nil)
			route := s.Route(path)
			st.Window = 2 * time.Hour // rebuilds closed breakers
			s.Update(st, []string{"/a"})
			start := make(chan struct{})
			var wg sync.WaitGroup
			for range goroutines {
				wg.Go(func() {
					<-start
					done, err := s.Allow(route)
					if err != nil {
						t.Errorf("Allow(%q) = %v, want nil", route, err)
						return
					}
					done(breaker.Failure)
				})
			}
			close(start)
			wg.Wait()
			if got := s.State(route); got != gobreaker.StateOpen {
				t.Fatalf("round %d: State(%q) after %d failures = %v, want open", round, route, goroutines, got)
			}
		}
	}
}
