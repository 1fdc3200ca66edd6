// Package loadtest measures the latency dingproxy adds, open loop: calls are
// sent on a fixed schedule whether or not earlier ones have answered. At
// each turn one call goes straight to the fake DingTalk and one through
// dingproxy, at the same moment, so both see the same machine; the added
// latency of a turn is the difference of the pair, and its percentiles are
// reported with those of each path. Every run is bounded in calls and time.
package loadtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/demo"
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
	// Pacing is raised above the load: DingTalk's 20 calls/s per API would
	// make the schedule, not dingproxy, the thing measured.
	stop, proxyURL, err := demo.StartProxy(fake.URL(), func(c *config.Config) {
		c.Pacing.PerAPIQPS, c.Pacing.GlobalQPS = 1e6, 1e6
	})
	if err != nil {
		return nil, err
	}
	defer stop()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	tok, err := demo.FetchToken(ctx, hc, proxyURL)
	if err != nil {
		return nil, err
	}
	body := []byte(`{"userid":"manager4220","language":"zh_CN"}`)
	direct := fake.URL() + dingtalktest.PathUserGet + "?access_token=" + url.QueryEscape(tok)
	via := proxyURL + dingtalktest.PathUserGet

	var rows []Row
	for _, rate := range o.Rates {
		if o.Warmup > 0 {
			if _, err := phase(ctx, hc, direct, via, body, rate, o.Warmup); err != nil {
				return rows, err
			}
		}
		row, err := phase(ctx, hc, direct, via, body, rate, o.Duration)
		if err != nil {
			return rows, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// phase sends rate pairs per second for d. Latency runs from each turn's
// scheduled time, so a stalled sender shows in the percentiles instead of
// hiding (coordinated omission); the pair's difference cancels it.
func phase(ctx context.Context, hc *http.Client, direct, via string, body []byte, rate int, d time.Duration) (Row, error) {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	type pair struct {
		direct, via time.Duration
		failed      bool
	}
	pairs := make([]pair, n)
	var wg sync.WaitGroup
	row := Row{Rate: rate}
	send := func(target string, at time.Time, out *time.Duration, failed *bool, mu *sync.Mutex) {
		defer wg.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = errors.New(resp.Status)
			}
		}
		*out = time.Since(at)
		if err != nil {
			mu.Lock()
			*failed = true
			mu.Unlock()
		}
	}
	mus := make([]sync.Mutex, n)
	begin := time.Now()
	for i := range n {
		at := begin.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			t := time.NewTimer(w)
			select {
			case <-ctx.Done():
				t.Stop()
				wg.Wait()
				return row, ctx.Err()
			case <-t.C:
			}
		} else if -w > time.Millisecond {
			row.Late++
		}
		p := &pairs[i]
		wg.Add(2)
		go send(direct, at, &p.direct, &p.failed, &mus[i])
		go send(via, at, &p.via, &p.failed, &mus[i])
	}
	wg.Wait()
	row.AchievedRate = float64(n) / time.Since(begin).Seconds()
	var dl, vl, added []time.Duration
	for _, p := range pairs {
		if p.failed {
			row.Errors++
			continue
		}
		dl, vl, added = append(dl, p.direct), append(vl, p.via), append(added, p.via-p.direct)
	}
	row.Calls = len(added)
	if n > 0 && row.Calls == 0 {
		return row, fmt.Errorf("loadtest: every call failed")
	}
	if row.Calls > 0 {
		row.Direct, row.Via, row.Added = percentiles(dl), percentiles(vl), percentiles(added)
	}
	return row, nil
}

func percentiles(lat []time.Duration) [3]time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	var out [3]time.Duration
	for i, q := range Quantiles {
		k := int(q*float64(len(s))+0.5) - 1
		out[i] = s[min(max(k, 0), len(s)-1)]
	}
	return out
}

// PrintTable writes rows as a table.
func PrintTable(w io.Writer, rows []Row) {
	fmt.Fprintf(w, "%6s %6s %6s %5s  %-28s  %-28s  %-28s\n", "rate/s", "pairs", "errors", "late", "direct p50/p99/p99.9 ms", "dingproxy p50/p99/p99.9 ms", "added p50/p99/p99.9 ms")
	ms := func(q [3]time.Duration) string {
		return fmt.Sprintf("%.3f / %.3f / %.3f", q[0].Seconds()*1e3, q[1].Seconds()*1e3, q[2].Seconds()*1e3)
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%6d %6d %6d %5d  %-28s  %-28s  %-28s\n", r.Rate, r.Calls, r.Errors, r.Late, ms(r.Direct), ms(r.Via), ms(r.Added))
	}
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
	return percentiles(late)
}
