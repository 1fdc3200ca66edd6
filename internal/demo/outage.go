package demo

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// OutageOptions change the outage phase's scenario; a zero field keeps the
// scenario's.
type OutageOptions struct {
	Down  time.Duration // how long the API is down
	After time.Duration // load after it recovers
	Rate  float64       // calls per second
	// OpenTimeout is the demo proxy's breaker.open_timeout, short so the
	// recovery shows within the run.
	OpenTimeout time.Duration
	Modes       []bench.Mode
}

// Scenario is the outage phase's scenario with o's changes.
func (o OutageOptions) Scenario() scenario.Scenario {
	sc := scenario.Must(scenario.DemoOutage)
	out := *sc.Faults.Outage
	down, after := out.For, sc.Duration-out.For
	if o.Down > 0 {
		down = o.Down
	}
	if o.After > 0 {
		after = o.After
	}
	out.For, sc.Duration = down, down+after
	sc.Faults.Outage = &out
	if o.Rate > 0 {
		sc.Rate = o.Rate
	}
	if o.OpenTimeout > 0 {
		sc.Tune.OpenTimeout = o.OpenTimeout
	}
	if len(o.Modes) > 0 {
		sc.Clients = o.Modes
	}
	return sc
}

// RunOutage runs the outage phase for each client, one after another.
func RunOutage(ctx context.Context, o OutageOptions) ([]scenario.Row, error) {
	return run(ctx, o.Scenario(), 0)
}

// PrintOutageTable writes the outage results side by side.
func PrintOutageTable(w io.Writer, rs []scenario.Row) error {
	t := bench.Table{Pad: 3, Widths: []int{34}}
	row := func(name string, f func(scenario.Row) string) { bench.Across(&t, rs, name, f) }
	row("", func(r scenario.Row) string { return string(r.Mode) })
	row("client calls during the outage", func(r scenario.Row) string { return fmt.Sprint(r.CallsDuring) })
	row("upstream attempts per call", func(r scenario.Row) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("answered by a fallback (whole run)", func(r scenario.Row) string { return fmt.Sprint(r.Fallbacks) })
	row("first success after recovery", func(r scenario.Row) string {
		if r.Recovery < 0 || !r.Recovered {
			return "none"
		}
		return fmt.Sprintf("+%.1f s", r.Recovery.Seconds())
	})
	return t.Print(w)
}
