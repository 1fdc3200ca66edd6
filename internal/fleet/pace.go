package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
)

// Shared pacing: every proxy of the app books its turns in Redis, one round
// trip per call (the take script), so the fleet together stays under
// per_api_qps on each API and global_qps in all. The admission rule is the
// local pacer's, not a second one: each API, robot and the global budget is
// a sliding window of at most n calls in any span, with n and span from
// pacing.Window (so a burst within the limit goes at once, as alone), kept
// as a log of booked turns (a sorted set) instead of in memory. An API's
// and a robot's turns are handed out in order; the global log is booked out
// of order (an API's queue or penalty books turns far ahead, and the other
// APIs fill the gaps), as the local global window is.
//
// What a throttle teaches is learned once for the fleet: the penalty
// script blocks the API for every proxy and records the ceiling the
// fleet's sends in the current second measure; the rate after it is
// computed here, by the local pacer's own curve (pacing.Learned), from that
// ceiling and the penalty's end, which each take returns. A take made with
// an outdated ceiling is not booked: the proxy computes again with the
// ceiling Redis holds.

// What the scripts read is checked before use: Redis may hold values no
// proxy wrote (an operator's mistake, a restore, another program, a bug),
// and Lua reads "nan" and "inf" as numbers. A number that is not finite or
// lies outside its bounds is dropped (deleted from the hash, as if never
// written), a log entry further ahead than maxAhead is removed, and a key
// of another type is deleted; the reply says how many such values were
// found, and the proxy counts them in dingproxy_fleet_errors_total (pace,
// penalty). Every path of every script leaves each key it touches with an
// expiry, refusals included.

// maxPenalty is the longest penalty the fleet records or heeds: a robot's
// block (dingtalk.RobotBlock, ten minutes), DingTalk's longest. A 90002
// whose message names a later end is held to it.
const maxPenalty = dingtalk.RobotBlock * time.Second

// maxQueue is the longest a call is queued for its turn (a stated cap: a
// call with a later deadline, or none, is paced when its turn would come
// later).
const maxQueue = 10 * time.Minute

// maxAhead is the furthest ahead a turn is booked: the longest penalty and
// the longest queue after it. A turn, a "last" or a log entry further
// ahead is not the fleet's.
const maxAhead = maxPenalty + maxQueue

// Pacer paces through Redis while it answers, and through Local (this
// proxy's own pacer, which keeps learning from every answer) while it does
// not. It is the pacing layer's pacing.Turns.
type Pacer struct {
	Local *pacing.Pacer
	fleet *Fleet
	set   atomic.Pointer[pacing.Settings]
	seq   atomic.Uint64
	// apis holds what is kept of each API seen: its Redis keys (so a call
	// does not hash its name again) and the fleet's ceiling as last read;
	// at most maxKeyed of them.
	apis  sync.Map // api -> *sharedAPI
	keyed atomic.Int64
}

// sharedAPI is what a proxy keeps of an API's shared pacing.
type sharedAPI struct {
	robot bool
	keys  []string // state hash, log, global log
	mu    sync.Mutex
	// ceil is the fleet's learned ceiling (0: none), learned from a
	// penalty that ended at from (Redis's ms) and, here, at fromLocal.
	ceil      float64
	from      int64
	fromLocal time.Time
}

// maxKeyed bounds the APIs whose keys are kept.
const maxKeyed = 4096

// NewPacer returns the fleet's pacer over local, under s.
func (f *Fleet) NewPacer(local *pacing.Pacer, s pacing.Settings) *Pacer {
	p := &Pacer{Local: local, fleet: f}
	p.set.Store(&s)
	return p
}

// Update installs new configured rates, for both modes.
func (p *Pacer) Update(s pacing.Settings) {
	p.set.Store(&s)
	p.Local.Update(s)
}

// api returns what is kept of api (made anew, and kept while there is room).
func (p *Pacer) api(name string) *sharedAPI {
	if v, ok := p.apis.Load(name); ok {
		return v.(*sharedAPI)
	}
	f := p.fleet
	a := &sharedAPI{}
	global := f.key("pace", "global", "log")
	if rest, ok := strings.CutPrefix(name, pacing.RobotPrefix); ok {
		a.robot = true
		a.keys = []string{f.key("robotpace", rest), f.key("robotpace", rest, "log"), global}
	} else {
		d := Digest(name)
		a.keys = []string{f.key("pace", d), f.key("pace", d, "log"), global}
	}
	if p.keyed.Load() < maxKeyed {
		if v, loaded := p.apis.LoadOrStore(name, a); loaded {
			return v.(*sharedAPI)
		}
		p.keyed.Add(1)
	}
	return a
}

// learn keeps the fleet's ceiling as a reply gave it (milli-calls/s, its
// start in Redis's ms, Redis's now in ms).
func (a *sharedAPI) learn(ceilMilli, from, nowMS int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ceil, a.from = float64(ceilMilli)/1000, from
	a.fromLocal = time.Now().Add(time.Duration(from-nowMS) * time.Millisecond)
}

