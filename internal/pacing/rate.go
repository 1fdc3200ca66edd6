package pacing

import (
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The rate side of pacing: how a path learns the limit DingTalk really
// allows from its throttles, and probes upward again while calls succeed.
// (Wait, Next and the windows are the turn side.) The shape is AWS's
// adaptive retry mode: on a throttle the rate becomes β·min(measured,
// current), and it climbs back along a CUBIC curve around the measure.

const (
	// beta is the multiplicative decrease on a throttle.
	beta = 0.9
	// floorRate is the least rate a path is cut to, in calls per second.
	floorRate = 0.2
	// cubicK is how long the climb back to the ceiling takes after a
	// penalty, in seconds: the concave half of the curve.
	cubicK = 2.0
	// cubicC sets how slowly a path probes past the ceiling it found: 10 %
	// above it ∛(0.1/cubicC) = 11.9 s after reaching it, twice it 27 s
	// after. A probe that finds the limit costs every sender of the app a
	// second of DingTalk's penalty, so a path that found its limit probes
	// rarely; one whose limit rose finds that out within half a minute.
	cubicC = 0.00006
	// hold is how near the ceiling the climb back goes before it probes.
	hold = 0.95
	// minMeasured is the fewest calls that got through since the last
	// penalty for what got through to count as a measure of the limit.
	minMeasured = 5
	// rebookStep is how much a raise must lift the rate the waiting calls'
	// turns were booked at before they book again at the new rate.
	rebookStep = 1.05
)

// Shape is the learning's constants that a shared pacer's Redis script
// needs to take the fleet's measure when a throttle comes (the fleet's
// penalty script); the curve itself runs here only (Learned).
type Shape struct {
	Beta, Floor, Margin float64
	MinMeasured         int
}

// TheShape is the learning's constants.
var TheShape = Shape{Beta: beta, Floor: floorRate, Margin: margin, MinMeasured: minMeasured}

// Learned is the rate of a path whose throttle taught it ceiling, t
// seconds after the penalty's end (negative: during it), under the
// configured rate cfg: β·ceiling during the penalty, then the climb,
// never under floorRate. learned is false once the climb reaches cfg:
// nothing learned holds then. The local pacer and the fleet's run this
// one curve.
func Learned(ceiling, t, cfg float64) (rate float64, learned bool) {
	r := ceiling * beta
	if t >= 0 {
		r = climb(ceiling, t)
	}
	if r >= cfg {
		return cfg, false
	}
	return max(floorRate, r), true
}

// Window is the sliding window a rate runs as: at most n calls in any
// span, n·(1 s/span) being rate·margin a second; even, one call every
// 1/(rate·margin) seconds (a learned rate). The local pacer's windows and
// the fleet's Redis logs are both this.
func Window(rate float64, even bool) (n int, span time.Duration) {
	w := &window{}
	w.set(rate, even)
	return w.n, w.span
}

// climb is the rate t seconds after a penalty's end on a path whose
// ceiling estimate is ceiling: β·ceiling at 0, up a concave curve to
// hold·ceiling at cubicK, then a slow convex probe past it. At the ceiling
// a path sends exactly what got through before the throttle; every sender
// of an app there together sends the limit, and any jitter across one of
// DingTalk's seconds is a throttle (and a second's penalty for all): the
// climb stops short of it, and only the probe goes on.
func climb(ceiling, t float64) float64 {
	top := ceiling * hold
	if t < cubicK {
		d := 1 - t/cubicK
		return top - (top-ceiling*beta)*d*d*d
	}
	d := t - cubicK
	return top * (1 + cubicC*d*d*d)
}

// Change is what an answer did to an API's rate: from and to, and whether
// it changed.
type Change struct {
	From, To float64
	Changed  bool
}

// Answered takes the feedback on an attempt on name, as DingTalk answered
// it: a throttle answer (90018 and its kin, HTTP 429) cuts the path's rate
// and blocks it for DingTalk's penalty (Throttled); a success raises a cut
// rate again (Succeeded); a per-minute limit pauses it until the minute
// turns (MinuteLimited); a robot past its minute is blocked (Block); anything
// else changes nothing. The penalties are dingtalk.Penalty's. It returns
// what became of the path's rate.
func (p *Pacer) Answered(name string, r dingtalk.Result) Change {
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		from, to, changed := p.throttled(name, dingtalk.Penalty(r, time.Now()))
		return Change{From: from, To: to, Changed: changed}
	case dingtalk.ReasonSuccess:
		from, to, raised := p.succeeded(name)
		return Change{From: from, To: to, Changed: raised}
	case dingtalk.ReasonMinuteLimit:
		p.MinuteLimited(name)
	case dingtalk.ReasonRobotThrottled:
		p.Block(name, dingtalk.Penalty(r, time.Now()))
	case dingtalk.ReasonUnknownAPI:
		p.forget(name)
	}
	return Change{}
}

