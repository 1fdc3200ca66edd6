// Package loadtest measures the latency dingproxy adds, open loop: calls are
// sent on a fixed schedule whether or not earlier ones have answered. At
// each turn one call goes straight to the fake DingTalk and one through
// dingproxy, at the same moment, so both see the same machine; the added
// latency of a turn is the difference of the pair, and its percentiles are
// reported with those of each path. Every run is bounded in calls and time.
// The workload, the rates and dingproxy's configuration are the load
// scenario's, a row of the scenario table (internal/scenario).
package loadtest

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// Options bound a run; a zero field keeps the load scenario's
// (scenario.Load).
type Options struct {
	// Rates are the dingproxy calls per second to measure at (the fake
	// sees twice as many: the direct twin of each).
	Rates []int
	// Duration is how long each rate runs.
	Duration time.Duration
	// Warmup runs before each measured phase and is not counted; negative
	// means none.
	Warmup time.Duration
}

// Scenario is the load scenario with o's changes.
func (o Options) Scenario() scenario.Scenario {
	sc := scenario.Must(scenario.Load)
	if len(o.Rates) > 0 {
		sc.Rates = nil
		for _, r := range o.Rates {
			sc.Rates = append(sc.Rates, float64(r))
		}
	}
	if o.Duration > 0 {
		sc.Duration = o.Duration
	}
	if o.Warmup != 0 {
		sc.Warmup = max(o.Warmup, 0)
	}
	return sc
}

// Row is one rate's result. The arrays hold p50, p99 and p99.9.
type Row struct {
	Rate   int
	Calls  int // measured pairs
	Errors int // pairs with a failed call, left out
	// Late is how many turns the sender started more than 1 ms late (the
	// machine was busy or paused); both calls of a pair share it.
	Late         int
	Direct, Via  [3]time.Duration
	Added        [3]time.Duration // percentiles of via - direct, per pair
	AchievedRate float64
}

// Quantiles are the percentiles reported, in Row's arrays' order.
var Quantiles = [3]float64{0.50, 0.99, 0.999}

// Run measures each rate of the load scenario, on one fake and one
// dingproxy: its two clients, a call of each at every turn.
func Run(ctx context.Context, o Options) ([]Row, error) {
	sc := o.Scenario()
	if len(sc.Clients) != 2 {
		return nil, fmt.Errorf("loadtest: the load scenario pairs two clients, not %v", sc.Clients)
	}
	fake := dingtalktest.New(dingtalktest.Options{Seed: 1})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	defer fake.Close()
	hc := bench.HTTPClient(10*time.Second, 512, 512)
	defer hc.CloseIdleConnections()
	direct, err := sc.Open(ctx, sc.Clients[0], fake, hc)
	if err != nil {
		return nil, err
	}
	defer direct.Close()
	via, err := sc.Open(ctx, sc.Clients[1], fake, hc)
	if err != nil {
		return nil, err
	}
	defer via.Close()
	call := sc.Work.Calls(1, 1)
	var rows []Row
	for _, rate := range sc.Rates {
		if sc.Warmup > 0 {
			if _, err := phase(ctx, direct, via, call, int(rate), sc.Warmup); err != nil {
				return rows, err
			}
		}
		row, err := phase(ctx, direct, via, call, int(rate), sc.Duration)
		if err != nil {
			return rows, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// phase sends rate pairs per second for d. Latency runs from each turn's
// due time, so a stalled sender shows in the percentiles instead of hiding
// (coordinated omission); the pair's difference cancels it.
func phase(ctx context.Context, direct, via *bench.Caller, call func(int) bench.Request, rate int, d time.Duration) (Row, error) {
	type pair struct {
		direct, via time.Duration
		failed      bool
	}
	pairs := make([]pair, int(float64(rate)*d.Seconds()))
	reqs := make([]bench.Request, len(pairs))
	for i := range reqs {
		reqs[i] = call(i)
	}
	t, err := bench.Schedule{Rate: float64(rate), Calls: len(pairs)}.Run(ctx, func(i int, due time.Time) {
		var wg sync.WaitGroup
		var dc bench.Outcome
		wg.Go(func() { dc = direct.Do(ctx, i, reqs[i]) })
		vc := via.Do(ctx, i, reqs[i])
		wg.Wait()
		pairs[i] = pair{dc.End().Sub(due), vc.End().Sub(due), !dc.OK || !vc.OK}
	})
	row := Row{Rate: rate, Late: t.Late}
	if err != nil {
		return row, err
	}
	row.AchievedRate = float64(t.Started) / t.Elapsed.Seconds()
	var dl, vl, added []time.Duration
	for _, p := range pairs {
		if p.failed {
			row.Errors++
			continue
		}
		dl, vl, added = append(dl, p.direct), append(vl, p.via), append(added, p.via-p.direct)
	}
	row.Calls = len(added)
	if len(pairs) > 0 && row.Calls == 0 {
		return row, fmt.Errorf("loadtest: every call failed")
	}
	if row.Calls > 0 {
		row.Direct, row.Via, row.Added = quantiles(dl), quantiles(vl), quantiles(added)
	}
	return row, nil
}

func quantiles(lat []time.Duration) [3]time.Duration {
	return [3]time.Duration(bench.Percentiles(lat, Quantiles[:]...))
}

// PrintTable writes rows as a table.
func PrintTable(w io.Writer, rows []Row) error {
	t := bench.Table{Pad: 2, Widths: []int{0, 0, 0, 0, 28, 28, 28}}
	t.Row("rate/s", "pairs", "errors", "late", "direct p50/p99/p99.9 ms", "dingproxy p50/p99/p99.9 ms", "added p50/p99/p99.9 ms")
	ms := func(q [3]time.Duration) string {
		return fmt.Sprintf("%.3f / %.3f / %.3f", q[0].Seconds()*1e3, q[1].Seconds()*1e3, q[2].Seconds()*1e3)
	}
	for _, r := range rows {
		t.Row(fmt.Sprint(r.Rate), fmt.Sprint(r.Calls), fmt.Sprint(r.Errors), fmt.Sprint(r.Late), ms(r.Direct), ms(r.Via), ms(r.Added))
	}
	return t.Print(w)
}

// TimerLateness sleeps 1 ms n times and returns the p50, p99 and p99.9 of
// how late each wake-up was: the machine's own scheduling noise, which no
// latency figure on it can be below.
func TimerLateness(n int) [3]time.Duration {
	late := make([]time.Duration, n)
	for i := range late {
		st := time.Now()
		time.Sleep(time.Millisecond)
		late[i] = time.Since(st) - time.Millisecond
	}
	return quantiles(late)
}