// window is the window api's turns run in now: (n, span), the rate, the
// ceiling's start it was computed from, and whether the climb reached the
// configured rate (the ceiling is to be forgotten).
func (a *sharedAPI) window(s *pacing.Settings) (n int, span time.Duration, rate float64, from int64, clear bool) {
	if a.robot {
		n = s.RobotPerMinute
		if n <= 0 {
			n = dingtalk.RobotPerMinute
		}
		return n, pacing.RobotSpan, float64(n) / dingtalk.RobotWindow.Seconds(), 0, false
	}
	a.mu.Lock()
	ceil, from, fromLocal := a.ceil, a.from, a.fromLocal
	a.mu.Unlock()
	rate, learned := s.PerAPIQPS, false
	if ceil > 0 {
		rate, learned = pacing.Learned(ceil, time.Since(fromLocal).Seconds(), s.PerAPIQPS)
	}
	n, span = pacing.Window(rate, learned)
	return n, span, rate, from, ceil > 0 && !learned
}

// Wait books a turn in Redis (one round trip) and waits for it; with Redis
// down it is Local.Wait. A turn that a penalty met by any proxy voids
// (Local knows: its own answers and the fleet's penalty messages) is booked
// again.
func (p *Pacer) Wait(ctx context.Context, api string, earliest, deadline time.Time) error {
	for range 4 {
		wait, err := p.take(ctx, api, earliest, deadline)
		if err != nil {
			if _, ok := err.(*pacing.PacedError); ok {
				return err
			}
			return p.Local.Wait(ctx, api, earliest, deadline)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		// A penalty met meanwhile (here, or by another proxy) voids a turn
		// inside it: book again after it.
		until := p.Local.BlockedUntil(api)
		if !until.After(time.Now()) {
			return nil
		}
		earliest = until
	}
	return nil
}

// take runs the take script: the wait until the booked turn, or a
// *pacing.PacedError, or another error (Redis down: alone). A reply that
// the ceiling changed is computed again once more.
func (p *Pacer) take(ctx context.Context, api string, earliest, deadline time.Time) (time.Duration, error) {
	s := p.set.Load()
	a := p.api(api)
	gn, gspan := pacing.Window(s.GlobalQPS, false)
	for range 3 {
		n, span, rate, from, clear := a.window(s)
		now := time.Now()
		at := max(0, earliest.Sub(now).Microseconds())
		most := maxAhead.Microseconds()
		if !deadline.IsZero() {
			most = min(most, max(0, deadline.Sub(now).Microseconds()))
		}
		count := "1"
		if a.robot {
			count = "0"
		}
		member := strconv.FormatUint(p.seq.Add(1), 36) + p.fleet.events.id
		var res []int64
		err := p.fleet.do(ctx, OpPace, func(ctx context.Context) (err error) {
			res, err = takeScript.Run(ctx, p.fleet.rdb, a.keys, at, most, n, span.Microseconds(), gn, gspan.Microseconds(),
				member, from, strconv.FormatFloat(rate, 'f', 3, 64), flag(clear), count,
				maxAhead.Microseconds(), maxPenalty.Milliseconds()).Int64Slice()
			return err
		})
		if err != nil {
			return 0, err
		}
		if len(res) != 6 {
			return 0, fmt.Errorf("fleet: take: unexpected reply %v", res)
		}
		if res[5] > 0 {
			p.fleet.failed(OpPace) // values out of bounds, dropped
		}
		wait := time.Duration(res[1]) * time.Microsecond
		switch res[0] {
		case 1:
			if clear {
				a.learn(0, 0, res[4])
			}
			return wait, nil
		case 0:
			return 0, &pacing.PacedError{Path: api, Wait: wait}
		}
		a.learn(res[2], res[3], res[4]) // the ceiling changed: again
	}
	return 0, fmt.Errorf("fleet: take: the ceiling of %s keeps changing", api)
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Next is Local's estimate: a retry that would wait past its deadline is
// not made (shared mode's own turns are booked in Wait).
func (p *Pacer) Next(api string, earliest time.Time) time.Time {
	return p.Local.Next(api, earliest)
}

// Answered tells Local (always) and, for a throttle, the fleet: the
// penalty blocks the API for every proxy and teaches the fleet its ceiling.
func (p *Pacer) Answered(api string, r dingtalk.Result) pacing.Change {
	c := p.Local.Answered(api, r)
	var kind string
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		kind = "rate"
	case dingtalk.ReasonMinuteLimit, dingtalk.ReasonRobotThrottled:
		kind = "block"
	default:
		return c
	}
	if !p.fleet.Up() {
		return c
	}
	d := min(time.Until(dingtalk.Penalty(r, time.Now())), maxPenalty)
	s := p.set.Load()
	sh := pacing.TheShape
	a := p.api(api)
	var res []int64
	err := p.fleet.do(context.Background(), OpPenalty, func(ctx context.Context) (err error) {
		res, err = penaltyScript.Run(ctx, p.fleet.rdb, a.keys[:2], kind, d.Milliseconds(), s.PerAPIQPS,
			sh.Beta, sh.Floor, sh.Margin, sh.MinMeasured, p.fleet.key("events"), p.fleet.events.id, api,
			maxPenalty.Milliseconds(), maxAhead.Microseconds()).Int64Slice()
		return err
	})
	if err != nil {
		p.fleet.log.Debug("fleet: could not share a penalty", zap.String("error", redactErr(err)))
		return c
	}
	if len(res) != 5 {
		return c
	}
	if res[4] > 0 {
		p.fleet.failed(OpPenalty) // values out of bounds, dropped
	}
	if kind == "rate" {
		a.learn(res[1], res[2], res[3])
	}
	return c
}
