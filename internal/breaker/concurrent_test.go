package breaker_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/dingproxy/dingproxy/internal/breaker"
)

// TestConcurrentCalls has many goroutines on a few routes and checks every
// call was counted: each route has just one ended call to go to
// MinRequests, and opens on it.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	const (
		goroutines = 32
		each       = 60 // calls per goroutine and route: 20 of each verdict
	)
	st := settings()
	st.Window = time.Hour                    // real time passes here; nothing must age out
	st.MinRequests = goroutines*each*2/3 + 1 // the ended calls, plus one
	s := breaker.NewSet(st, nil, nil)
	routes := []string{"/a", "/b", "/_other"}
	var (
		wg     sync.WaitGroup
		denied atomic.Int64
	)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				v := []breaker.Verdict{breaker.Success, breaker.Failure, breaker.Ignore}[(g+i)%3]
				for _, r := range routes {
					done, err := s.Allow(r)
					if err != nil {
						denied.Add(1)
						continue
					}
					done(v)
				}
			}
		})
	}
	wg.Wait()
	if n := denied.Load(); n != 0 {
		t.Fatalf("%d calls refused, want 0", n)
	}
	if got, want := s.Len(), len(routes); got != want {
		t.Errorf("Len() = %d, want %d", got, want)
	}
	for _, r := range routes {
		wantState(t, s, r, gobreaker.StateClosed)
		// ended = MinRequests-1, failures = half of them: one more failure
		// reaches both the minimum and the ratio, if no call was lost.
		makeCalls(t, s, r, breaker.Failure, 1)
		wantState(t, s, r, gobreaker.StateOpen)
	}
}

// TestConcurrentUpdate reloads settings that rebuild breakers while calls,
// lookups and bans run: the race detector must find nothing, and the Set
// holds one breaker per route it was asked about.
func TestConcurrentUpdate(t *testing.T) {
	t.Parallel()
	st := settings()
	st.Window = time.Hour
	s := breaker.NewSet(st, nil, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 150 {
				for _, r := range []string{"/a", "/b", fmt.Sprintf("/c/%d/%d", g, i%4)} {
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
			if got, most := s.Len(), 2+8*4; got > most {
				t.Errorf("Len() = %d, want at most the %d routes asked about", got, most)
			}
			return
		default:
		}
		next := st
		next.Window = time.Duration(i%2+1) * time.Hour
		next.OpenTimeout = time.Duration(i%3+1) * time.Second
		s.Update(next)
		if i%50 == 0 {
			s.Ban(time.Now().Add(time.Millisecond))
			s.Banned()
		}
		runtime.Gosched()
	}
}

// TestRebuildLosesNoCalls releases many first calls at once right after an
// Update that rebuilds the breakers: every one must land on the one new
// breaker.
func TestRebuildLosesNoCalls(t *testing.T) {
	t.Parallel()
	const goroutines = 8
	for _, route := range []string{"/a", "/_other"} {
		for round := range 50 {
			st := settings()
			st.Window = time.Hour
			st.MinRequests = goroutines
			s := breaker.NewSet(st, nil, nil)
			makeCalls(t, s, route, breaker.Success, 0) // made, not counted
			s.State(route)
			st.Window = 2 * time.Hour // rebuilds closed breakers
			s.Update(st)
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
