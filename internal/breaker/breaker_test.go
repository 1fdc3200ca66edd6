package breaker_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/breaker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// settings are the defaults of these tests: ten ended calls at 50 %
// failures open a breaker, for 15 s; a 10 s window of 1 s buckets.
func settings() breaker.Settings {
	return breaker.Settings{
		FailureRatio:     0.5,
		MinRequests:      10,
		Window:           10 * time.Second,
		OpenTimeout:      15 * time.Second,
		HalfOpenRequests: 3,
	}
}

// makeCalls makes n calls on route, each ending with v; every one must be allowed.
func makeCalls(t *testing.T, s *breaker.Set, route string, v breaker.Verdict, n int) {
	t.Helper()
	for i := range n {
		done, err := s.Allow(route)
		if err != nil {
			t.Fatalf("Allow(%q) call %d of %d = %v, want nil", route, i+1, n, err)
		}
		done(v)
	}
}

// allow asks for one call on route that must be allowed and returns its done.
func allow(t *testing.T, s *breaker.Set, route string) func(breaker.Verdict) bool {
	t.Helper()
	done, err := s.Allow(route)
	if err != nil {
		t.Fatalf("Allow(%q) = %v, want nil", route, err)
	}
	return done
}

// refused asks for a call on route that must be refused with want.
func refused(t *testing.T, s *breaker.Set, route string, want breaker.OpenError) {
	t.Helper()
	done, err := s.Allow(route)
	if err == nil {
		done(breaker.Ignore)
		t.Fatalf("Allow(%q) = nil, want %+v", route, want)
	}
	var oe *breaker.OpenError
	if !errors.As(err, &oe) {
		t.Fatalf("Allow(%q) = %T %v, want *OpenError", route, err, err)
	}
	if !errors.Is(err, gobreaker.ErrOpenState) {
		t.Errorf("errors.Is(Allow(%q), gobreaker.ErrOpenState) = false, want true", route)
	}
	if *oe != want {
		t.Errorf("Allow(%q) = %+v, want %+v", route, *oe, want)
	}
}

func circuitOpen(route string, retryAfter time.Duration) breaker.OpenError {
	return breaker.OpenError{Route: route, Kind: breaker.KindCircuitOpen, RetryAfter: retryAfter}
}

func ipBan(route string, retryAfter time.Duration) breaker.OpenError {
	return breaker.OpenError{Route: route, Kind: breaker.KindIPBan, RetryAfter: retryAfter}
}

func wantState(t *testing.T, s *breaker.Set, route string, want breaker.State) {
	t.Helper()
	if got := s.State(route); got != want {
		t.Fatalf("State(%q) = %v, want %v", route, got, want)
	}
}

// trip opens route's breaker with MinRequests failures.
func trip(t *testing.T, s *breaker.Set, route string, st breaker.Settings) {
	t.Helper()
	makeCalls(t, s, route, breaker.Failure, int(st.MinRequests))
	wantState(t, s, route, gobreaker.StateOpen)
}

type step struct {
	v breaker.Verdict
	n int
}

func TestTripNeedsMinRequestsAndRatio(t *testing.T) {
	t.Parallel()
	const (
		S = breaker.Success
		F = breaker.Failure
		I = breaker.Ignore
	)
	// MinRequests 10, FailureRatio 0.5. The last step is the one that may
	// trip: a breaker decides when a call fails.
	tests := []struct {
		name  string
		steps []step
		want  breaker.State
	}{
		{"nine failures are below the minimum", []step{{F, 9}}, gobreaker.StateClosed},
		{"ten failures", []step{{F, 10}}, gobreaker.StateOpen},
		{"ratio exactly reached", []step{{S, 5}, {F, 5}}, gobreaker.StateOpen},
		{"ratio just missed", []step{{S, 6}, {F, 4}}, gobreaker.StateClosed},
		{"ratio missed with many calls", []step{{S, 51}, {F, 49}}, gobreaker.StateClosed},
		{"ratio reached with many calls", []step{{S, 50}, {F, 50}}, gobreaker.StateOpen},
		{"ignored calls do not make up the minimum", []step{{I, 50}, {F, 9}, {I, 50}}, gobreaker.StateClosed},
		{"ignored calls do not dilute the ratio", []step{{S, 5}, {I, 100}, {F, 5}}, gobreaker.StateOpen},
		{"ignored calls between failures", []step{{F, 3}, {I, 7}, {F, 3}, {I, 7}, {F, 4}}, gobreaker.StateOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := breaker.NewSet(settings(), nil, nil)
				const route = "/topapi/v2/user/get"
				var prefix breaker.State
				for i, st := range tt.steps {
					if i == len(tt.steps)-1 {
						// All but the very last call of the sequence.
						makeCalls(t, s, route, st.v, st.n-1)
						prefix = s.State(route)
						makeCalls(t, s, route, st.v, 1)
						break
					}
					makeCalls(t, s, route, st.v, st.n)
				}
				if prefix != gobreaker.StateClosed {
					t.Errorf("State before the last call = %v, want closed", prefix)
				}
				wantState(t, s, route, tt.want)
			})
		})
	}
}

