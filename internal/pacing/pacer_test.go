package pacing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// turn is what one Wait gave: when it returned and with what.
type turn struct {
	at  time.Time
	err error
}

// burst starts n callers of Wait on name, each booked (returned or durably
// waiting for its turn) before the next starts, so an index is the booking
// order: the calls arrive at once, in a known order. The returned func waits
// for all of them.
func burst(p *Pacer, name string, n int, deadline time.Time) func() []turn {
	out := make([]turn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.Wait(context.Background(), name, time.Time{}, deadline)
			out[i] = turn{time.Now(), err}
		}()
		synctest.Wait()
	}
	return func() []turn { wg.Wait(); return out }
}

// times returns the turns' times, failing the test on any error.
func times(t *testing.T, ts []turn) []time.Time {
	t.Helper()
	out := make([]time.Time, len(ts))
	for i, tu := range ts {
		if tu.err != nil {
			t.Fatalf("call %d: Wait = %v, want nil", i, tu.err)
		}
		out[i] = tu.at
	}
	return out
}

// maxIn is the most turns in any half-open span [s, s+span), trying every
// turn as the span's start (the count can only grow when a span starts at a
// turn), and that start.
func maxIn(ts []time.Time, span time.Duration) (int, time.Time) {
	s := slices.Clone(ts)
	slices.SortFunc(s, func(a, b time.Time) int { return a.Compare(b) })
	best, at, j := 0, time.Time{}, 0
	for i := range s {
		for j < len(s) && s[j].Before(s[i].Add(span)) {
			j++
		}
		if j-i > best {
			best, at = j-i, s[i]
		}
	}
	return best, at
}

// countIn is how many turns fall in [from, to).
func countIn(ts []time.Time, from, to time.Time) int {
	n := 0
	for _, x := range ts {
		if !x.Before(from) && x.Before(to) {
			n++
		}
	}
	return n
}

func checkFIFO(t *testing.T, ts []time.Time) {
	t.Helper()
	for i := 1; i < len(ts); i++ {
		if ts[i].Before(ts[i-1]) {
			t.Fatalf("turn %d at %v is before turn %d at %v: not FIFO", i, ts[i], i-1, ts[i-1])
		}
	}
}

func checkMaxIn(t *testing.T, what string, ts []time.Time, span time.Duration, limit int) {
	t.Helper()
	if n, at := maxIn(ts, span); n > limit {
		t.Errorf("%s: %d turns in the %v from %v, want at most %d", what, n, span, at, limit)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func checkRate(t *testing.T, p *Pacer, name string, want float64) {
	t.Helper()
	if got := p.Rate(name); !near(got, want) {
		t.Errorf("Rate(%q) = %v, want %v", name, got, want)
	}
}

// reserveN books n turns on name at once, as n calls arriving together
// without deadlines would, without goroutines.
func reserveN(t *testing.T, p *Pacer, name string, n int) []time.Time {
	t.Helper()
	out := make([]time.Time, n)
	for i := range out {
		at, _, err := p.reserve(name, time.Time{}, time.Time{})
		if err != nil {
			t.Fatalf("reserve %d: %v", i, err)
		}
		out[i] = at
	}
	return out
}

func TestPerPathWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 1e6})
		start := time.Now()
		got := times(t, burst(p, "/topapi/message/send", 200, time.Time{})())

		checkFIFO(t, got)
		checkMaxIn(t, "one path at 20 QPS", got, time.Second, 18)
		if n := countIn(got, start, start.Add(time.Nanosecond)); n != 18 {
			t.Errorf("%d calls went at once, want a burst of 18", n)
		}
		if d := got[18].Sub(start); d != time.Second {
			t.Errorf("the 19th call went after %v, want 1s", d)
		}
		for s := range 11 {
			from := start.Add(time.Duration(s) * time.Second)
			if n := countIn(got, from, from.Add(time.Second)); n != 18 {
				t.Errorf("second %d: %d turns, want 18 (sustained 18/s)", s, n)
			}
		}
		if d := got[199].Sub(start); d != 11*time.Second {
			t.Errorf("the 200th call went after %v, want 11s", d)
		}
	})
}

func TestSustainedSequentialCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		var got []time.Time
		for time.Since(start) < 10*time.Second {
			if err := p.Wait(context.Background(), "/a", time.Time{}, time.Time{}); err != nil {
				t.Fatal(err)
			}
			got = append(got, time.Now())
		}
		got = got[:len(got)-1] // the one at 10 s
		if len(got) != 180 {
			t.Errorf("%d calls in 10 s, want 180", len(got))
		}
		checkMaxIn(t, "sequential caller", got, time.Second, 18)
	})
}

func TestGlobalWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 100})
		start := time.Now()
		const paths, per = 20, 15
		var waits []func() []turn
		for i := range paths {
			waits = append(waits, burst(p, fmt.Sprintf("/p%d", i), per, time.Time{}))
		}
		var all []time.Time
		for i, w := range waits {
			got := times(t, w())
			checkFIFO(t, got)
			checkMaxIn(t, fmt.Sprintf("/p%d", i), got, time.Second, 18)
			all = append(all, got...)
		}
		checkMaxIn(t, "all paths at global 100 QPS", all, time.Second, 90)
		for s := range 3 {
			from := start.Add(time.Duration(s) * time.Second)
			if n := countIn(all, from, from.Add(time.Second)); n != 90 {
				t.Errorf("second %d: %d turns in all, want 90", s, n)
			}
		}
		if n := countIn(all, start.Add(3*time.Second), start.Add(4*time.Second)); n != paths*per-270 {
			t.Errorf("second 3: %d turns, want %d", n, paths*per-270)
		}
	})
}

