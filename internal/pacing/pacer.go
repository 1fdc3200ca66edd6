package pacing

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Settings are the configured rates.
type Settings struct {
	// PerAPIQPS is the most calls per second on one path.
	PerAPIQPS float64
	// GlobalQPS is the most calls per second in all.
	GlobalQPS float64
	// RobotPerMinute is the most messages a minute one custom robot sends
	// (DingTalk's 20); 0 means that.
	RobotPerMinute int
}

// RobotSpan is the span of a robot's window, alone and shared: a minute, and a margin.
// DingTalk counts a robot's sends in any minute by when each reaches it,
// pacing by when it hands out the turn; a send slower from its turn to
// DingTalk (a new connection, a pause) than one a minute later would
// otherwise make the later one the 21st of DingTalk's minute, and block
// the robot for 10 minutes. A kept send is delivered the moment its turn
// frees, so the two meet at every minute's edge.
const RobotSpan = dingtalk.RobotWindow + time.Second

// RobotPrefix starts the pacing names of custom robots: RobotPrefix and a
// digest of the robot's access_token, never the token itself. Each robot is
// paced on its own, RobotPerMinute in any minute.
const RobotPrefix = "robot:"

// maxRobots caps the robots paced on their own; past it (after idle ones
// are forgotten) a new robot is not paced, rather than share a window with
// others.
const maxRobots = 100000

const (
	// margin keeps each window's count a little under the limit: DingTalk
	// counts calls in one-second windows as they arrive, and arrival jitter
	// can move a call or two across a window's edge.
	margin = 0.9
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

// Pacer hands out turns. It is safe for concurrent use.
type Pacer struct {
	settings atomic.Pointer[Settings]

	mu        sync.Mutex
	global    *window
	paths     map[string]*path
	robots    map[string]*path
	overflow  *path
	lastSweep time.Time
}

type path struct {
	win          *window
	rate         float64   // current rate, <= configured
	booked       float64   // the rate the turns booked ahead were booked at
	blockedUntil time.Time // DingTalk's penalty ends then
	lastUse      time.Time
	lastRaise    time.Time
	// learned is set while the rate is one a throttle taught, under the
	// configured one; ceiling is what the path delivered then (the limit's
	// estimate), and climbFrom when the climb back started.
	learned   bool
	ceiling   float64
	climbFrom time.Time
	// got counts the calls that got through (not throttled), over 2 s;
	// gotMinute over a minute, for per-minute limits.
	got, gotMinute meter
	// minute, once a per-minute limit was met, holds the path to the
	// per-minute budget it learned; nil before.
	minute *window
	// rebook is closed when a throttle voids the turns booked ahead on
	// the path: their callers book again.
	rebook chan struct{}
}

func newPath(rate float64) *path {
	return &path{win: newWindow(rate, true), rate: rate, rebook: make(chan struct{}),
		got: newMeter(20, 100*time.Millisecond), gotMinute: newMeter(60, time.Second)}
}

// New returns a Pacer under s.
func New(s Settings) *Pacer {
	p := &Pacer{paths: make(map[string]*path), robots: make(map[string]*path), global: newWindow(s.GlobalQPS, false)}
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
		if !e.learned || e.rate > s.PerAPIQPS {
			e.rate = s.PerAPIQPS
		}
		if e.learned {
			e.win.setEven(e.rate)
		} else {
			e.win.setRate(e.rate)
		}
	}
}

func (p *Pacer) pathsLocked() []*path {
	out := make([]*path, 0, len(p.paths))
	for _, e := range p.paths {
		out = append(out, e)
	}
	return out
}

// robotPerMinute is the configured robot limit.
func (p *Pacer) robotPerMinute() int {
	if n := p.settings.Load().RobotPerMinute; n > 0 {
		return n
	}
	return dingtalk.RobotPerMinute
}

// getLocked returns name's pacing state, creating it; p.mu must be held. A
// robot past maxRobots gets nil: not paced.
func (p *Pacer) getLocked(name string, now time.Time) *path {
	if now.Sub(p.lastSweep) > idleAfter/4 {
		p.sweepLocked(now)
	}
	if strings.HasPrefix(name, RobotPrefix) {
		e, ok := p.robots[name]
		if !ok {
			if len(p.robots) >= maxRobots {
				return nil
			}
			n := p.robotPerMinute()
			e = &path{win: newWindowN(n, RobotSpan), rate: float64(n) / dingtalk.RobotWindow.Seconds(), rebook: make(chan struct{})}
			p.robots[name] = e
		}
		e.lastUse = now
		return e
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
	if strings.HasPrefix(name, RobotPrefix) {
		return p.robots[name]
	}
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
		if now.Sub(e.lastUse) > idleAfter && !e.learned && e.rate >= full && now.After(e.blockedUntil) &&
			now.Sub(e.win.last) > idleAfter {
			delete(p.paths, name)
		}
	}
	// A robot idle for its window's span, and not blocked, holds nothing.
	for name, e := range p.robots {
		if now.Sub(e.lastUse) > RobotSpan && now.After(e.blockedUntil) && now.Sub(e.win.last) > RobotSpan {
			delete(p.robots, name)
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
	p.global.take(at, now)
	if e == nil { // a robot past maxRobots
		return at, nil, nil
	}
	e.win.take(at, now)
	if e.minute != nil {
		e.minute.take(at, now)
	}
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
	// The global window's turn may be later than the path's, and a learned
	// per-minute budget's later than both. A path's windows are FIFO, so
	// each allows every time from its turn on: rounds until none moves it.
	for {
		from := at
		if e != nil {
			at = e.win.next(at)
			if e.minute != nil {
				at = e.minute.next(at)
			}
		}
		at = p.global.next(at)
		if !at.After(from) {
			return at
		}
	}
}

// Len is how many paths are paced on their own.
func (p *Pacer) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.paths)
}
