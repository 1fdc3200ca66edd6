package pacing

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Settings are the configured rates.
type Settings struct {
	// PerAPIQPS is the most calls per second on one path.
	PerAPIQPS float64
	// GlobalQPS is the most calls per second in all.
	GlobalQPS float64
}

const (
	// margin keeps each window's count a little under the limit: DingTalk
	// counts calls in one-second windows as they arrive, and arrival jitter
	// can move a call or two across a window's edge.
	margin = 0.9
	// decrease is the multiplicative decrease on a throttle answer (CUBIC's
	// and AWS's adaptive mode's β).
	decrease = 0.7
	// increasePerSecond is how much of the configured rate a path regains per
	// second of successful calls.
	increasePerSecond = 0.3
	// minShare is the least share of the configured rate a path is cut to.
	minShare = 0.05
	// idleAfter is how long a path at its full rate may go unused before it
	// is forgotten.
	idleAfter = time.Minute
	// maxPaths caps the paths paced on their own; beyond it, paths share one
	// window (slower, never faster).
	maxPaths = 10000
	// maxRing bounds the calls allowed per span, and so the past turns kept
	// per window. A higher rate is enforced as k spans a second of at most
	// maxRing calls each.
	maxRing = 1024
	// penalty is DingTalk's block after a QPS throttle.
	penalty = time.Second
)

// PacedError says a call's turn would come after its deadline.
type PacedError struct {
	Path string
	// Wait is how long the call would have had to wait for its turn.
	Wait time.Duration
}

func (e *PacedError) Error() string {
	return fmt.Sprintf("pacing: %s: next turn in %s, past the call's deadline", e.Path, e.Wait.Round(time.Millisecond))
}

// window is an exact sliding-window limit: at most n calls in any span of
// span. It keeps the turns it handed out, sorted, from one span ago on. A
// path's window hands turns out in order (FIFO); the global window is booked
// out of order (a path's queue or penalty books turns ahead of other paths'),
// so it finds the earliest turn that keeps every span within the limit.
type window struct {
	times []time.Time // turns handed out, sorted
	n     int         // calls allowed per span, <= maxRing
	span  time.Duration
	fifo  bool      // turns never decrease
	last  time.Time // the latest turn handed out
}

func newWindow(rate float64, fifo bool) *window {
	w := &window{fifo: fifo}
	w.setRate(rate)
	return w
}

// setRate makes the window allow rate·margin calls per second.
func (w *window) setRate(rate float64) {
	per := rate * margin
	n := int(math.Floor(per))
	span := time.Second
	switch {
	case n < 1: // under one call a second: one call per 1/per seconds
		n, span = 1, time.Duration(float64(time.Second)/per)
	case n > maxRing: // k spans a second, so any second holds at most k·n <= per
		k := int(math.Ceil(per / maxRing))
		n = int(math.Floor(per / float64(k)))
		span = (time.Second + time.Duration(k) - 1) / time.Duration(k)
	}
	w.n, w.span = n, span
}

// next is the earliest turn at or after t this window allows: one that no
// span holds together with n turns already handed out.
func (w *window) next(t time.Time) time.Time {
	if w.fifo && w.last.After(t) {
		t = w.last
	}
	for {
		// Every n consecutive turns that fit in one span with t push t to a
		// span after the first of them.
		from := t.Add(-w.span)
		lo, _ := slices.BinarySearchFunc(w.times, from, func(x, f time.Time) int {
			if x.After(f) {
				return 1
			}
			return -1
		})
		free := t
		for i := lo; i+w.n-1 < len(w.times); i++ {
			first, last := w.times[i], w.times[i+w.n-1]
			if last.Sub(t) >= w.span {
				break
			}
			if last.Before(t) {
				last = t
			}
			if first.After(t) {
				first = t
			}
			if last.Sub(first) < w.span {
				free = w.times[i].Add(w.span)
			}
		}
		if !free.After(t) {
			return t
		}
		t = free
	}
}

// take books turn t; turns before now-span no longer matter and are dropped.
func (w *window) take(t, now time.Time) {
	old := 0
	for old < len(w.times) && !w.times[old].After(now.Add(-w.span)) {
		old++
	}
	w.times = w.times[old:]
	if len(w.times) == 0 || !t.Before(w.times[len(w.times)-1]) {
		w.times = append(w.times, t) // in order: always so on a path
	} else {
		i, _ := slices.BinarySearchFunc(w.times, t, func(x, t time.Time) int {
			if x.After(t) {
				return 1
			}
			return -1
		})
		w.times = slices.Insert(w.times, i, t)
	}
	if t.After(w.last) {
		w.last = t
	}
}