// A global window, unlike a path's, is booked out of order: a path's queue or
// penalty books turns far ahead, and other paths still fill the gaps, without
// ever putting more than the limit in any span.
func TestGlobalWindowOutOfOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 3, GlobalQPS: 10}) // paths: 2 per s; all: 9 per s
		rng := rand.New(rand.NewPCG(1, 2))
		start := time.Now()
		byPath := map[string][]time.Time{}
		var all []time.Time
		for i := range 600 {
			name := fmt.Sprintf("/p%d", rng.IntN(12))
			earliest := start.Add(time.Duration(rng.Int64N(int64(20 * time.Second))))
			if i%3 == 0 {
				earliest = time.Time{}
			}
			at, _, err := p.reserve(name, earliest, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if at.Before(earliest) {
				t.Fatalf("turn %v before earliest %v", at, earliest)
			}
			byPath[name] = append(byPath[name], at)
			all = append(all, at)
		}
		checkMaxIn(t, "all paths", all, time.Second, 9)
		for name, ts := range byPath {
			checkFIFO(t, ts)
			checkMaxIn(t, name, ts, time.Second, 2)
		}
		// Once every path has a queue (the earliests end at 20 s), the global
		// window is the limit and every second is full.
		last := slices.MaxFunc(all, func(a, b time.Time) int { return a.Compare(b) })
		for from := start.Add(20 * time.Second); from.Add(time.Second).Before(last); from = from.Add(time.Second) {
			if n := countIn(all, from, from.Add(time.Second)); n != 9 {
				t.Errorf("%d turns in the second from +%v, want 9", n, from.Sub(start))
			}
		}
	})
}

// TestWindowNextIsEarliestAllowed checks a window booked out of order against
// brute force: next's turn keeps every span within the limit, and no earlier
// time from t on does. The allowed times change only at t and a span after a
// turn, so those are the candidates.
func TestWindowNextIsEarliestAllowed(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	// allowed: no span holding u holds n turns besides (such a span may as
	// well start at u or at a turn before it).
	allowed := func(w *window, u time.Time) bool {
		starts := []time.Time{u}
		i, _ := slices.BinarySearchFunc(w.times, u.Add(-w.span+1), time.Time.Compare)
		for ; i < len(w.times) && !w.times[i].After(u); i++ {
			starts = append(starts, w.times[i])
		}
		for _, s := range starts {
			lo, _ := slices.BinarySearchFunc(w.times, s, time.Time.Compare)
			hi, _ := slices.BinarySearchFunc(w.times, s.Add(w.span), time.Time.Compare)
			if hi-lo >= w.n {
				return false
			}
		}
		return true
	}
	for _, rate := range []float64{0.5, 4, 20} {
		w := newWindow(rate, false)
		const turns = 250
		// Spread over a little less time than the turns need, so spans fill.
		horizon := int64(float64(time.Second) * turns / (rate * margin) * 0.8)
		for range turns {
			tt := base.Add(time.Duration(rng.Int64N(horizon)))
			if rng.IntN(4) == 0 { // a few on exact ms, so turns coincide
				tt = tt.Truncate(100 * time.Millisecond)
			}
			got := w.next(tt)
			if got.Before(tt) || !allowed(w, got) {
				t.Fatalf("rate %v: next(+%v) = +%v, which is not allowed", rate, tt.Sub(base), got.Sub(base))
			}
			cands := []time.Time{tt}
			for _, x := range w.times {
				if c := x.Add(w.span); !c.Before(tt) && c.Before(got) {
					cands = append(cands, c)
				}
			}
			for _, c := range cands {
				if c.Before(got) && allowed(w, c) {
					t.Fatalf("rate %v: next(+%v) = +%v, but +%v is allowed", rate, tt.Sub(base), got.Sub(base), c.Sub(base))
				}
			}
			w.take(got, base)
		}
		if n, _ := maxIn(w.times, w.span); n > w.n {
			t.Errorf("rate %v: %d turns in one span, want at most %d", rate, n, w.n)
		}
	}
}

func TestQueueOnOnePathDoesNotDelayOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		wait := burst(p, "/a", 200, time.Time{}) // /a's turns reach 11 s ahead
		got := times(t, burst(p, "/b", 18, time.Time{})())
		for i, at := range got {
			if !at.Equal(start) {
				t.Errorf("/b call %d waited %v behind /a's queue, want no wait", i, at.Sub(start))
			}
		}
		times(t, wait())
	})
}