// forget drops name's pacing state when DingTalk knows no such API and the
// state holds nothing learned, so that paths it does not know do not fill
// the pacer (past maxPaths, paths share one window).
func (p *Pacer) forget(name string) {
	full := p.settings.Load().PerAPIQPS
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.paths[name]; ok && !e.learned && e.rate >= full && !time.Now().Before(e.blockedUntil) {
		delete(p.paths, name)
	}
}

// Throttled tells the pacer DingTalk throttled a call on name. The path
// learns its limit from what got through: its rate becomes β times what it
// delivered in the last second or two, over the window's margin (never more
// than β times its rate),
// at least floorRate; that measure is remembered as the path's ceiling
// estimate, which successes climb back to along a CUBIC curve (Succeeded).
// No call goes before the penalty ends (at least 1 s from now, or until,
// when DingTalk named a later end). Throttles within one penalty (calls that
// were in flight together) cut the rate once. Calls waiting on the path book
// their turns again, after the penalty and at the new rate.
func (p *Pacer) Throttled(name string, until time.Time) {
	p.throttled(name, until)
}

// throttled is Throttled; it returns the rate before and after, and whether
// it changed.
func (p *Pacer) throttled(name string, until time.Time) (from, to float64, changed bool) {
	now := time.Now()
	if earliest := dingtalk.Penalty(dingtalk.Result{Reason: dingtalk.ReasonRateLimited}, now); until.Before(earliest) {
		until = earliest
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	if e == nil {
		return 0, 0, false
	}
	from = e.rate
	if !until.After(e.blockedUntil) {
		return from, from, false // within a penalty that ends later anyway
	}
	if !now.Before(e.blockedUntil) { // a new penalty, not one extended
		// What got through, in the units of the rate: a window sends at
		// most margin·rate, so a path that delivered all its window allowed
		// has a ceiling of its rate, not 90 % of it (else every throttle
		// would compound the margin: a spiral down to the floor).
		// The measure counts only since the last penalty ended (calls
		// blocked by it did not fail to get through), and only once it
		// holds enough to go on: a path that sent too little since then
		// keeps its rate as the ceiling, so scattered throttles cannot
		// spiral a quiet path down to the floor.
		delivered, n := e.got.since(now, e.climbFrom)
		// Within the current second what got through is at most DingTalk's
		// limit whichever way it counts its seconds (a sliding measure
		// straddling two of its counting seconds may hold up to twice the
		// limit): the better measure, once half a second holds enough.
		from := now.Truncate(time.Second)
		if e.climbFrom.After(from) {
			from = e.climbFrom
		}
		if now.Sub(from) >= time.Second/2 {
			if c := e.got.countFrom(now, from); c >= minMeasured {
				delivered, n = float64(c), c
			}
		}
		ceiling := e.rate
		if n >= minMeasured {
			ceiling = min(ceiling, delivered/margin)
		}
		e.ceiling = max(floorRate, ceiling)
		e.rate = max(floorRate, ceiling*beta)
		e.learned = true
		e.win.setEven(e.rate)
	}
	e.booked = e.rate
	e.blockedUntil = until
	e.climbFrom = until // the climb counts from the penalty's end
	e.lastRaise = until
	// The turns booked ahead were booked at the old rate, some inside the
	// penalty: void them, and wake their callers to book again.
	e.win.dropAfter(now)
	close(e.rebook)
	e.rebook = make(chan struct{})
	return from, e.rate, e.rate != from
}

// Succeeded tells the pacer a call on name got through. It counts toward
// what the path delivers, and a path that learned a lower rate climbs back:
// fast while well under its ceiling estimate, slowly around it (where the
// limit was found), then faster again once past it without a throttle, the
// CUBIC curve rate(t) = ceiling·(1 + cubicC·(t−K)³), K = ∛((1−β)/cubicC),
// t from the penalty's end. Never above the configured rate. It returns the
// path's rate and whether this call raised it.
func (p *Pacer) Succeeded(name string) (rate float64, raised bool) {
	_, rate, raised = p.succeeded(name)
	return rate, raised
}

// succeeded is Succeeded, with the rate before.
func (p *Pacer) succeeded(name string) (from, rate float64, raised bool) {
	full := p.settings.Load().PerAPIQPS
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.peekLocked(name)
	if e == nil {
		return full, full, false
	}
	if e.got.counts == nil { // a robot: a fixed window, nothing to learn
		return e.rate, e.rate, false
	}
	e.got.add(now)
	e.gotMinute.add(now)
	if !e.learned || e.rate >= full || now.Sub(e.lastRaise) < 100*time.Millisecond {
		return e.rate, e.rate, false
	}
	t := now.Sub(e.climbFrom).Seconds()
	if t < 0 {
		return e.rate, e.rate, false
	}
	w, learned := Learned(e.ceiling, t, full)
	if w <= e.rate {
		return e.rate, e.rate, false
	}
	from = e.rate
	e.rate = w
	e.lastRaise = now
	if !learned {
		e.learned = false // back at the configured rate: nothing learned holds
		e.win.setRate(e.rate)
	} else {
		e.win.setEven(e.rate)
	}
	// Calls queued on the path booked their turns at the lower rate; once
	// the rate is a step above it, they book again (else a queued path
	// would drain at its cut rate long after the rate climbed back).
	if e.rate >= e.booked*rebookStep || !e.learned {
		e.booked = e.rate
		e.win.dropAfter(now)
		close(e.rebook)
		e.rebook = make(chan struct{})
	}
	return from, e.rate, true
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

// MinuteLimited tells the pacer DingTalk answered a per-minute limit
// (90006, 90005, api QpmLimit*) on name: the path pauses until the minute
// turns, and from then on keeps to a per-minute budget of β times what got
// through in the last minute (lowered the same way at each such answer).
func (p *Pacer) MinuteLimited(name string) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.getLocked(name, now)
	if e == nil || now.Before(e.blockedUntil) && e.minute != nil {
		return // within a pause already
	}
	got, _ := e.gotMinute.count(now, time.Minute)
	budget := int(float64(got) * beta)
	if e.minute != nil {
		budget = min(budget, e.minute.n)
	}
	e.minute = newWindowN(max(1, budget), time.Minute)
	e.learned = true
	p.blockLocked(e, now.Truncate(time.Minute).Add(time.Minute), now)
}

// Block stops every call on name until until: a robot's 10 minutes, or a
// penalty another proxy of the fleet met. Calls waiting on name book again
// after it.
func (p *Pacer) Block(name string, until time.Time) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.getLocked(name, now); e != nil && until.After(e.blockedUntil) {
		p.blockLocked(e, until, now)
	}
}

// BlockedUntil is when name's penalty or block ends (zero or past: none).
func (p *Pacer) BlockedUntil(name string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.peekLocked(name); e != nil {
		return e.blockedUntil
	}
	return time.Time{}
}

// blockLocked blocks e until until and has its waiting calls book again.
func (p *Pacer) blockLocked(e *path, until, now time.Time) {
	e.blockedUntil = until
	e.win.dropAfter(now)
	if e.minute != nil {
		e.minute.dropAfter(now)
	}
	close(e.rebook)
	e.rebook = make(chan struct{})
}