// release gives back turn t, booked but not used.
func (w *window) release(t time.Time) {
	i, ok := slices.BinarySearchFunc(w.times, t, time.Time.Compare)
	if ok {
		w.times = slices.Delete(w.times, i, i+1)
	}
}

// dropAfter forgets the turns booked after now (their callers book again).
func (w *window) dropAfter(now time.Time) {
	i, _ := slices.BinarySearchFunc(w.times, now, func(x, t time.Time) int {
		if x.After(t) {
			return 1
		}
		return -1
	})
	w.times = w.times[:i]
	if w.last.After(now) {
		w.last = now
	}
}

// Pacer hands out turns. It is safe for concurrent use.
type Pacer struct {
	// OnRate, if set (before the pacer is used), is told of every change of
	// a path's rate that Answered makes, for the rate gauge.
	OnRate func(name string, rate float64)

	settings atomic.Pointer[Settings]

	mu        sync.Mutex
	global    *window
	paths     map[string]*path
	overflow  *path
	lastSweep time.Time
}

type path struct {
	win          *window
	rate         float64   // current rate, <= configured
	blockedUntil time.Time // DingTalk's penalty ends then
	lastUse      time.Time
	lastRaise    time.Time
	// rebook is closed when a throttle voids the turns booked ahead on
	// the path: their callers book again.
	rebook chan struct{}
}

func newPath(rate float64) *path {
	return &path{win: newWindow(rate, true), rate: rate, rebook: make(chan struct{})}
}

// New returns a Pacer under s.
func New(s Settings) *Pacer {
	p := &Pacer{paths: make(map[string]*path), global: newWindow(s.GlobalQPS, false)}
	p.settings.Store(&s)
	p.overflow = newPath(s.PerAPIQPS)
	return p
}

// Update installs new rates. A path cut by throttling keeps its lower rate
// if that is lower than the new configured one.
func (p *Pacer) Update(s Settings) {
	p.settings.Store(&s)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.global.setRate(s.GlobalQPS)
	for _, e := range append(p.pathsLocked(), p.overflow) {
		if e.lastRaise.IsZero() || e.rate > s.PerAPIQPS {
			e.rate = s.PerAPIQPS
		}
		e.win.setRate(e.rate)
	}
}

func (p *Pacer) pathsLocked() []*path {
	out := make([]*path, 0, len(p.paths))
	for _, e := range p.paths {
		out = append(out, e)
	}
	return out
}

// getLocked returns name's pacing state, creating it; p.mu must be held.
func (p *Pacer) getLocked(name string, now time.Time) *path {
	if now.Sub(p.lastSweep) > idleAfter/4 {
		p.sweepLocked(now)
	}
	e, ok := p.paths[name]
	if !ok {
		if len(p.paths) >= maxPaths {
			return p.overflow
		}
		full := p.settings.Load().PerAPIQPS
		e = newPath(full)
		p.paths[name] = e
	}
	e.lastUse = now
	return e
}

// peekLocked returns name's pacing state if it has any: its own, or the
// shared overflow's once the cap is reached; p.mu must be held.
func (p *Pacer) peekLocked(name string) *path {
	if e, ok := p.paths[name]; ok {
		return e
	}
	if len(p.paths) >= maxPaths {
		return p.overflow
	}
	return nil
}

// sweepLocked forgets paths idle for idleAfter that carry no adaptation or
// penalty: forgetting them loses nothing.
func (p *Pacer) sweepLocked(now time.Time) {
	p.lastSweep = now
	full := p.settings.Load().PerAPIQPS
	for name, e := range p.paths {
		if now.Sub(e.lastUse) > idleAfter && e.rate >= full && now.After(e.blockedUntil) &&
			now.Sub(e.win.last) > idleAfter {
			delete(p.paths, name)
		}
	}
}