func TestFailuresAgeOutOfWindow(t *testing.T) {
	t.Parallel()
	const route = "/topapi/message/corpconversation/asyncsend_v2"
	t.Run("inside the window they count", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s := breaker.NewSet(settings(), nil, nil)
			makeCalls(t, s, route, breaker.Failure, 9)
			time.Sleep(9500 * time.Millisecond)
			makeCalls(t, s, route, breaker.Failure, 1)
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("a window later they are gone", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s := breaker.NewSet(settings(), nil, nil)
			makeCalls(t, s, route, breaker.Failure, 9)
			time.Sleep(10 * time.Second)
			makeCalls(t, s, route, breaker.Failure, 9)
			wantState(t, s, route, gobreaker.StateClosed)
		})
	})
	t.Run("the window rolls bucket by bucket", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s := breaker.NewSet(settings(), nil, nil)
			makeCalls(t, s, route, breaker.Failure, 5) // t=0
			time.Sleep(6 * time.Second)
			makeCalls(t, s, route, breaker.Failure, 4) // t=6
			time.Sleep(5 * time.Second)
			// t=11: the five of t=0 are out, the four of t=6 are in. A
			// breaker that never forgot would open on the 6th call here, a
			// fixed window reset at t=10 would hold only these.
			makeCalls(t, s, route, breaker.Failure, 5)
			wantState(t, s, route, gobreaker.StateClosed)
			makeCalls(t, s, route, breaker.Failure, 1)
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("successes age out too", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s := breaker.NewSet(settings(), nil, nil)
			makeCalls(t, s, route, breaker.Success, 100)
			time.Sleep(10 * time.Second)
			makeCalls(t, s, route, breaker.Failure, 10)
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
}

func TestIgnoreNeverOpens(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		st := settings()
		st.MinRequests = 1
		s := breaker.NewSet(st, nil, nil)
		const route = "/topapi/v2/user/get"
		// Business errors, throttling and cancellations, 100 % of calls,
		// spread over several windows.
		for range 12 {
			makeCalls(t, s, route, breaker.Ignore, 250)
			wantState(t, s, route, gobreaker.StateClosed)
			time.Sleep(time.Second)
		}
		// The counts are still live: with MinRequests 1 one failure opens.
		makeCalls(t, s, route, breaker.Failure, 1)
		wantState(t, s, route, gobreaker.StateOpen)
	})
}

func TestOpenRetryAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		st := settings()
		s := breaker.NewSet(st, nil, nil)
		const route, other = "/topapi/v2/user/get", "/topapi/v2/department/get"
		trip(t, s, route, st)
		// Remaining open time, rounded, never below 1 s.
		for _, tt := range []struct {
			at   time.Duration // since it opened
			want time.Duration
		}{
			{0, 15 * time.Second},
			{4400 * time.Millisecond, 11 * time.Second},
			{4600 * time.Millisecond, 10 * time.Second},
			{13 * time.Second, 2 * time.Second},
			{14300 * time.Millisecond, time.Second},
			{14900 * time.Millisecond, time.Second},
			{15 * time.Second, time.Second}, // open until strictly after the timeout
		} {
			time.Sleep(tt.at - elapsed(t))
			refused(t, s, route, circuitOpen(route, tt.want))
			wantState(t, s, route, gobreaker.StateOpen)
		}
		// Other routes are not affected.
		makeCalls(t, s, other, breaker.Success, 1)
		time.Sleep(time.Millisecond)
		wantState(t, s, route, gobreaker.StateHalfOpen)
	})
}

