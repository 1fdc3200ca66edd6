package demo

import (
	"context"
	"fmt"
	"io"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// DefaultFaults is the demo's fault mix, as a spec: 25 % of calls, of which
// 20 % fail. Throttling is not drawn at random: the fake enforces
// DingTalk's real limit per API, with its 1 s penalty.
var DefaultFaults = scenario.ChaosSpec(scenario.Must(scenario.Demo).Faults.Chaos)

// Options change the demo's scenario; a zero field keeps the scenario's.
type Options struct {
	Calls  int     // calls per client
	Rate   float64 // calls per second
	Faults string  // dingtalktest.ParseChaos spec
	Seed   int64   // fault RNG seed; default 1
	// Modes to run; default the scenario's clients.
	Modes []bench.Mode
}

// Scenario is the demo's scenario with o's changes.
func (o Options) Scenario() (scenario.Scenario, error) {
	sc := scenario.Must(scenario.Demo)
	if o.Calls > 0 {
		sc.Calls = o.Calls
	}
	if o.Rate > 0 {
		sc.Rate = o.Rate
	}
	if o.Faults != "" {
		chaos, err := dingtalktest.ParseChaos(o.Faults)
		if err != nil {
			return sc, err
		}
		sc.Faults.Chaos = chaos
	}
	if len(o.Modes) > 0 {
		sc.Clients = o.Modes
	}
	return sc, nil
}

// Run runs the demo: for each client a fresh fake with the same faults and
// the same workload, one client after another. It stops early when ctx
// ends.
func Run(ctx context.Context, o Options) ([]scenario.Row, error) {
	sc, err := o.Scenario()
	if err != nil {
		return nil, err
	}
	return run(ctx, sc, o.Seed)
}

// run runs sc for each of its clients in turn.
func run(ctx context.Context, sc scenario.Scenario, seed int64) ([]scenario.Row, error) {
	var out []scenario.Row
	for _, m := range sc.Clients {
		r, err := scenario.Run(ctx, sc, m, scenario.RunOptions{Seed: seed})
		if err != nil {
			return out, fmt.Errorf("demo: %s: %s: %w", sc.Name, m, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// PrintTable writes the results side by side.
func PrintTable(w io.Writer, rs []scenario.Row) error {
	t := bench.Table{Pad: 3, Widths: []int{36}}
	row := func(name string, f func(scenario.Row) string) { bench.Across(&t, rs, name, f) }
	row("", func(r scenario.Row) string { return string(r.Mode) })
	row("reads ok", func(r scenario.Row) string {
		return fmt.Sprintf("%s (%d/%d)", bench.Pct(r.ReadsOK, r.Reads), r.ReadsOK, r.Reads)
	})
	row("sends ok", func(r scenario.Row) string {
		return fmt.Sprintf("%s (%d/%d)", bench.Pct(r.SendsOK, r.Sends), r.SendsOK, r.Sends)
	})
	row("duplicate sends", func(r scenario.Row) string { return fmt.Sprint(r.Duplicates) })
	row("upstream attempts per call", func(r scenario.Row) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("throttle rejections per 100 attempts", func(r scenario.Row) string { return fmt.Sprintf("%.1f", r.ThrottledPer100()) })
	row("p50 latency", func(r scenario.Row) string { return bench.Ms(r.P50, 1) })
	row("p99 latency", func(r scenario.Row) string { return bench.Ms(r.P99, 1) })
	return t.Print(w)
}
