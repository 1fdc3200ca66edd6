package pacing

import (
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The rate side of pacing: how DingTalk's throttles cut a path's rate and
// successes raise it again. (Wait, Next and the windows are the turn side.)

// Answered takes the attempt loop's feedback on an attempt on name: a
// throttle answer (90018 and its kin, HTTP 429) cuts the path's rate and
// blocks it for DingTalk's penalty (Throttled); a success raises a cut rate
// again (Succeeded); anything else changes nothing. OnRate, if set, hears
// of every change of a path's rate.
func (p *Pacer) Answered(name string, r dingtalk.Result) {
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		p.Throttled(name, r.PenaltyEnd)
		if p.OnRate != nil {
			p.OnRate(name, p.Rate(name))
		}
	case dingtalk.ReasonSuccess:
		if rate, raised := p.Succeeded(name); raised && p.OnRate != nil {
			p.OnRate(name, rate)
		}
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