// elapsed is the fake time since the bubble started.
func elapsed(t *testing.T) time.Duration {
	t.Helper()
	return time.Since(bubbleStart)
}

// bubbleStart is where every synctest bubble's clock starts.
var bubbleStart = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func TestHalfOpen(t *testing.T) {
	t.Parallel()
	const route = "/topapi/v2/user/get"
	// open returns a Set whose route breaker has just turned half-open.
	open := func(t *testing.T, st breaker.Settings) *breaker.Set {
		t.Helper()
		s := breaker.NewSet(st, nil, nil)
		trip(t, s, route, st)
		time.Sleep(st.OpenTimeout + time.Millisecond)
		wantState(t, s, route, gobreaker.StateHalfOpen)
		return s
	}
	t.Run("exactly the probes go, then it closes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := open(t, st)
			var probes []func(breaker.Verdict) bool
			for range st.HalfOpenRequests {
				probes = append(probes, allow(t, s, route))
			}
			for range 5 {
				refused(t, s, route, circuitOpen(route, time.Second))
			}
			for i, done := range probes {
				wantState(t, s, route, gobreaker.StateHalfOpen)
				done(breaker.Success)
				if i < len(probes)-1 {
					// Successes do not free a probe slot.
					refused(t, s, route, circuitOpen(route, time.Second))
				}
			}
			wantState(t, s, route, gobreaker.StateClosed)
			makeCalls(t, s, route, breaker.Success, 50)
			// Fresh counts: nine failures are below the minimum again.
			makeCalls(t, s, route, breaker.Failure, 9)
			wantState(t, s, route, gobreaker.StateClosed)
		})
	})
	t.Run("one probe failure re-opens it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := open(t, st)
			var probes []func(breaker.Verdict) bool
			for range st.HalfOpenRequests {
				probes = append(probes, allow(t, s, route))
			}
			probes[0](breaker.Success)
			probes[1](breaker.Failure)
			wantState(t, s, route, gobreaker.StateOpen)
			probes[2](breaker.Success) // late, from the half-open period
			wantState(t, s, route, gobreaker.StateOpen)
			refused(t, s, route, circuitOpen(route, st.OpenTimeout))
			time.Sleep(st.OpenTimeout - 2*time.Second)
			refused(t, s, route, circuitOpen(route, 2*time.Second))
			time.Sleep(2*time.Second + time.Millisecond)
			wantState(t, s, route, gobreaker.StateHalfOpen)
			makeCalls(t, s, route, breaker.Success, int(st.HalfOpenRequests))
			wantState(t, s, route, gobreaker.StateClosed)
		})
	})
	t.Run("an ignored probe frees its slot", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := open(t, st)
			a, b, c := allow(t, s, route), allow(t, s, route), allow(t, s, route)
			refused(t, s, route, circuitOpen(route, time.Second))
			a(breaker.Ignore)
			d := allow(t, s, route)
			refused(t, s, route, circuitOpen(route, time.Second))
			b(breaker.Success)
			c(breaker.Success)
			wantState(t, s, route, gobreaker.StateHalfOpen)
			d(breaker.Success)
			wantState(t, s, route, gobreaker.StateClosed)
		})
	})
	t.Run("one probe", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			st.HalfOpenRequests = 1
			s := open(t, st)
			done := allow(t, s, route)
			refused(t, s, route, circuitOpen(route, time.Second))
			done(breaker.Success)
			wantState(t, s, route, gobreaker.StateClosed)
		})
	})
}

