//go:build soak

package app_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestOutageOpensBreaker is a full outage of one path under 100 calls/s for
// 5 s, then 5 s of recovery: the breaker opens after min_requests, the fake
// then sees no call on that path until open_timeout passes, other paths
// keep working, the upstream sees at most 1.2 attempts per client call, and
// once the fake recovers the half-open probes close the breaker. The calls
// go one at a time, so a saturated machine may not make min_requests of
// them in 5 s: the outage lasts until it has made enough for the breaker
// to decide (bounded by a deadline, past which the test fails).
func TestOutageOpensBreaker(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of load")
	}
	t.Parallel()
	const openTimeout = 2 * time.Second
	s := newStack(t, nil, breakerSettings(20, openTimeout))
	down := dingtalktest.PathUserGet
	s.fake.SetChaos(dingtalktest.Chaos{Paths: []string{down}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})

	const rate = 100
	// The outage lasts at least minOutage and until enough calls on the
	// path were made (min_requests and a margin); the recovery then runs
	// for afterRecovery. A machine that cannot make them by deadline fails
	// the test.
	const minOutage, afterRecovery, deadline = 5 * time.Second, 5 * time.Second, 2 * time.Minute
	const enough = 25
	var recoverAt time.Duration // since begin
	begin := time.Now()
	var (
		clientCalls, fallbacks, otherFailures int
		opened                                time.Time
		hitsAtOpen, callsAtOpen               int
		hitsAtRecovery, callsAtRecovery       int
		recovered                             bool
		closedAgain                           time.Time
		lastUp                                bool // the last call on the path succeeded
		watching                              bool // the breaker is open, and hitsWhileOpen its count then
		hitsWhileOpen                         int
	)
	for i := 0; !recovered || time.Since(begin) < recoverAt+afterRecovery; i++ {
		if time.Since(begin) > deadline {
			t.Fatalf("%d calls on the path in %v: the machine is too slow to bring the breaker min_requests calls", clientCalls, deadline)
		}
		time.Sleep(time.Until(begin.Add(time.Duration(i) * time.Second / rate))) // pacing the load, not synchronisation
		if !recovered && time.Since(begin) >= minOutage && clientCalls >= enough {
			s.fake.SetChaos(dingtalktest.Chaos{})
			recovered, recoverAt = true, time.Since(begin)
			hitsAtRecovery, callsAtRecovery = s.fake.Hits(down), clientCalls
		}
		if i%5 == 4 { // another path keeps working throughout
			resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
			if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
				otherFailures++
			}
			continue
		}
		// This loop is the path's only client, one call at a time: while
		// its breaker is still open, no call of it can have passed since
		// the breaker opened. (The breaker's own state, not a clock: a VM
		// pause between its opening and this loop's noticing would make
		// a clock-based window run past open_timeout.)
		if s.app.Breakers().State(down) != gobreaker.StateOpen {
			watching = false
		} else if !watching { // (re)opened since the last look
			watching, hitsWhileOpen = true, s.fake.Hits(down)
		} else {
			if h := s.fake.Hits(down); h != hitsWhileOpen {
				t.Fatalf("the fake got %d calls on %s while its breaker was open", h-hitsWhileOpen, down)
			}
		}
		clientCalls++
		resp, _ := s.do(http.MethodPost, down, []byte(`{"userid":"u1"}`))
		if resp.Header.Get(proxy.HeaderFallback) == "" {
			watching = false // this call went through: a probe, or a closed breaker
		}
		switch resp.Header.Get(proxy.HeaderFallback) {
		case breaker.KindCircuitOpen:
			fallbacks++
			if opened.IsZero() {
				opened, hitsAtOpen, callsAtOpen = time.Now(), s.fake.Hits(down), clientCalls
				if clientCalls-1 < 20 {
					t.Errorf("breaker opened after %d calls, want >= min_requests (20)", clientCalls-1)
				}
			}
		case "":
			if recovered && resp.StatusCode == 200 && closedAgain.IsZero() {
				closedAgain = time.Now()
			}
		}
		lastUp = resp.StatusCode == 200 && resp.Header.Get(proxy.HeaderFallback) == ""
	}
	if opened.IsZero() {
		t.Fatalf("the breaker never opened (%d calls on the path during the %v outage)", callsAtRecovery, recoverAt.Round(time.Millisecond))
	}
	if otherFailures > 0 {
		t.Errorf("%d calls on a healthy path failed during the outage", otherFailures)
	}
	perCall := float64(s.fake.Hits(down)) / float64(clientCalls)
	t.Logf("outage: %d client calls, %d upstream attempts (%.2f per call over %v), %d fallbacks", clientCalls, s.fake.Hits(down), perCall,
		time.Since(begin).Round(time.Millisecond), fallbacks)
	t.Logf("before the breaker opened (%v): %d calls, %.2f upstream attempts per call", opened.Sub(begin).Round(time.Millisecond),
		callsAtOpen, float64(hitsAtOpen)/float64(callsAtOpen))
	t.Logf("open until the fake recovered: %d calls, %.2f upstream attempts per call (half-open probes)",
		callsAtRecovery-callsAtOpen, float64(hitsAtRecovery-hitsAtOpen)/float64(callsAtRecovery-callsAtOpen))
	t.Logf("first success %v after the fake recovered at %v (open_timeout %v)", closedAgain.Sub(begin.Add(recoverAt)).Round(time.Millisecond),
		recoverAt.Round(time.Millisecond), openTimeout)
	if perCall > 1.2 {
		t.Errorf("upstream attempts per client call = %.2f, want <= 1.2", perCall)
	}
	if closedAgain.IsZero() || !lastUp {
		t.Errorf("calls did not succeed again after the fake recovered (first success %v, the last call succeeded: %v)", closedAgain, lastUp)
	}
	if st := s.app.Breakers().State(down); st != gobreaker.StateClosed {
		t.Errorf("breaker state at the end = %v, want closed", st)
	}
}
