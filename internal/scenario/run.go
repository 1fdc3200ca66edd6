package scenario

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	dpfleet "github.com/dingproxy/dingproxy/internal/fleet"
	outboxpkg "github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// maxInFlight bounds concurrent client calls; it is above any scenario's
// calls in flight (dingproxy queues up to ~300 in the throttle scenario),
// so the bound never bends the arrival schedule.
const maxInFlight = 1024

// maxCalls bounds one run of one scenario for one client.
const maxCalls = 20000

// RunOptions shape one client's run of one scenario.
type RunOptions struct {
	// Scale multiplies the scenario's durations and times; default 1.
	Scale float64
	// Seed seeds the fake's fault draws and a random workload; default 1.
	Seed int64
	// Redis is the server the shared proxies (ProxyShared) use.
	Redis *redistest.Server
	// OnCall, if set, sees every call's outcome.
	OnCall func(bench.Outcome)
	// OnTick, if set, is told of every token revocation: it took effect
	// between from and to.
	OnTick func(from, to time.Time)
}

// runState is what one run's timed faults act on and record.
type runState struct {
	fake     *dingtalktest.Server
	redis    *redistest.Server // nil alone
	prefix   string            // the shared proxies' key prefix
	replicas int

	banFrom   int // upstream attempts when the ban began; -1: no ban
	backAt    time.Time
	shareWait chan time.Duration // how long after backAt every proxy listened again
}

// event is something done to the fake or to Redis at a time into the load.
type event struct {
	at time.Duration // scaled
	do func(x *runState)
}

// events are the faults' timed ones, at scale.
func (f Faults) events(scale float64) []event {
	var out []event
	if b := f.Ban; b != nil {
		out = append(out, event{scaled(b.At, scale), func(x *runState) {
			x.banFrom = bench.Upstream(x.fake)
			x.fake.SetChaos(b.chaos())
		}})
	}
	if r := f.RedisDown; r != nil {
		out = append(out, event{scaled(r.At, scale), func(x *runState) {
			if x.redis != nil {
				x.redis.Shutdown()
			}
		}}, event{scaled(r.Back, scale), func(x *runState) {
			if x.redis == nil || x.redis.Restart() != nil {
				return
			}
			x.backAt = time.Now()
			go x.watchShared(x.backAt)
		}})
	}
	return out
}