func TestVeryHighRate(t *testing.T) {
	// Above maxRing calls a span the window is k spans a second; every second
	// must still hold at most rate·margin turns.
	for _, rate := range []float64{1200, 5000, 1e5, 1e7} {
		w := newWindow(rate, true)
		per := int(math.Floor(rate * margin))
		spans := int((time.Second + w.span - 1) / w.span) // spans a second touches
		if w.n > maxRing || w.n*spans > per {
			t.Errorf("rate %v: %d a span of %v: up to %d a second, want at most %d (and at most %d a span)",
				rate, w.n, w.span, w.n*spans, per, maxRing)
		}
		if float64(w.n)*float64(time.Second)/float64(w.span) < 0.99*float64(per) {
			t.Errorf("rate %v: %d a span of %v: too slow, want about %d a second", rate, w.n, w.span, per)
		}
	}
	// The Pacer keeps to it: every second at 1200; every span at 1e5 (a full
	// second at 1e5 costs too long under the race detector).
	for _, rate := range []float64{1200, 1e5} {
		t.Run(fmt.Sprint(rate), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := New(Settings{PerAPIQPS: rate, GlobalQPS: rate})
				per := int(math.Floor(rate * margin))
				w := newWindow(rate, true)
				start := time.Now()
				calls, within := per+per/5, time.Second
				if rate > 10000 {
					calls, within = 6*w.n, 5*w.span
				}
				got := reserveN(t, p, "/a", calls)
				checkFIFO(t, got)
				checkMaxIn(t, "turns", got, w.span, w.n)
				checkMaxIn(t, "turns", got, time.Second, per)
				want := math.Min(float64(per)*within.Seconds(), float64(w.n)*float64(within/w.span))
				if n := countIn(got, start, start.Add(within)); float64(n) < 0.95*want {
					t.Errorf("%d turns in the first %v, want about %v", n, within, want)
				}
				if n := countIn(got, start, start.Add(time.Nanosecond)); n != w.n {
					t.Errorf("%d calls went at once, want a burst of %d", n, w.n)
				}
			})
		})
	}
}

func TestVeryLowRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 0.5, GlobalQPS: 450})
		start := time.Now()
		got := times(t, burst(p, "/a", 4, time.Time{})())
		rate := 0.5
		gap := time.Duration(float64(time.Second) / (rate * margin)) // 2.22 s
		for i, at := range got {
			if want := start.Add(time.Duration(i) * gap); !at.Equal(want) {
				t.Errorf("call %d at %v, want %v", i, at.Sub(start), want.Sub(start))
			}
		}
		checkMaxIn(t, "0.5 QPS", got, 2200*time.Millisecond, 1)
	})
}

func TestDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		times(t, burst(p, "/a", 18, time.Time{})())

		for range 5 {
			err := p.Wait(context.Background(), "/a", time.Time{}, start.Add(500*time.Millisecond))
			var pe *PacedError
			if !errors.As(err, &pe) {
				t.Fatalf("Wait = %v, want a *PacedError", err)
			}
			if pe.Path != "/a" || pe.Wait != time.Second {
				t.Errorf("PacedError = %+v, want /a, 1s", *pe)
			}
			if !strings.Contains(err.Error(), "/a") {
				t.Errorf("Error() = %q, want the path in it", err)
			}
			if d := time.Since(start); d != 0 {
				t.Errorf("a refused call took %v, want an answer at once", d)
			}
		}
		// An earliest past the deadline is refused too.
		var pe *PacedError
		if err := p.Wait(context.Background(), "/b", start.Add(2*time.Second), start.Add(time.Second)); !errors.As(err, &pe) || pe.Wait != 2*time.Second {
			t.Errorf("Wait with earliest after deadline = %v, want a *PacedError of 2s", err)
		}

		// The refused calls booked nothing: the next second still has 18
		// turns, the first with its deadline exactly at its turn.
		if err := p.Wait(context.Background(), "/a", time.Time{}, start.Add(time.Second)); err != nil {
			t.Fatalf("Wait with the deadline at its turn = %v", err)
		}
		got := times(t, burst(p, "/a", 18, time.Time{})()) // zero deadline: no limit
		if n := countIn(got, start.Add(time.Second), start.Add(time.Second+1)); n != 17 {
			t.Errorf("%d of 17 calls went at 1 s; refused calls were booked", n)
		}
		if !got[17].Equal(start.Add(2 * time.Second)) {
			t.Errorf("the 19th call of second 1 went at %v, want 2s", got[17].Sub(start))
		}
	})
}

func TestWaitContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		times(t, burst(p, "/a", 18, time.Time{})())

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- p.Wait(ctx, "/a", time.Time{}, time.Time{}) }()
		time.Sleep(100 * time.Millisecond)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Wait = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d != 100*time.Millisecond {
			t.Errorf("cancelled Wait returned after %v, want 100ms", d)
		}

		tctx, tcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer tcancel()
		if err := p.Wait(tctx, "/a", time.Time{}, time.Time{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait = %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d != 400*time.Millisecond {
			t.Errorf("timed-out Wait returned at %v, want 400ms", d)
		}
	})
}

func TestThrottledCutsRateOncePerPenalty(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		p.Throttled("/a", time.Time{}) // nothing measured yet: β of the rate
		checkRate(t, p, "/a", 20*beta)
		for range 10 {
			p.Throttled("/a", time.Time{})
		}
		time.Sleep(900 * time.Millisecond)
		p.Throttled("/a", time.Time{}) // still within the first penalty
		checkRate(t, p, "/a", 20*beta)
		checkRate(t, p, "/b", 20)

		time.Sleep(2 * time.Second) // past the (extended) penalty
		p.Throttled("/a", time.Time{})
		checkRate(t, p, "/a", 20*beta*beta)

		prev := p.Rate("/a")
		for range 60 {
			time.Sleep(1100 * time.Millisecond)
			p.Throttled("/a", time.Time{})
			r := p.Rate("/a")
			if r < floorRate-1e-9 || r > prev+1e-9 {
				t.Fatalf("rate went %v -> %v, want a cut, never under %v", prev, r, floorRate)
			}
			prev = r
		}
		checkRate(t, p, "/a", floorRate) // the floor is absolute, not a share of 20
		checkRate(t, p, "/b", 20)
	})
}

