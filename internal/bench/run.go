package bench

import (
	"context"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Load is a workload for one client against a fresh fake.
type Load struct {
	Seed  int64   // the fake's fault RNG seed; 0 means 1
	Rate  float64 // calls per second
	Calls int
	// Fake configures the fake (a per-robot limit); its Seed, if 0, is
	// Seed.
	Fake dingtalktest.Options
	// MaxInFlight bounds the calls running at once (Schedule.MaxInFlight).
	MaxInFlight int
	// Call is call number i. It is asked for every call, in order, before
	// the first one starts.
	Call func(i int) Request
	// Setup, if set, brings the trouble (faults, limits) once the client
	// is ready and before the first call.
	Setup func(*dingtalktest.Server)
	// Before, if set, runs on the arrival loop just before call i starts
	// (Schedule.Before).
	Before func(f *dingtalktest.Server, i int, since time.Duration)
	// QuotaPaths are the paths whose 90020 answers Result.QuotaRejected
	// counts.
	QuotaPaths []string
	// Settle, if set, runs once every call has its answer (outs, by
	// number), before the fake's counters are read and the fake and the
	// client stop: what was left for later (deferred sends) can be waited
	// for there.
	Settle func(ctx context.Context, f *dingtalktest.Server, t Timing, outs []Outcome)
}

// Result is one client's run of one Load.
type Result struct {
	Mode     Mode
	Outcomes []Outcome // of the calls started, by number
	Timing
	// What the fake counted: upstream attempts (token fetches excluded),
	// of those rejected by its QPS limit, and sends executed twice.
	Upstream, Throttled, Duplicates int
	// RobotThrottled is the robot sends the fake answered with its robot
	// throttle (past Fake.RobotPerMinute, or within a robot's block).
	RobotThrottled int
	// TokenFetches is how many tokens the fake issued.
	TokenFetches int
	// QuotaRejected is how many calls the fake answered 90020 (past its
	// monthly quota), on the paths in QuotaPaths.
	QuotaRejected int
}

// Latencies are the latencies of the outcomes f holds for (every one if f
// is nil).
func (r Result) Latencies(f func(Outcome) bool) []time.Duration {
	var out []time.Duration
	for _, o := range r.Outcomes {
		if f == nil || f(o) {
			out = append(out, o.Latency)
		}
	}
	return out
}

// Upstream is what the fake served but token fetches: the upstream
// attempts of the calls.
func Upstream(f *dingtalktest.Server) int {
	return f.TotalHits() - f.Hits(dingtalk.PathGetToken) - f.Hits(dingtalk.PathOAuth2Token)
}

// Run runs l for c against a fresh fake on loopback: the fake starts, c is
// opened against it, Setup brings the trouble, and the calls go out on
// l's open-loop schedule. It stops early when ctx ends, returning what it
// has with ctx's error.
func Run(ctx context.Context, c Client, l Load) (Result, error) {
	fo := l.Fake
	if fo.Seed == 0 {
		fo.Seed = l.Seed
	}
	fake := dingtalktest.New(fo)
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return Result{}, err
	}
	defer fake.Close()
	hc := HTTPClient(ClientTimeout, 1024, 0)
	defer hc.CloseIdleConnections()
	cl, err := Open(ctx, c, fake, hc)
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	if l.Setup != nil {
		l.Setup(fake)
	}
	reqs := make([]Request, l.Calls)
	for i := range reqs {
		reqs[i] = l.Call(i)
	}
	outs := make([]Outcome, l.Calls)
	s := Schedule{Rate: l.Rate, Calls: l.Calls, MaxInFlight: l.MaxInFlight}
	if l.Before != nil {
		s.Before = func(i int, since time.Duration) { l.Before(fake, i, since) }
	}
	t, err := s.Run(ctx, func(i int, due time.Time) {
		outs[i] = cl.Do(ctx, i, reqs[i])
		outs[i].Due = due
	})
	if l.Settle != nil && err == nil {
		l.Settle(ctx, fake, t, outs[:t.Started])
		err = ctx.Err()
	}
	return Result{
		Mode:       c.Mode,
		Outcomes:   outs[:t.Started],
		Timing:     t,
		Upstream:   Upstream(fake),
		Throttled:  fake.Throttled(),
		Duplicates: fake.Duplicates(),

		RobotThrottled: fake.RobotThrottled(),
		TokenFetches:   fake.TokenFetches(),
		QuotaRejected:  quotaRejected(fake, l.QuotaPaths),
	}, err
}

func quotaRejected(f *dingtalktest.Server, paths []string) int {
	n := 0
	for _, p := range paths {
		n += f.QuotaRejected(p)
	}
	return n
}