func TestBan(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		st := settings()
		st.Window = time.Hour // counts must not age out while banned
		st.OpenTimeout = 10 * time.Minute
		core, logs := observer.New(zap.InfoLevel)
		const open, counted, idle = "/topapi/v2/user/get", "/topapi/v2/department/get", "/gettoken"
		s := breaker.NewSet(st, zap.New(core), nil)
		trip(t, s, open, st)
		makeCalls(t, s, counted, breaker.Failure, int(st.MinRequests)-1)
		makeCalls(t, s, "_other", breaker.Success, 1)
		if got := s.Banned(); got != 0 {
			t.Fatalf("Banned() before any ban = %v, want 0", got)
		}
		lenBefore := s.Len()

		s.Ban(time.Now().Add(5 * time.Minute))
		everyRoute := []string{open, counted, idle, "_other", "/never/seen", "/x/1"}
		for _, r := range everyRoute {
			refused(t, s, r, ipBan(r, 5*time.Minute))
		}
		// Refused calls make no breakers.
		if got := s.Len(); got != lenBefore {
			t.Errorf("Len() while banned = %d, want %d", got, lenBefore)
		}
		if got, want := s.Banned(), 5*time.Minute; got != want {
			t.Errorf("Banned() = %v, want %v", got, want)
		}

		time.Sleep(2*time.Minute + 400*time.Millisecond)
		s.Ban(time.Now().Add(time.Minute)) // shorter: must not cut the ban short
		if got, want := s.Banned(), 2*time.Minute+59600*time.Millisecond; got != want {
			t.Errorf("Banned() after a shorter Ban = %v, want %v", got, want)
		}
		for _, r := range everyRoute {
			refused(t, s, r, ipBan(r, 3*time.Minute))
		}
		s.Ban(time.Now().Add(4 * time.Minute)) // longer: extends it
		if got, want := s.Banned(), 4*time.Minute; got != want {
			t.Errorf("Banned() after a longer Ban = %v, want %v", got, want)
		}
		time.Sleep(4*time.Minute - 300*time.Millisecond)
		refused(t, s, "/never/seen", ipBan("/never/seen", time.Second))

		time.Sleep(300 * time.Millisecond)
		if got := s.Banned(); got != 0 {
			t.Errorf("Banned() after the ban = %v, want 0", got)
		}
		if got := len(logs.FilterMessageSnippet("banned").All()); got != 2 {
			t.Errorf("%d ban log lines, want 2 (the shorter Ban changes nothing)", got)
		}
		// The route breakers kept their own state: open is still open, with
		// its own remaining time (opened 6m0.4s ago)...
		refused(t, s, open, circuitOpen(open, 4*time.Minute))
		// ...counted still holds nine failures, so one more opens it...
		makeCalls(t, s, counted, breaker.Failure, 1)
		wantState(t, s, counted, gobreaker.StateOpen)
		// ...and the rest just work.
		for _, r := range []string{idle, "_other", "/never/seen"} {
			makeCalls(t, s, r, breaker.Success, 1)
		}
		// The two routes called for the first time got their breakers now.
		if got, want := s.Len(), lenBefore+2; got != want {
			t.Errorf("Len() = %d, want %d", got, want)
		}
	})
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	const route, other = "/topapi/v2/user/get", "/topapi/v2/department/get"
	t.Run("ratio applies at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := breaker.NewSet(st, nil, nil)
			makeCalls(t, s, route, breaker.Success, 7)
			makeCalls(t, s, route, breaker.Failure, 3)
			st.FailureRatio = 0.3
			s.Update(st)
			makeCalls(t, s, route, breaker.Failure, 1) // 4/11 >= 0.3, not 0.5
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("minimum applies at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := breaker.NewSet(st, nil, nil)
			makeCalls(t, s, route, breaker.Failure, 4)
			st.MinRequests = 5
			s.Update(st)
			makeCalls(t, s, route, breaker.Failure, 1)
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("open route stays open across a ratio change", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := breaker.NewSet(st, nil, nil)
			trip(t, s, route, st)
			time.Sleep(5 * time.Second)
			st.FailureRatio = 0.9
			s.Update(st)
			refused(t, s, route, circuitOpen(route, 10*time.Second))
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("new window rebuilds a closed breaker", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := breaker.NewSet(st, nil, nil)
			makeCalls(t, s, route, breaker.Failure, 9)
			makeCalls(t, s, other, breaker.Failure, 9) // observed path
			st.Window = 20 * time.Second
			s.Update(st)
			for _, r := range []string{route, other} {
				// Fresh counts: the nine are gone.
				makeCalls(t, s, r, breaker.Failure, 1)
				wantState(t, s, r, gobreaker.StateClosed)
			}
			// The new window: failures 15 s apart still add up.
			time.Sleep(15 * time.Second)
			makeCalls(t, s, route, breaker.Failure, 9)
			wantState(t, s, route, gobreaker.StateOpen)
		})
	})
	t.Run("new timeout waits for an open breaker's own", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			st := settings()
			s := breaker.NewSet(st, nil, nil)
			trip(t, s, route, st)
			time.Sleep(5 * time.Second)
			st.OpenTimeout = time.Minute
			st.HalfOpenRequests = 1
			s.Update(st)
			refused(t, s, route, circuitOpen(route, 10*time.Second))
			time.Sleep(10*time.Second + time.Millisecond)
			wantState(t, s, route, gobreaker.StateHalfOpen)
			// Still its old self while half-open: three probes.
			makeCalls(t, s, route, breaker.Success, 3)
			wantState(t, s, route, gobreaker.StateClosed)
			// Its next window is a new breaker, with the new timeout.
			trip(t, s, route, st)
			refused(t, s, route, circuitOpen(route, time.Minute))
		})
	})
}