// TestThrottleLearnsWhatGotThrough: the rate after a throttle is β times
// what the path delivered in the last second or two, however high the
// configured rate: one throttle takes 5,000/s down to DingTalk's real 50.
func TestThrottleLearnsWhatGotThrough(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 5000, GlobalQPS: 10000})
		reserveN(t, p, "/a", 1) // the path is seen
		// 100 calls a second for 2 s, 50 of each second's get through.
		for i := range 20 {
			if i > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			for range 5 {
				p.Succeeded("/a")
			}
		}
		p.Throttled("/a", time.Time{})
		checkRate(t, p, "/a", beta*50/margin)
		// A young path measures over the time it has been seen, at least 1 s.
		p2 := New(Settings{PerAPIQPS: 5000, GlobalQPS: 10000})
		reserveN(t, p2, "/b", 1)
		for range 30 {
			p2.Succeeded("/b")
		}
		time.Sleep(500 * time.Millisecond)
		p2.Throttled("/b", time.Time{})
		checkRate(t, p2, "/b", beta*30/margin)
	})
}

// TestClimbIsCubic: after the penalty, a learned rate climbs back to just
// under its ceiling (what got through) in cubicK seconds, lingers there,
// then probes past it slowly, never above the configured rate.
func TestClimbIsCubic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 60, GlobalQPS: 450})
		reserveN(t, p, "/a", 1)
		for i := range 40 {
			if i > 0 {
				time.Sleep(50 * time.Millisecond)
			}
			p.Succeeded("/a")
		}
		p.Throttled("/a", time.Time{}) // delivered 20/s: ceiling 20/0.9, rate β of that
		c := 20 / margin
		checkRate(t, p, "/a", beta*c)
		penaltyEnd := time.Now().Add(penalty)
		at := func(d float64) float64 {
			time.Sleep(time.Until(penaltyEnd.Add(time.Duration(d * float64(time.Second)))))
			p.Succeeded("/a")
			return p.Rate("/a")
		}
		top := hold * c
		r1 := at(cubicK / 2)
		r2 := at(cubicK)
		r3 := at(cubicK + 1)
		r4 := at(cubicK + math.Cbrt(0.1/cubicC))
		if !(beta*c < r1 && r1 < top) || math.Abs(r2-top) > 1e-6 || !(top < r3 && r3 < 1.001*top) || math.Abs(r4-1.1*top) > 1e-6 {
			t.Errorf("climb: %.3f at K/2, %.3f at K, %.3f at K+1 s, %.3f at K+∛(0.1/C): want (%.2f, %.2f), %.2f, just over, %.2f", r1, r2, r3, r4, beta*c, top, top, 1.1*top)
		}
		time.Sleep(time.Minute)
		p.Succeeded("/a")
		checkRate(t, p, "/a", 60) // never above the configured rate
	})
}

// TestRaiseRebooksWaiters: calls queued at a cut rate book again once the
// rate climbs a step, so a queued path drains at the raised rate.
func TestRaiseRebooksWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		reserveN(t, p, "/a", 1)
		for range 10 {
			p.Succeeded("/a")
		}
		time.Sleep(900 * time.Millisecond)
		p.Throttled("/a", time.Time{}) // 10 got through: ceiling 11.1, rate 10, 9 a second
		start := time.Now()
		const n = 300.0 // 33 s at the cut rate
		wait := burst(p, "/a", int(n), time.Time{})
		synctest.Wait()
		// Successes through the climb and the probe raise the rate, and the
		// queue's turns come sooner than the cut rate's spacing would have
		// them (all 300 were booked at it).
		for range 400 {
			time.Sleep(100 * time.Millisecond)
			p.Succeeded("/a")
		}
		got := times(t, wait())
		last := slices.MaxFunc(got, func(a, b time.Time) int { return a.Compare(b) })
		secs := (n - 1) / (10 * margin)
		cut := penalty + time.Duration(secs*float64(time.Second))
		if d := last.Sub(start); d > cut*85/100 {
			t.Errorf("the queue drained in %v, want under %v (0.85 of the cut rate's %v)", d, cut*85/100, cut)
		}
		checkMaxIn(t, "never above the configured rate", got, time.Second, int(20*margin)+1)
	})
}

