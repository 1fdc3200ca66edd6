// Package loadtest measures the latency dingproxy adds, open loop: calls are
// sent on a fixed schedule whether or not earlier ones have answered. At
// each turn one call goes straight to the fake DingTalk and one through
// dingproxy, at the same moment, so both see the same machine; the added
// latency of a turn is the difference of the pair, and its percentiles are
// reported with those of each path. Every run is bounded in calls and time.
package loadtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Options bound a run.
type Options struct {
	// Rates are the dingproxy calls per second to measure at (the fake
	// sees twice as many: the direct twin of each). Default 500 and 1000.
	Rates []int
	// Duration is how long each rate runs. Default 10 s.
	Duration time.Duration
	// Warmup runs before each measured phase and is not counted. Default
	// 1 s; negative means none.
	Warmup time.Duration
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

// Run measures each rate.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if len(o.Rates) == 0 {
		o.Rates = []int{500, 1000}
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Warmup == 0 {
		o.Warmup = time.Second
	}
	fake := dingtalktest.New(dingtalktest.Options{Seed: 1})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	defer fake.Close()
	hc := bench.HTTPClient(10*time.Second, 512, 512)
	defer hc.CloseIdleConnections()
	direct, err := bench.Open(ctx, bench.Client{Mode: bench.Direct, Via: bench.Straight{}}, fake, hc)
	if err != nil {
		return nil, err
	}
	defer direct.Close()
	// Pacing is raised above the load: DingTalk's 20 calls/s per API would
	// make the schedule, not dingproxy, the thing measured.
	via, err := bench.Open(ctx, bench.Client{Mode: bench.Proxy, Via: bench.ThroughProxy{Tune: []func(*config.Config){func(c *config.Config) {
		c.Pacing.PerAPIQPS, c.Pacing.GlobalQPS = 1e6, 1e6
	}}}}, fake, hc)
	if err != nil {
		return nil, err
	}
	defer via.Close()
	req := bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: []byte(`{"userid":"manager4220","language":"zh_CN"}`)}
	var rows []Row
	for _, rate := range o.Rates {
		if o.Warmup > 0 {
			if _, err := phase(ctx, direct, via, req, rate, o.Warmup); err != nil {
				return rows, err
			}
		}
		row, err := phase(ctx, direct, via, req, rate, o.Duration)
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
func phase(ctx context.Context, direct, via *bench.Caller, req bench.Request, rate int, d time.Duration) (Row, error) {
	type pair struct {
		direct, via time.Duration
		failed      bool
	}
	pairs := make([]pair, int(float64(rate)*d.Seconds()))
	t, err := bench.Schedule{Rate: float64(rate), Calls: len(pairs)}.Run(ctx, func(i int, due time.Time) {
		var wg sync.WaitGroup
		var dc bench.Outcome
		wg.Go(func() { dc = direct.Do(ctx, i, req) })
		vc := via.Do(ctx, i, req)
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