// reserve books the earliest turn for a call on name at or after earliest
// that both its path and the global window allow, unless it would come after
// deadline (zero: none). It also returns the path's rebook channel.
func (p *Pacer) reserve(name string, earliest, deadline time.Time) (time.Time, <-chan struct{}, error) {
	now := time.Now()
	if earliest.Before(now) {
		earliest = now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	at := p.settleLocked(e, earliest)
	if !deadline.IsZero() && at.After(deadline) {
		return time.Time{}, nil, &PacedError{Path: name, Wait: at.Sub(now)}
	}
	e.win.take(at, now)
	p.global.take(at, now)
	return at, e.rebook, nil
}

// Wait books a turn for one call on name no earlier than earliest and waits
// for it. A path throttled while the call waited is booked again after its
// penalty, at its lowered rate, so calls queued behind a throttle do not all
// go out into DingTalk's penalty. A turn after deadline gives a *PacedError
// at once; ctx ending gives ctx's error.
func (p *Pacer) Wait(ctx context.Context, name string, earliest, deadline time.Time) error {
	for {
		at, rebook, err := p.reserve(name, earliest, deadline)
		if err != nil {
			return err
		}
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-rebook:
				t.Stop()
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		select {
		case <-rebook: // throttled before the turn: the path's turn is void
			p.releaseGlobal(at)
		default:
			return nil
		}
	}
}

// releaseGlobal gives back a global turn its call will not use. (The path's
// turns after the throttle are dropped all at once.)
func (p *Pacer) releaseGlobal(at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.global.release(at)
}

// Next estimates, without booking, when a call on name could go at the
// earliest from earliest on.
func (p *Pacer) Next(name string, earliest time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.settleLocked(p.peekLocked(name), earliest)
}

// settleLocked is the earliest turn at or after at that e's penalty and
// window (e may be nil) and the global window allow; p.mu must be held.
func (p *Pacer) settleLocked(e *path, at time.Time) time.Time {
	if e != nil && e.blockedUntil.After(at) {
		at = e.blockedUntil
	}
	// The global window's turn may be later than the path's. A path's turns
	// are FIFO, so its window allows every time from its turn on: a second
	// round settles.
	for {
		if e != nil {
			at = e.win.next(at)
		}
		g := p.global.next(at)
		if !g.After(at) {
			return at
		}
		at = g
	}
}

// Throttled tells the pacer DingTalk throttled a call on name: the path's
// rate is cut to 70 % at once and no call goes before the penalty ends (at
// least 1 s from now, or until, when DingTalk named a later end). Throttles
// within one penalty (calls that were in flight together) cut the rate once.
// Calls waiting on the path book their turns again, after the penalty and at
// the lowered rate.
func (p *Pacer) Throttled(name string, until time.Time) {
	now := time.Now()
	if earliest := now.Add(penalty); until.Before(earliest) {
		until = earliest
	}
	full := p.settings.Load().PerAPIQPS
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	if !until.After(e.blockedUntil) {
		return // within a penalty that ends later anyway
	}
	if !now.Before(e.blockedUntil) { // a new penalty, not one extended
		e.rate = max(e.rate*decrease, full*minShare)
		e.win.setRate(e.rate)
	}
	e.blockedUntil = until
	e.lastRaise = until // success counts from the penalty's end
	// The turns booked ahead were booked at the old rate, some inside the
	// penalty: void them, and wake their callers to book again.
	e.win.dropAfter(now)
	close(e.rebook)
	e.rebook = make(chan struct{})
}

// Succeeded tells the pacer a call on name got through: a path cut by
// throttling regains increasePerSecond of its configured rate per second of
// success, up to the configured rate. It returns the path's rate and
// whether this call raised it.
func (p *Pacer) Succeeded(name string) (rate float64, raised bool) {
	full := p.settings.Load().PerAPIQPS
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.peekLocked(name)
	if e == nil || e.rate >= full {
		return full, false
	}
	now := time.Now()
	elapsed := now.Sub(e.lastRaise)
	if elapsed < 100*time.Millisecond {
		return e.rate, false
	}
	e.rate = min(full, e.rate+full*increasePerSecond*elapsed.Seconds())
	e.lastRaise = now
	e.win.setRate(e.rate)
	return e.rate, true
}

// Rate is name's current rate in calls per second (the configured one for a
// path not seen; the shared one for paths past the cap).
func (p *Pacer) Rate(name string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.peekLocked(name); e != nil {
		return e.rate
	}
	return p.settings.Load().PerAPIQPS
}

// Len is how many paths are paced on their own.
func (p *Pacer) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.paths)
}