func TestThrottledBlocksPath(t *testing.T) {
	for _, tc := range []struct {
		name  string
		until time.Duration // from the throttle; 0: none named
		want  time.Duration
	}{
		{"no end named", 0, time.Second},
		{"end in the past", -time.Second, time.Second},
		{"end sooner than the 1 s penalty", 200 * time.Millisecond, time.Second},
		{"90002 end later", 2500 * time.Millisecond, 2500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
				start := time.Now()
				var until time.Time
				if tc.until != 0 {
					until = start.Add(tc.until)
				}
				p.Throttled("/a", until)
				if got := p.Next("/a", start); !got.Equal(start.Add(tc.want)) {
					t.Errorf("Next = +%v, want +%v", got.Sub(start), tc.want)
				}
				var pe *PacedError
				if err := p.Wait(context.Background(), "/a", time.Time{}, start.Add(tc.want-time.Millisecond)); !errors.As(err, &pe) || pe.Wait != tc.want {
					t.Errorf("Wait with a deadline inside the penalty = %v, want a *PacedError of %v", err, tc.want)
				}
				if err := p.Wait(context.Background(), "/a", time.Time{}, time.Time{}); err != nil {
					t.Fatal(err)
				}
				if d := time.Since(start); d != tc.want {
					t.Errorf("first call after the throttle went at +%v, want +%v", d, tc.want)
				}
				if err := p.Wait(context.Background(), "/b", time.Time{}, time.Time{}); err != nil {
					t.Fatal(err)
				}
				if d := time.Since(start); d != tc.want {
					t.Errorf("/b waited %v, want no wait", d-tc.want)
				}
			})
		})
	}
}

func TestThrottleRebooksWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		wait := burst(p, "/a", 200, time.Time{})
		time.Sleep(500 * time.Millisecond)
		p.Throttled("/a", time.Time{}) // blocked until 1.5 s, 18 QPS: 16.2 a second, evenly spaced

		// Another path is not held up, neither by /a's queue nor its penalty.
		if err := p.Wait(context.Background(), "/b", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 500*time.Millisecond {
			t.Errorf("/b went at %v, want 500ms", d)
		}

		got := times(t, wait())
		blockEnd := start.Add(1500 * time.Millisecond)
		if n := countIn(got, start, start.Add(time.Nanosecond)); n != 18 {
			t.Errorf("%d calls went at once, want 18", n)
		}
		if n := countIn(got, start.Add(time.Nanosecond), blockEnd); n != 0 {
			t.Errorf("%d calls went during the penalty", n)
		}
		var after []time.Time
		for _, at := range got {
			if !at.Before(blockEnd) {
				after = append(after, at)
			}
		}
		per := 20 * beta * margin // evenly spaced
		checkMaxIn(t, "waiters after the throttle", after, time.Second, int(per)+1)
		if n := countIn(after, blockEnd, blockEnd.Add(time.Nanosecond)); n > 1 {
			t.Errorf("%d waiters released at once at the penalty's end", n)
		}
		// 182 calls at 16.2/s after 1.5 s: done by about 12.7 s.
		want := 1500*time.Millisecond + time.Duration(182/per*float64(time.Second)) + 100*time.Millisecond
		if last := slices.MaxFunc(got, func(a, b time.Time) int { return a.Compare(b) }); last.Sub(start) > want {
			t.Errorf("last call went at %v, want by about %v", last.Sub(start), want)
		}
	})
}

func TestThrottleRefusesWaitersPastTheirDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		wait := burst(p, "/a", 36, start.Add(1200*time.Millisecond)) // 18 now, 18 at 1 s
		time.Sleep(500 * time.Millisecond)
		p.Throttled("/a", time.Time{}) // blocked until 1.5 s, past their deadline
		got := wait()
		for i, tu := range got[18:] {
			var pe *PacedError
			if !errors.As(tu.err, &pe) {
				t.Errorf("waiter %d: Wait = %v, want a *PacedError", i, tu.err)
			}
			if d := tu.at.Sub(start); d != 500*time.Millisecond {
				t.Errorf("waiter %d answered at %v, want at the throttle (500ms)", i, d)
			}
		}
		// Refused waiters hold no turns: a call after the penalty goes at once.
		if got := p.Next("/a", start.Add(1500*time.Millisecond)); !got.Equal(start.Add(1500 * time.Millisecond)) {
			t.Errorf("Next after the penalty = +%v, want +1.5s", got.Sub(start))
		}
	})
}

// Waiters booked again after a throttle give back their old global turns:
// other paths may use them.
func TestThrottleGivesBackGlobalTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 40, GlobalQPS: 40}) // 36 a second on a path and in all
		start := time.Now()
		waitA := burst(p, "/a", 72, time.Time{}) // 36 now, 36 at 1 s
		time.Sleep(500 * time.Millisecond)
		p.Throttled("/a", time.Time{}) // 36 QPS: 32.4 a second, evenly spaced from 1.5 s
		synctest.Wait()                // /a's waiters have booked again
		got := times(t, burst(p, "/b", 36, time.Time{})())
		a := times(t, waitA())
		// The global second from 1 s holds /a's turns from 1.5 s on; the rest
		// of it is /b's (the turns /a gave back).
		held := countIn(a, start.Add(time.Second), start.Add(2*time.Second))
		if n := countIn(got, start.Add(time.Second), start.Add(time.Second+1)); n != 36-held || n == 0 {
			t.Errorf("%d /b calls at 1 s, want %d (the turns /a gave back)", n, 36-held)
		}
		all := append(a, got...)
		checkMaxIn(t, "all", all, time.Second, 36)
	})
}

func TestSucceededRaisesRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		p.Succeeded("/a") // never throttled, not even seen: nothing to do
		checkRate(t, p, "/a", 20)
		if n := p.Len(); n != 0 {
			t.Errorf("Succeeded on an unseen path made Len %d", n)
		}

		p.Throttled("/a", time.Time{})
		checkRate(t, p, "/a", 20*beta)
		p.Succeeded("/a") // a call in flight during the penalty
		checkRate(t, p, "/a", 20*beta)

		time.Sleep(time.Second) // the penalty ends
		for range 100 {         // many successes at once raise it once
			p.Succeeded("/a")
		}
		first := p.Rate("/a")
		if first < 20*beta {
			t.Errorf("rate %v after the penalty, want at least %v", first, 20*beta)
		}
		time.Sleep(time.Minute)
		p.Succeeded("/a")
		checkRate(t, p, "/a", 20)

		// The raised rate is in force: 18 per second again.
		start := time.Now()
		got := times(t, burst(p, "/a", 19, time.Time{})())
		if n := countIn(got, start, start.Add(time.Nanosecond)); n != 18 {
			t.Errorf("%d calls at once after recovery, want 18", n)
		}
	})
}

func TestThrottledRateInForce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		p.Throttled("/a", time.Time{})
		time.Sleep(time.Second)
		start := time.Now()
		got := times(t, burst(p, "/a", 40, time.Time{})())
		per := 20 * beta * margin
		checkMaxIn(t, "at 18 QPS", got, time.Second, int(per)+1)
		gap := time.Duration(float64(time.Second) / per)
		for i := 1; i < len(got); i++ {
			if d := got[i].Sub(got[i-1]); d < gap-time.Microsecond {
				t.Fatalf("turns %d and %d %v apart, want evenly spaced by %v", i-1, i, d, gap)
			}
		}
		if !got[0].Equal(start) {
			t.Errorf("first call at +%v, want at once", got[0].Sub(start))
		}
	})
}

func TestNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		if got := p.Next("/a", start); !got.Equal(start) {
			t.Errorf("Next on a fresh path = +%v, want now", got.Sub(start))
		}
		if got := p.Next("/a", start.Add(3*time.Second)); !got.Equal(start.Add(3 * time.Second)) {
			t.Errorf("Next from +3s = +%v, want +3s", got.Sub(start))
		}
		if n := p.Len(); n != 0 {
			t.Errorf("Next made Len %d, want 0", n)
		}
		times(t, burst(p, "/a", 18, time.Time{})())
		for range 50 {
			if got := p.Next("/a", start); !got.Equal(start.Add(time.Second)) {
				t.Fatalf("Next on a full window = +%v, want +1s", got.Sub(start))
			}
		}
		got := times(t, burst(p, "/a", 18, time.Time{})())
		if n := countIn(got, start.Add(time.Second), start.Add(time.Second+1)); n != 18 {
			t.Errorf("%d of 18 calls at +1s after Next calls, want 18: Next booked", n)
		}

		// Next honours a 90002 penalty's end.
		now := time.Now()
		p.Throttled("/b", now.Add(2500*time.Millisecond))
		if got := p.Next("/b", now); !got.Equal(now.Add(2500 * time.Millisecond)) {
			t.Errorf("Next on a blocked path = +%v, want +2.5s", got.Sub(now))
		}
		if got := p.Next("/b", now.Add(4*time.Second)); !got.Equal(now.Add(4 * time.Second)) {
			t.Errorf("Next from after the penalty = +%v, want +4s", got.Sub(now))
		}

		// And the global window, for a path not seen.
		g := New(Settings{PerAPIQPS: 1000, GlobalQPS: 10})
		for i := range 9 {
			if err := g.Wait(context.Background(), fmt.Sprint("/g", i), time.Time{}, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		if got := g.Next("/new", now); !got.Equal(now.Add(time.Second)) {
			t.Errorf("Next under a full global window = +%v, want +1s", got.Sub(now))
		}
	})
}

func TestManyPathsBoundedAndForgotten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 1e7})
		ctx := context.Background()
		for i := range maxPaths + 50 {
			if err := p.Wait(ctx, fmt.Sprintf("/p/%d", i), time.Time{}, time.Time{}); err != nil {
				t.Fatal(err)
			}
			if n := p.Len(); n > maxPaths {
				t.Fatalf("after %d paths Len = %d, want at most %d", i+1, n, maxPaths)
			}
		}
		if n := p.Len(); n != maxPaths {
			t.Errorf("Len = %d, want %d", n, maxPaths)
		}
		p.Throttled("/p/1", time.Time{})

		// Paths past the cap share one window.
		time.Sleep(2 * time.Second)
		start := time.Now()
		var waits []func() []turn
		for i := range 19 {
			waits = append(waits, burst(p, fmt.Sprintf("/over/%d", i), 1, time.Time{}))
		}
		var over []time.Time
		for _, w := range waits {
			over = append(over, times(t, w())...)
		}
		if n := countIn(over, start, start.Add(time.Nanosecond)); n != 18 {
			t.Errorf("%d new paths past the cap went at once, want 18 (one shared window)", n)
		}
		if n := p.Len(); n != maxPaths {
			t.Errorf("Len = %d, want %d", n, maxPaths)
		}
		// They share its penalty too: Next and Wait honour it.
		now := time.Now()
		p.Throttled("/over/1", now.Add(2*time.Second))
		if got := p.Next("/over/2", now); got.Before(now.Add(2 * time.Second)) {
			t.Errorf("Next on a path sharing the throttled overflow window = +%v, want +2s", got.Sub(now))
		}
		checkRate(t, p, "/over/3", 20*beta)
		if err := p.Wait(ctx, "/over/3", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(now); d != 2*time.Second {
			t.Errorf("overflow call went at +%v, want +2s", d)
		}

		time.Sleep(28 * time.Second)
		if err := p.Wait(ctx, "/p/5", time.Time{}, time.Time{}); err != nil { // used 31 s before the sweep
			t.Fatal(err)
		}
		time.Sleep(31 * time.Second)
		if n := p.Len(); n != maxPaths {
			t.Errorf("Len = %d before any call, want %d: time alone sweeps nothing", n, maxPaths)
		}
		if err := p.Wait(ctx, "/fresh", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		// Kept: /p/5 (idle 31 s), /p/1 (cut by the throttle), /fresh.
		if n := p.Len(); n != 3 {
			t.Errorf("after a minute idle Len = %d, want 3", n)
		}
		if r := p.Rate("/p/1"); r >= 20 {
			t.Errorf("throttled path forgotten: Rate = %v", r)
		}

		p.Succeeded("/p/1") // back to full after long success
		checkRate(t, p, "/p/1", 20)
		time.Sleep(61 * time.Second)
		if err := p.Wait(ctx, "/last", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if n := p.Len(); n != 1 {
			t.Errorf("Len = %d, want 1", n)
		}
	})
}

func TestThrottledPathKeptWhileCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		ctx := context.Background()
		if err := p.Wait(ctx, "/a", time.Time{}, time.Time{}); err != nil {
			t.Fatal(err)
		}
		p.Throttled("/a", time.Time{})
		for range 5 {
			time.Sleep(time.Minute)
			if err := p.Wait(ctx, "/other", time.Time{}, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		checkRate(t, p, "/a", 20*beta)
		if n := p.Len(); n != 2 {
			t.Errorf("Len = %d, want 2 (the throttled path kept)", n)
		}
	})
}

func TestUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		start := time.Now()
		times(t, burst(p, "/a", 18, time.Time{})())
		p.Update(Settings{PerAPIQPS: 40, GlobalQPS: 450})
		checkRate(t, p, "/a", 40)
		got := times(t, burst(p, "/a", 19, time.Time{})())
		if n := countIn(got, start, start.Add(time.Nanosecond)); n != 18 {
			t.Errorf("after Update to 40, %d more calls went at once, want 18 (36 in all)", n)
		}
		if !got[18].Equal(start.Add(time.Second)) {
			t.Errorf("the 37th call went at +%v, want +1s", got[18].Sub(start))
		}

		p.Update(Settings{PerAPIQPS: 10, GlobalQPS: 450})
		checkRate(t, p, "/a", 10)
		time.Sleep(2 * time.Second)
		got = times(t, burst(p, "/a", 30, time.Time{})())
		checkMaxIn(t, "after Update to 10", got, time.Second, 9)

		// A throttled path keeps its lower rate, and regains up to the new one.
		q := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		q.Throttled("/b", time.Time{})
		q.Update(Settings{PerAPIQPS: 40, GlobalQPS: 450})
		checkRate(t, q, "/b", 20*beta)
		checkRate(t, q, "/c", 40)
		q.Update(Settings{PerAPIQPS: 10, GlobalQPS: 450})
		checkRate(t, q, "/b", 10)
		q.Update(Settings{PerAPIQPS: 40, GlobalQPS: 450})
		checkRate(t, q, "/b", 10)
		time.Sleep(time.Minute)
		q.Succeeded("/b")
		checkRate(t, q, "/b", 40)

		// The global rate too.
		g := New(Settings{PerAPIQPS: 1000, GlobalQPS: 1000})
		g.Update(Settings{PerAPIQPS: 1000, GlobalQPS: 20})
		var waits []func() []turn
		for i := range 10 {
			waits = append(waits, burst(g, fmt.Sprint("/g", i), 5, time.Time{}))
		}
		var all []time.Time
		for _, w := range waits {
			all = append(all, times(t, w())...)
		}
		checkMaxIn(t, "after global Update to 20", all, time.Second, 18)
	})
}

func TestConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const global = 200
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: global})
		var (
			mu     sync.Mutex
			byPath = map[string][]time.Time{}
			all    []time.Time
			wg     sync.WaitGroup
		)
		for g := range 32 {
			wg.Go(func() {
				for i := range 40 {
					name := fmt.Sprint("/p", (g+i)%8)
					switch rand.IntN(10) {
					case 0:
						p.Throttled(name, time.Now().Add(time.Duration(rand.IntN(2000))*time.Millisecond))
					case 1:
						p.Succeeded(name)
					case 2:
						p.Update(Settings{PerAPIQPS: float64(20 + 20*rand.IntN(2)), GlobalQPS: global})
					case 3:
						p.Next(name, time.Now())
						p.Len()
					default:
						ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(3000))*time.Millisecond)
						err := p.Wait(ctx, name, time.Time{}, time.Now().Add(time.Duration(rand.IntN(4000))*time.Millisecond))
						cancel()
						var pe *PacedError
						switch {
						case err == nil:
							mu.Lock()
							byPath[name] = append(byPath[name], time.Now())
							all = append(all, time.Now())
							mu.Unlock()
						case errors.As(err, &pe), errors.Is(err, context.DeadlineExceeded):
						default:
							t.Errorf("Wait = %v", err)
						}
					}
					if r := p.Rate(name); r < floorRate-1e-9 || r > 40+1e-9 {
						t.Errorf("Rate = %v, want within [%v, 40]", r, floorRate)
					}
					time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
				}
			})
		}
		wg.Wait()
		if len(all) == 0 {
			t.Fatal("no call got a turn")
		}
		checkMaxIn(t, "all paths", all, time.Second, global*9/10)
		for name, ts := range byPath {
			checkMaxIn(t, name, ts, time.Second, 36)
		}
	})
}

