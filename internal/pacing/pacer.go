package pacing

import (
	"context"
	"fmt"
	"math"
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
	// maxRing bounds the send times kept per window. A rate above it is
	// enforced as maxRing calls per maxRing/rate seconds.
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
// span. It remembers the send times it handed out, oldest first out; turns
// are handed out in order, so they never decrease.
type window struct {
	times []time.Time // ring of the last len(times) turns
	head  int         // next slot to write
	count int         // turns written, up to len(times)
	n     int         // calls allowed per span, <= len(times)
	span  time.Duration
	last  time.Time // the latest turn handed out
}

func newWindow(rate float64) *window {
	w := &window{}
	w.setRate(rate)
	return w
}

// setRate makes the window allow rate·margin calls per second.
func (w *window) setRate(rate float64) {
	per := rate * margin
	n := int(math.Floor(per))
	span := time.Second
	if n < 1 { // under one call a second: one call per 1/per seconds
		n, span = 1, time.Duration(float64(time.Second)/per)
	}
	if n > maxRing {
		span = time.Duration(float64(time.Second) * maxRing / per)
		n = maxRing
	}
	if n > len(w.times) {
		grown := make([]time.Time, n)
		for i := 0; i < w.count; i++ { // oldest first
			grown[i] = w.times[(w.head-w.count+i+2*len(w.times))%max(len(w.times), 1)]
		}
		w.times, w.head = grown, w.count%n
	}
	w.n, w.span = n, span
}

// next is the earliest turn at or after t this window allows.
func (w *window) next(t time.Time) time.Time {
	if w.last.After(t) {
		t = w.last
	}
	if w.count >= w.n {
		nth := w.times[(w.head-w.n+len(w.times))%len(w.times)] // the n-th latest turn
		if free := nth.Add(w.span); free.After(t) {
			t = free
		}
	}
	return t
}

func (w *window) take(t time.Time) {
	w.times[w.head] = t
	w.head = (w.head + 1) % len(w.times)
	if w.count < len(w.times) {
		w.count++
	}
	w.last = t
}

// Pacer hands out turns. It is safe for concurrent use.
type Pacer struct {
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
}

// New returns a Pacer under s.
func New(s Settings) *Pacer {
	p := &Pacer{paths: make(map[string]*path), global: newWindow(s.GlobalQPS)}
	p.settings.Store(&s)
	p.overflow = &path{win: newWindow(s.PerAPIQPS), rate: s.PerAPIQPS}
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
		e = &path{win: newWindow(full), rate: full}
		p.paths[name] = e
	}
	e.lastUse = now
	return e
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
// deadline (zero: none).
func (p *Pacer) reserve(name string, earliest, deadline time.Time) (time.Time, error) {
	now := time.Now()
	if earliest.Before(now) {
		earliest = now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	at := earliest
	if e.blockedUntil.After(at) {
		at = e.blockedUntil
	}
	// The path's and the global window's turns: each later one may push the
	// other, so settle on a turn both allow.
	for range 4 {
		at = e.win.next(at)
		g := p.global.next(at)
		if !g.After(at) {
			break
		}
		at = g
	}
	if !deadline.IsZero() && at.After(deadline) {
		return time.Time{}, &PacedError{Path: name, Wait: at.Sub(now)}
	}
	e.win.take(at)
	p.global.take(at)
	return at, nil
}

// Wait books a turn for one call on name no earlier than earliest and waits
// for it. A path throttled while the call waited is booked again after its
// penalty, at its lowered rate, so calls queued behind a throttle do not all
// go out into DingTalk's penalty. A turn after deadline gives a *PacedError
// at once; ctx ending gives ctx's error.
func (p *Pacer) Wait(ctx context.Context, name string, earliest, deadline time.Time) error {
	for {
		at, err := p.reserve(name, earliest, deadline)
		if err != nil {
			return err
		}
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		blocked := p.blockedUntil(name)
		if !time.Now().Before(blocked) {
			return nil
		}
		earliest = blocked
	}
}

// Next estimates, without booking, when a call on name could go at the
// earliest from earliest on.
func (p *Pacer) Next(name string, earliest time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	at := earliest
	if e, ok := p.paths[name]; ok {
		if e.blockedUntil.After(at) {
			at = e.blockedUntil
		}
		at = e.win.next(at)
	}
	return p.global.next(at)
}

func (p *Pacer) blockedUntil(name string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.paths[name]; ok {
		return e.blockedUntil
	}
	return time.Time{}
}

// Throttled tells the pacer DingTalk throttled a call on name: the path's
// rate is cut to 70 % at once and no call goes before the penalty ends (at
// least 1 s from now, or until, when DingTalk named a later end). Throttles
// within one penalty (calls that were in flight together) cut the rate once.
func (p *Pacer) Throttled(name string, until time.Time) {
	now := time.Now()
	if earliest := now.Add(penalty); until.Before(earliest) {
		until = earliest
	}
	full := p.settings.Load().PerAPIQPS
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	inPenalty := now.Before(e.blockedUntil)
	if until.After(e.blockedUntil) {
		e.blockedUntil = until
	}
	if inPenalty {
		return
	}
	e.rate = max(e.rate*decrease, full*minShare)
	e.lastRaise = now
	e.win.setRate(e.rate)
}

// Succeeded tells the pacer a call on name got through: a path cut by
// throttling regains increasePerSecond of its configured rate per second of
// success, up to the configured rate.
func (p *Pacer) Succeeded(name string) {
	full := p.settings.Load().PerAPIQPS
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.paths[name]
	if !ok || e.rate >= full {
		return
	}
	now := time.Now()
	elapsed := now.Sub(e.lastRaise)
	if elapsed < 100*time.Millisecond {
		return
	}
	e.rate = min(full, e.rate+full*increasePerSecond*elapsed.Seconds())
	e.lastRaise = now
	e.win.setRate(e.rate)
}

// Rate is name's current rate in calls per second (the configured one for a
// path not seen).
func (p *Pacer) Rate(name string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.paths[name]; ok {
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
