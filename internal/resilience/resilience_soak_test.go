//go:build soak

package resilience

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// freshRuns bounds the runs of a check that needs the machine to keep up:
// a run too slow for the check to mean anything is made again with fresh
// load (a fresh fake and fresh dingproxies), and after this many such runs
// the check fails rather than pass unchecked.
const freshRuns = 3

// TestInvariants runs a shortened benchmark and checks what does not depend
// on pacing: dingproxy never duplicates a send, beats a plain client on
// transient read errors, rides out revoked tokens, and costs DingTalk at
// most what the retry budget allows in an outage, and at most 1.2 attempts
// per call with its breakers open. Where a check needs calls faster than a
// loaded machine makes them, the run is made again (freshRuns). The
// throttle scenario's figures are logged, not checked; the pacing group's
// are checked in TestPacingTargets.
func TestInvariants(t *testing.T) {
	if testing.Short() {
		t.Skip("runs about half a minute of load")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// A run's failed calls through dingproxy, and when the fake's ticks
	// (token revocations) ran.
	type span struct{ from, to time.Time }
	type trace struct {
		unrepeated   int // failed calls through dingproxy not repeated
		failed, tick []span
	}
	run := func(t *testing.T, name string, scale float64, modes ...bench.Mode) (map[bench.Mode]scenario.Row, *trace) {
		t.Helper()
		// Keep the first failed answers through dingproxy, to say why.
		var mu sync.Mutex
		var failed []string
		tr := &trace{}
		o := Options{Only: []string{name}, Modes: modes, Scale: scale}
		o.onCall = func(_ string, m bench.Mode, oc bench.Outcome) {
			if m != bench.Proxy || oc.OK {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if oc.Attempts < 2 {
				tr.unrepeated++
			}
			tr.failed = append(tr.failed, span{oc.Start, oc.End()})
			if len(failed) < 10 {
				failed = append(failed, fmt.Sprintf("%s %s: %d attempts, %v: %s", oc.Req.Method, oc.Req.Path, oc.Attempts, oc.Latency.Round(time.Millisecond), oc.Last))
			}
		}
		o.onTick = func(_ string, m bench.Mode, from, to time.Time) {
			if m == bench.Proxy {
				mu.Lock()
				defer mu.Unlock()
				tr.tick = append(tr.tick, span{from, to})
			}
		}
		rows, err := Run(ctx, o)
		mu.Lock()
		defer mu.Unlock()
		if len(failed) > 0 {
			t.Logf("%s: failed calls through dingproxy (first %d):\n  %s", name, len(failed), strings.Join(failed, "\n  "))
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var buf bytes.Buffer
		if err := PrintTable(&buf, rows); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s at scale %.2f:\n%s", name, scale, buf.String())
		out := make(map[bench.Mode]scenario.Row)
		for _, r := range rows {
			if r.Calls == 0 {
				t.Fatalf("%s, %s: no calls made", name, r.Mode)
			}
			if r.Mode == bench.Proxy && r.Duplicates != 0 {
				t.Errorf("%s: dingproxy duplicated %d sends", name, r.Duplicates)
			}
			out[r.Mode] = r
		}
		return out, tr
	}

	t.Run(scenario.Transient, func(t *testing.T) {
		rs, _ := run(t, scenario.Transient, 0.4, bench.Direct, bench.Proxy)
		direct, proxy := rs[bench.Direct], rs[bench.Proxy]
		if direct.Success() > 0.9 {
			t.Errorf("plain client: %.1f%% ok: the faults were not injected", 100*direct.Success())
		}
		if proxy.Success() <= direct.Success() {
			t.Errorf("reads through dingproxy %.1f%% ok, plain client %.1f%%: want dingproxy ahead",
				100*proxy.Success(), 100*direct.Success())
		}
	})
	t.Run(scenario.Resets, func(t *testing.T) {
		rs, _ := run(t, scenario.Resets, 0.3, bench.SDKRetry, bench.Proxy)
		if rs[bench.SDKRetry].Duplicates == 0 {
			t.Errorf("the SDK retry loop duplicated no send: resets after execution were not injected")
		}
		// dingproxy's duplicates are checked in run.
	})
	t.Run(scenario.Tokens, func(t *testing.T) {
		// Full scale: tokens revoked every 2 s. A call can fail only by
		// meeting two revocations: its first token was revoked, and so was
		// the fresh one it was repeated with (SPEC allows one repeat). That
		// takes a call in flight across a revocation, which on a loaded CI
		// machine (calls of 2 s and more) is not rare; so what every run
		// checks is that every failure was refreshed and repeated once and
		// ran while a token was revoked, and the share that succeeds is
		// checked on a run whose calls were fast (median under 500 ms).
		const fast = 500 * time.Millisecond
		for try := 1; ; try++ {
			rs, tr := run(t, scenario.Tokens, 1, bench.Direct, bench.Proxy)
			direct, proxy := rs[bench.Direct], rs[bench.Proxy]
			if len(tr.tick) == 0 {
				t.Fatalf("no token was revoked")
			}
			if tr.unrepeated > 0 {
				t.Errorf("%d calls through dingproxy failed after one attempt: a rejected token was not refreshed and repeated", tr.unrepeated)
			}
			var unexplained []string
			for _, f := range tr.failed {
				met := false
				for _, k := range tr.tick {
					met = met || (k.to.After(f.from) && k.from.Before(f.to))
				}
				if !met {
					unexplained = append(unexplained, f.from.Format("15:04:05.000")+" to "+f.to.Format("15:04:05.000"))
				}
			}
			if len(unexplained) > 0 {
				t.Errorf("%d calls through dingproxy failed though no token was revoked while they ran: a repeat did not get a fresh token (first: %s)",
					len(unexplained), unexplained[0])
			}
			if direct.Success() >= proxy.Success() {
				t.Errorf("direct client %.1f%% ok with tokens revoked: want below dingproxy's %.1f%%",
					100*direct.Success(), 100*proxy.Success())
			}
			if proxy.P50 < fast {
				if proxy.Success() < 0.85 {
					t.Errorf("through dingproxy %d of %d calls ok with tokens revoked (median call %v), want >= 85%%", proxy.OK, proxy.Calls, proxy.P50)
				}
				return
			}
			if try == freshRuns {
				t.Fatalf("median call through dingproxy %v, not under %v, in %d runs: the machine is too slow for the share of calls that succeed to be checked", proxy.P50, fast, try)
			}
			t.Logf("median call through dingproxy %v, not under %v: run again with fresh load", proxy.P50, fast)
		}
	})
	t.Run(scenario.Outages, func(t *testing.T) {
		// The breakers open once each has seen min_requests (20) calls
		// end; when calls take seconds (a loaded CI machine), the outage's
		// calls on a route can all be in flight before that, and the run
		// says nothing of the breakers. Such a run is made again.
		for try := 1; ; try++ {
			rs, _ := run(t, scenario.Outages, 0.5, bench.Proxy)
			proxy := rs[bench.Proxy]
			// Whatever the machine's speed, retries stay within the retry
			// budget over the run (dingproxy runs on the defaults here).
			b := config.Default().Retry.Budget
			most := 1 + retry.MaxRetries(b.Ratio, b.MinPerSecond, proxy.Calls, proxy.Elapsed)/float64(proxy.Calls)
			if got := proxy.AttemptsPerCall(); got > most {
				t.Errorf("dingproxy: %.2f upstream attempts per call over the outage (%v), want <= %.2f (the retry budget)", got, proxy.Elapsed.Round(time.Millisecond), most)
			}
			if proxy.CallAttempts != proxy.UpstreamAttempts {
				t.Logf("attempts counted per call %d, by the fake %d", proxy.CallAttempts, proxy.UpstreamAttempts)
			}
			if proxy.P50 < time.Second {
				if got := proxy.AttemptsPerCall(); got > 1.2 {
					t.Errorf("dingproxy: %.2f upstream attempts per call over the outage, want <= 1.2", got)
				}
				if proxy.Fallbacks == 0 {
					t.Errorf("dingproxy answered no fallback during the outage")
				}
				return
			}
			if try == freshRuns {
				t.Fatalf("median call %v in %d runs: the machine is too slow for the breakers to open within the outage, and their part was not checked", proxy.P50, try)
			}
			t.Logf("median call %v: the breakers could not open in time; run again with fresh load", proxy.P50)
		}
	})
	t.Run(scenario.Throttle, func(t *testing.T) {
		// Pacing-dependent: figures are logged for now.
		rs, _ := run(t, scenario.Throttle, 0.3, bench.SDKRetry, bench.Proxy)
		for _, m := range []bench.Mode{bench.SDKRetry, bench.Proxy} {
			r := rs[m]
			t.Logf("%s: %.1f%% ok, %.1f throttled per 100 attempts (%.1f after warm-up), %.2f attempts per call",
				m, 100*r.Success(), r.ThrottledPer100(), r.ThrottledPer100After(), r.AttemptsPerCall())
		}
	})
}

// TestPacingTargets runs the pacing group (the unknown limit and the fleet
// at full scale, the robots at a fifth: their alerts are still within a
// robot's minute) and checks its targets: counts and ratios of DingTalk's
// answers, not how long anything took. "At once" is checked as under 5 s
// (a robot's next turn is 40 s and more away, a queued call would wait its
// 30 s). The unknown limit's throttles after the warm-up (at most 1 per
// 100) hold on an idle machine but were seen at 1.1 with two busy loops on
// two cores: a run that misses it is made again alone, with fresh load, up
// to freshRuns runs in all, and the target fails if every run missed it.
func TestPacingTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("runs about 40 s of load")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	modes := []bench.Mode{bench.Direct, bench.Proxy}
	// Three groups side by side, each against fakes of its own.
	groups := []Options{
		{Only: []string{scenario.Unknown}, Scale: 1},
		{Only: []string{scenario.Fleet}, Scale: 1},
		{Only: []string{scenario.Robot, scenario.Robots}, Scale: 0.2},
	}
	results := make([][]scenario.Row, len(groups))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, o := range groups {
		o.Modes = modes
		wg.Go(func() { results[i], errs[i] = Run(ctx, o) })
	}
	wg.Wait()
	var rows []scenario.Row
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%v: %v", groups[i].Only, err)
		}
		rows = append(rows, results[i]...)
	}
	var buf bytes.Buffer
	PrintTable(&buf, rows)
	buf.WriteString("\n")
	PrintTargets(&buf, rows)
	t.Logf("the pacing group:\n%s", buf.String())

	get := func(rows []scenario.Row, name string, m bench.Mode) scenario.Row {
		i := slices.IndexFunc(rows, func(r scenario.Row) bool { return r.Scenario == name && r.Mode == m })
		if i < 0 || rows[i].Calls == 0 {
			t.Fatalf("%s, %s: no calls made", name, m)
		}
		return rows[i]
	}
	// The trouble was there: the plain client met it.
	if r := get(rows, scenario.Unknown, bench.Direct); r.Throttled == 0 {
		t.Errorf("unknown: the plain client was never throttled: the fake's limit was not set")
	}
	if r := get(rows, scenario.Fleet, bench.Direct); r.Throttled == 0 {
		t.Errorf("fleet: the plain clients were never throttled: the fake's limit was not set")
	}
	if r := get(rows, scenario.Robot, bench.Direct); r.RobotThrottled == 0 {
		t.Errorf("robot: the plain client never met the robot throttle: the fake's robot limit was not set")
	}

	u := get(rows, scenario.Unknown, bench.Proxy)
	for try := 1; !u.HasAfter || u.ThrottledPer100After() > 1; try++ {
		if try == freshRuns {
			t.Errorf("unknown limit: %.1f throttled per 100 upstream attempts after %v in the last of %d runs, want <= 1 in one",
				u.ThrottledPer100After(), u.Warmup, try)
			break
		}
		t.Logf("unknown limit: %.1f throttled per 100 upstream attempts after %v (want <= 1): run again alone, with fresh load", u.ThrottledPer100After(), u.Warmup)
		again, err := Run(ctx, Options{Only: []string{scenario.Unknown}, Modes: []bench.Mode{bench.Proxy}})
		if err != nil {
			t.Fatal(err)
		}
		u = get(again, scenario.Unknown, bench.Proxy)
	}
	if got := u.ThrottledPer100(); got > 5 {
		t.Errorf("unknown limit: %.1f throttled per 100 upstream attempts, want <= 5", got)
	}
	if got := u.AttemptsPerCall(); got > 1.3 {
		t.Errorf("unknown limit: %.2f upstream attempts per call, want <= 1.3", got)
	}
	f := get(rows, scenario.Fleet, bench.Proxy)
	// The accepted rate is the learned climb's on the wall clock: a busy
	// machine slows it. Only that miss is run again alone, with fresh load.
	for try := 1; f.HasAccepted && f.AcceptedOfLimit() < 0.85 && f.ThrottledPer100() <= 10; try++ {
		if try == freshRuns {
			break // judged below
		}
		t.Logf("fleet: accepted %.2f of the limit after the warm-up (want >= 0.85): run again alone, with fresh load", f.AcceptedOfLimit())
		again, err := Run(ctx, Options{Only: []string{scenario.Fleet}, Modes: []bench.Mode{bench.Proxy}})
		if err != nil {
			t.Fatal(err)
		}
		f = get(again, scenario.Fleet, bench.Proxy)
	}
	if got := f.ThrottledPer100(); got > 10 {
		t.Errorf("fleet: %.1f throttled per 100 upstream attempts, want <= 10", got)
	}
	if n := scenario.Must(scenario.Fleet).Replicas; len(f.Shares) != n || f.LeastShare() < 0.15 {
		t.Errorf("fleet: the %d replicas' shares of the successes %v, want each >= 15%%", n, f.Shares)
	}
	if a := f.AcceptedOfLimit(); !f.HasAccepted || a < 0.85 || a > 1.15 {
		t.Errorf("fleet: accepted %.1f/s after the warm-up, %.2f of the limit, want 0.85 - 1.15", f.Accepted, a)
	}
	robot := scenario.Must(scenario.Robot)
	deliver := robot.Deliver(robot.Calls)
	r := get(rows, scenario.Robot, bench.Proxy)
	if r.RobotThrottled != 0 {
		t.Errorf("robot: %d sends into DingTalk's robot throttle, want 0", r.RobotThrottled)
	}
	if r.Delivered != deliver || r.Paced != robot.Calls-deliver || r.P99 >= 5*time.Second {
		t.Errorf("robot: %d of the first %d delivered, %d of the other %d answered paced, slowest answer %v; want all, all, under 5 s",
			r.Delivered, deliver, r.Paced, robot.Calls-deliver, r.P99)
	}
	rs := get(rows, scenario.Robots, bench.Proxy)
	if n := scenario.Must(scenario.Robots).Calls; rs.RobotThrottled != 0 || rs.Delivered != n || rs.P99 >= 5*time.Second {
		t.Errorf("robots: %d of %d delivered (%d robot throttles), slowest answer %v; want all, none, under 5 s",
			rs.Delivered, n, rs.RobotThrottled, rs.P99)
	}
}