// TestRobotsPacedEachOnTheirOwn: a robot gets its 20 a minute at once, and a
// send whose turn would come after its deadline is refused at once instead
// of sent into DingTalk's 10-minute block; other robots are not slowed.
func TestRobotsPacedEachOnTheirOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		a := RobotPrefix + "aaaa"
		start := time.Now()
		got := burst(p, a, 25, start.Add(30*time.Second))()
		ok, paced := 0, 0
		for _, tu := range got {
			var pe *PacedError
			switch {
			case tu.err == nil && tu.at.Equal(start):
				ok++
			case errors.As(tu.err, &pe) && tu.at.Equal(start):
				paced++
			default:
				t.Errorf("send at %v: %v", tu.at.Sub(start), tu.err)
			}
		}
		if ok != 20 || paced != 5 {
			t.Errorf("%d sent at once and %d refused at once, want 20 and 5", ok, paced)
		}
		for i := range 5 {
			ts := times(t, burst(p, fmt.Sprintf("%s%d", RobotPrefix, i), 10, start.Add(30*time.Second))())
			if n := countIn(ts, start, start.Add(time.Nanosecond)); n != 10 {
				t.Errorf("robot %d: %d of 10 sent at once", i, n)
			}
		}
		// A minute on, the first robot's window has room a second later:
		// DingTalk counts its minute by when sends reach it, and a send
		// of the first burst may have reached it late.
		time.Sleep(time.Minute)
		if at := p.Next(a, time.Now()); !at.Equal(start.Add(time.Minute + time.Second)) {
			t.Errorf("robot's next turn a minute on: +%v, want +1s", time.Until(at))
		}
		time.Sleep(time.Second)
		if at := p.Next(a, time.Now()); !at.Equal(time.Now()) {
			t.Errorf("robot's next turn a minute and a second on: +%v, want now", time.Until(at))
		}
	})
}

// TestRobotThrottleBlocksTenMinutes: DingTalk's robot throttle answer
// blocks that robot (only) for 10 minutes.
func TestRobotThrottleBlocksTenMinutes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 450})
		a, b := RobotPrefix+"a", RobotPrefix+"b"
		reserveN(t, p, a, 1)
		p.Answered(a, dingtalk.Result{Reason: dingtalk.ReasonRobotThrottled, Errcode: dingtalk.ErrcodeRobotTooFast})
		if d := time.Until(p.Next(a, time.Now())); d != 10*time.Minute {
			t.Errorf("throttled robot's next turn in %v, want 10m", d)
		}
		if d := time.Until(p.Next(b, time.Now())); d != 0 {
			t.Errorf("another robot's next turn in %v, want now", d)
		}
	})
}

// TestRobotsBounded: 100,000 distinct robots are each paced, the next one
// is let through unpaced rather than share a window, and idle robots are
// forgotten.
func TestRobotsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 20, GlobalQPS: 1e9})
		for i := range maxRobots + 10 {
			if _, _, err := p.reserve(fmt.Sprintf("%s%x", RobotPrefix, i), time.Time{}, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		p.mu.Lock()
		n := len(p.robots)
		p.mu.Unlock()
		if n != maxRobots {
			t.Errorf("%d robots held, want the cap %d", n, maxRobots)
		}
		time.Sleep(2 * time.Minute)
		reserveN(t, p, "/a", 1) // sweeps
		p.mu.Lock()
		n = len(p.robots)
		p.mu.Unlock()
		if n != 0 {
			t.Errorf("%d idle robots still held, want 0", n)
		}
	})
}

// TestMinuteLimit: a per-minute limit answer pauses the path until the
// minute turns, and the path then keeps to β times what got through in the
// last minute.
func TestMinuteLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New(Settings{PerAPIQPS: 100, GlobalQPS: 450})
		// Bubble time starts at a whole minute: 30 s in.
		time.Sleep(30 * time.Second)
		reserveN(t, p, "/a", 1)
		for range 100 {
			p.Succeeded("/a")
		}
		p.Answered("/a", dingtalk.Result{Reason: dingtalk.ReasonMinuteLimit, Errcode: dingtalk.ErrcodeQPMAppAPI})
		turn := time.Now().Truncate(time.Minute).Add(time.Minute)
		if at := p.Next("/a", time.Now()); !at.Equal(turn) {
			t.Errorf("next turn at +%v, want when the minute turns (+%v)", time.Until(at), time.Until(turn))
		}
		time.Sleep(time.Until(turn))
		got := times(t, burst(p, "/a", 100, time.Time{})())
		checkMaxIn(t, "per minute", got, time.Minute, int(100*beta))
	})
}

// penalty is DingTalk's block after a throttle answer (dingtalk.Penalty).
const penalty = dingtalk.ThrottlePenalty * time.Second