// watchShared waits (up to 30 s) until every replica listens on the
// fleet's channel again after Redis came back at from, and says how long
// that took.
func (x *runState) watchShared(from time.Time) {
	ch := dpfleet.Prefix(x.prefix, dingtalktest.DefaultAppKey) + "events"
	for time.Since(from) < 30*time.Second {
		if n, err := x.redis.Do("PUBSUB", "NUMSUB", ch); err == nil && n == ch+" "+fmt.Sprint(x.replicas) {
			x.shareWait <- time.Since(from)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(x.shareWait)
}

// Run runs the scenario for client mode m against a fresh fake (and fresh
// dingproxies): the fake starts, the client is readied, the faults come,
// and the calls go out on an open-loop schedule. It stops early when ctx
// ends.
func Run(ctx context.Context, sc Scenario, m bench.Mode, o RunOptions) (Row, error) {
	if err := sc.validate(); err != nil {
		return Row{}, err
	}
	if o.Scale <= 0 {
		o.Scale = 1
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	x := &runState{banFrom: -1, shareWait: make(chan time.Duration, 1), replicas: sc.replicas()}
	if slices.Contains(Shared, m) {
		x.redis = o.Redis
		x.prefix = fmt.Sprintf("res%d", sharedRuns.Add(1))
	}
	var outbox string
	if m == ProxyDeferred || m == ProxyFleetDeferred {
		tmp, err := os.MkdirTemp("", "dingproxy-scenario-")
		if err != nil {
			return Row{}, err
		}
		defer os.RemoveAll(tmp)
		outbox = filepath.Join(tmp, "outbox")
	}
	c, err := sc.client(m, x.redis, x.prefix, outbox)
	if err != nil {
		return Row{}, err
	}
	calls, rate := sc.load(o.Scale)
	setup := sc.Faults.setup
	var refused *refusal
	if d := scaled(sc.Faults.Refuse, o.Scale); d > 0 {
		refused = newRefusal(d)
		setup = func(f *dingtalktest.Server) {
			sc.Faults.setup(f)
			refused.start(f)
		}
	}
	var dl deliveries
	var settle func(context.Context, *dingtalktest.Server, bench.Timing, []bench.Outcome)
	procs, _ := c.Via.(*bench.Processes)
	var kl killed
	var killErr error
	var states map[string]int
	if sc.DeliverWithin > 0 {
		paths := sc.sendRoutes()
		settle = func(ctx context.Context, f *dingtalktest.Server, t bench.Timing, outs []bench.Outcome) {
			if k := sc.Faults.Kill; k != nil && procs != nil {
				if kl, killErr = k.kill(ctx, procs, o.Scale, t.Begin.Add(t.Elapsed), refused); killErr != nil {
					return
				}
			}
			from := t.Begin
			if refused != nil {
				refused.wait(ctx)
				from = refused.upAt
			}
			var settled func() bool
			var hc *http.Client
			ids := keptIDs(outs)
			if procs != nil {
				hc = bench.HTTPClient(5*time.Second, 4, 0)
				defer hc.CloseIdleConnections()
				settled = func() bool {
					st := sendStates(ctx, hc, procs, ids)
					return st[string(outboxpkg.Queued)] == 0 && st["?"] == 0
				}
			}
			if (m == ProxyDeferred || m == ProxyFleetDeferred) && !from.IsZero() {
				until := from.Add(sc.DeliverWithin + awaitGrace)
				switch {
				case !kl.at.IsZero() && kl.holder:
					until = kl.at.Add(sc.DeliverWithin + awaitGrace)
				case !kl.at.IsZero():
					until = until.Add(kl.restart)
				}
				awaitDeliveries(ctx, f, paths, calls, until, settled)
			}
			dl = countDeliveries(f, paths, calls)
			if procs != nil {
				states = sendStates(ctx, hc, procs, ids)
			}
		}
	}
	events := sc.Faults.events(o.Scale)
	fired := make([]bool, len(events))
	every := scaled(sc.Faults.RevokeTokensEvery, o.Scale)
	nextTick := every
	var snapped bool
	var snapAttempts, snapThrottled int
	out := sc.Faults.Outage
	var lift time.Duration // when the outage ends, if it does within the run
	if out != nil && out.For > 0 {
		lift = scaled(out.For, o.Scale)
	}
	firstAfter := calls // the first call made after the outage
	r, err := bench.Run(ctx, c, bench.Load{
		Seed:        o.Seed,
		Fake:        sc.Faults.fake(),
		Rate:        rate,
		Calls:       calls,
		MaxInFlight: maxInFlight,
		Call:        sc.Work.Calls(o.Seed, sc.replicas()),
		Setup:       setup,
		Settle:      settle,
		QuotaPaths:  metered(sc),
		Before: func(f *dingtalktest.Server, i int, since time.Duration) {
			x.fake = f
			if lift > 0 && firstAfter == calls && since >= lift {
				f.SetChaos(dingtalktest.Chaos{})
				firstAfter = i
			}
			for k, ev := range events {
				if !fired[k] && since >= ev.at {
					fired[k] = true
					ev.do(x)
				}
			}
			if every > 0 && since >= nextTick {
				from := time.Now()
				f.ExpireTokens()
				if o.OnTick != nil {
					o.OnTick(from, time.Now())
				}
				// Once per period, even after a stall of the arrival
				// loop: ticks missed are skipped, not fired in a burst
				// (two revocations a few ms apart are not "every 2 s").
				for since >= nextTick {
					nextTick += every
				}
			}
			if sc.Warmup > 0 && !snapped && since >= sc.Warmup {
				snapped = true
				snapAttempts, snapThrottled = bench.Upstream(f), f.Throttled()
			}
		},
	})
	row := Row{Scenario: sc.Name, Mode: m, Elapsed: r.Elapsed, Warmup: sc.Warmup, Limit: sc.Limit(), Deliver: sc.Deliver(calls), Outage: out != nil}
	if err != nil {
		return row, err
	}
	row.count(r, sc.replicas(), firstAfter, o.OnCall)
	if out != nil && lift > 0 && firstAfter < calls {
		row.Recovered, row.Recovery = true, -1
		upAt := r.Begin.Add(lift)
		var firstOK time.Time
		for _, oc := range r.Outcomes {
			if oc.I >= firstAfter && oc.OK && (firstOK.IsZero() || oc.End().Before(firstOK)) {
				firstOK = oc.End()
			}
		}
		if !firstOK.IsZero() {
			row.Recovery = firstOK.Sub(upAt)
		}
	}
	if refused != nil && refused.err != nil {
		return row, fmt.Errorf("refusing connections: %w", refused.err)
	}
	if killErr != nil {
		return row, fmt.Errorf("killing dingproxy: %w", killErr)
	}
	if sc.DeliverWithin > 0 {
		row.HasDeliveries, row.Messages = true, calls
		row.MessagesDelivered, row.MessagesTwice = dl.delivered, dl.twice
		if dl.delivered > 0 {
			row.LastArrival = dl.last.Sub(r.Begin)
		}
		if refused != nil && !refused.upAt.IsZero() {
			row.RefusedUntil = refused.upAt.Sub(r.Begin)
		}
		if !kl.at.IsZero() {
			row.HasKill, row.KilledAt, row.Restart = true, kl.at.Sub(r.Begin), kl.restart
			row.KilledHolder, row.KilledRefused = kl.holder, kl.refused
		}
		if states != nil {
			row.HasStates, row.Unknown = true, states[string(outboxpkg.Unknown)]
			for st, n := range states {
				if st != string(outboxpkg.Delivered) && st != string(outboxpkg.Unknown) {
					row.Unsettled += n
				}
			}
		}
	}
	row.Duplicates, row.Throttled, row.UpstreamAttempts, row.RobotThrottled = r.Duplicates, r.Throttled, r.Upstream, r.RobotThrottled
	row.TokenFetches, row.QuotaRejected = r.TokenFetches, r.QuotaRejected
	if x.banFrom >= 0 {
		row.BanCalls, row.HasBan = r.Upstream-x.banFrom, true
	}
	if !x.backAt.IsZero() {
		select {
		case d, ok := <-x.shareWait:
			row.ShareAgain, row.HasShareAgain = d, ok
		case <-time.After(30 * time.Second):
		}
	}
	if snapped {
		row.HasAfter = true
		row.AfterAttempts = r.Upstream - snapAttempts
		row.AfterThrottled = r.Throttled - snapThrottled
	}
	if row.Limit > 0 && len(r.Outcomes) > 0 {
		row.Accepted, row.HasAccepted = accepted(r, sc.Warmup, time.Duration(float64(calls)/rate*float64(time.Second)))
	}
	return row, nil
}

// count counts the outcomes into the row: calls by kind, attempts, the
// calls during an outage (those numbered below firstAfter), robot
// deliveries, quota and cache answers, each replica's successes, and the
// latencies.
func (row *Row) count(r bench.Result, replicas, firstAfter int, onCall func(bench.Outcome)) {
	ok := make([]int, replicas)
	var quotaLat, during []time.Duration
	for _, oc := range r.Outcomes {
		if onCall != nil {
			onCall(oc)
		}
		row.Calls++
		row.CallAttempts += oc.Attempts
		n, nOK := &row.Reads, &row.ReadsOK
		if oc.Req.Send {
			n, nOK = &row.Sends, &row.SendsOK
		}
		*n++
		if oc.OK {
			*nOK++
			row.OK++
			ok[oc.I%len(ok)]++
		}
		if oc.Fallback {
			row.Fallbacks++
		}
		if row.Outage && oc.I < firstAfter {
			row.CallsDuring++
			row.AttemptsDuring += oc.Attempts
			during = append(during, oc.Latency)
		}
		atOnce := oc.Latency < AtOnce
		switch {
		case row.Deliver == 0:
		case oc.I < row.Deliver && oc.OK:
			row.Delivered++
			if atOnce {
				row.DeliveredAtOnce++
			}
		case oc.I >= row.Deliver && oc.Status == http.StatusTooManyRequests && oc.FallbackKind == proxy.KindPaced:
			row.Paced++
			if atOnce {
				row.PacedAtOnce++
			}
		}
		if oc.FallbackKind == proxy.KindQuota {
			row.QuotaAnswered++
			quotaLat = append(quotaLat, oc.Latency)
		}
		if oc.Cache == proxy.CacheHit {
			row.CacheHits++
		}
		if oc.Deferred {
			row.Kept++
		}
	}
	if len(ok) > 1 {
		for _, n := range ok {
			row.Shares = append(row.Shares, bench.Ratio(n, row.OK))
		}
	}
	if len(quotaLat) > 0 {
		row.QuotaP99 = bench.Percentiles(quotaLat, 0.99)[0]
	}
	if len(during) > 0 {
		row.P50During = bench.Percentiles(during, 0.5)[0]
	}
	p := bench.Percentiles(r.Latencies(nil), 0.50, 0.99)
	row.P50, row.P99 = p[0], p[1]
}

// metered are the scenario's paths whose 90020 answers count, when it has
// a monthly quota.
func metered(sc Scenario) []string {
	if sc.Faults.MonthlyQuota == 0 {
		return nil
	}
	var out []string
	for _, q := range sc.Work.APIs {
		out = append(out, q.API)
	}
	return out
}

// accepted is the successful calls per second, counted by when each
// ended, over the whole seconds of the clock (the fake counts its limit in
// them) from warmup into the load until its end (the last arrival's
// interval); false if none fits.
func accepted(r bench.Result, warmup, load time.Duration) (float64, bool) {
	from := r.Begin.Add(warmup)
	first := from.Truncate(time.Second)
	if first.Before(from) {
		first = first.Add(time.Second)
	}
	last := r.Begin.Add(load).Truncate(time.Second)
	secs := int(last.Sub(first) / time.Second)
	if secs < 1 {
		return 0, false
	}
	n := 0
	for _, o := range r.Outcomes {
		if end := o.End(); o.OK && !end.Before(first) && end.Before(last) {
			n++
		}
	}
	return float64(n) / float64(secs), true
}