type transition struct {
	Route    string
	From, To string
	Level    zapcore.Level
	Counts   string
}

func TestTransitionsLoggedOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		st := settings()
		core, logs := observer.New(zap.InfoLevel)
		const route = "/topapi/v2/user/get"
		rec := &recorder{}
		s := breaker.NewSet(st, zap.New(core), rec)
		poll := func() { // many looks must not log more
			for range 5 {
				s.State(route)
				s.Check(route)
			}
		}
		makeCalls(t, s, route, breaker.Success, 4)
		makeCalls(t, s, route, breaker.Ignore, 3)
		makeCalls(t, s, route, breaker.Failure, 6) // 6/10: opens
		poll()
		refused(t, s, route, circuitOpen(route, st.OpenTimeout))
		time.Sleep(st.OpenTimeout + time.Millisecond)
		poll()                                     // open -> half-open
		allow(t, s, route)(breaker.Failure)        // half-open -> open
		poll()                                     //
		time.Sleep(st.OpenTimeout + time.Second)   // open -> half-open on next look
		makeCalls(t, s, route, breaker.Success, 3) // half-open -> closed
		poll()
		makeCalls(t, s, "/other", breaker.Failure, 5) // another route, no transition

		o, h, c := "open", "half-open", "closed"
		want := []transition{
			{route, c, o, zapcore.WarnLevel, "failures=6 successes=4"},
			{route, o, h, zapcore.InfoLevel, ""},
			{route, h, o, zapcore.WarnLevel, ""},
			{route, o, h, zapcore.InfoLevel, ""},
			{route, h, c, zapcore.InfoLevel, ""},
		}
		var logged []transition
		for _, e := range logs.All() {
			m := e.ContextMap()
			tr := transition{Level: e.Level}
			tr.Route, _ = m["route"].(string)
			tr.From, _ = m["from"].(string)
			tr.To, _ = m["to"].(string)
			if f, ok := m["failures"]; ok {
				tr.Counts = fmt.Sprintf("failures=%v successes=%v", f, m["successes"])
			}
			if tr.To == o && e.Message != "breaker opened" {
				t.Errorf("opening logged as %q, want %q", e.Message, "breaker opened")
			}
			logged = append(logged, tr)
		}
		if diff := cmp.Diff(want, logged); diff != "" {
			t.Errorf("logged transitions (-want +got):\n%s", diff)
		}
		for i := range want {
			want[i].Level, want[i].Counts = 0, ""
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if diff := cmp.Diff(want, rec.seen); diff != "" {
			t.Errorf("observed transitions (-want +got):\n%s", diff)
		}
	})
}

// recorder is a breaker.Observer that keeps the transitions it is told of.
type recorder struct {
	mu   sync.Mutex
	seen []transition
}

func (r *recorder) BreakerChanged(route string, from, to breaker.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, transition{Route: route, From: from.String(), To: to.String()})
}
