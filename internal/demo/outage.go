package demo

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// OutageOptions shape the outage phase.
type OutageOptions struct {
	Down  time.Duration // how long the API answers 503; default 4 s
	After time.Duration // load after it recovers; default 3 s
	Rate  float64       // calls per second; default 18, under DingTalk's 20 per API
	// OpenTimeout is the demo proxy's breaker.open_timeout, short so the
	// recovery shows within the run; default 2 s.
	OpenTimeout time.Duration
	Modes       []bench.Mode
}

// OutageResult is one client's figures for the outage phase.
type OutageResult struct {
	Mode bench.Mode
	// CallsDuring and AttemptsDuring count client calls started while the
	// API was down and the upstream attempts those calls cost (counted per
	// call: by the client itself, or from X-Dingproxy-Attempts through the
	// proxy, so calls still in flight at the recovery are not misattributed).
	CallsDuring, AttemptsDuring int
	// Fallbacks is how many calls dingproxy answered with a fallback.
	Fallbacks int
	// Recovery is the time from the API's recovery to the first success.
	Recovery time.Duration
	// P50 is the median time a call started during the outage took.
	P50 time.Duration
}

// AttemptsPerCall is what each client call cost DingTalk during the outage.
func (r OutageResult) AttemptsPerCall() float64 { return bench.Ratio(r.AttemptsDuring, r.CallsDuring) }

func (o *OutageOptions) defaults() {
	if o.Down <= 0 {
		o.Down = 4 * time.Second
	}
	if o.After <= 0 {
		o.After = 3 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 18
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 2 * time.Second
	}
	if len(o.Modes) == 0 {
		o.Modes = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy}
	}
}

// OutagePath is the API that goes down.
const OutagePath = dingtalktest.PathUserGet

// RunOutage runs the outage phase for each mode.
func RunOutage(ctx context.Context, o OutageOptions) ([]OutageResult, error) {
	o.defaults()
	var out []OutageResult
	for _, m := range o.Modes {
		r, err := runOutage(ctx, m, o)
		if err != nil {
			return out, fmt.Errorf("demo: outage: %s: %w", m, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runOutage(ctx context.Context, m bench.Mode, o OutageOptions) (OutageResult, error) {
	c, err := bench.Standard(m, func(cfg *config.Config) { cfg.Breaker.OpenTimeout = o.OpenTimeout })
	if err != nil {
		return OutageResult{}, err
	}
	interval := time.Duration(float64(time.Second) / o.Rate)
	total := int((o.Down + o.After) / interval)
	firstAfter := total // the first call made after the API recovered
	r, err := bench.Run(ctx, c, bench.Load{
		Rate: o.Rate, Calls: total,
		Call: func(i int) bench.Request {
			return bench.Request{Method: http.MethodPost, Path: OutagePath, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
		},
		Setup: func(f *dingtalktest.Server) {
			f.SetChaos(dingtalktest.Chaos{Paths: []string{OutagePath}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})
		},
		Before: func(f *dingtalktest.Server, i int, since time.Duration) {
			if firstAfter == total && since >= o.Down {
				f.SetChaos(dingtalktest.Chaos{})
				firstAfter = i
			}
		},
	})
	if err != nil {
		return OutageResult{}, err
	}
	res := OutageResult{Mode: m, Recovery: -1}
	upAt := r.Begin.Add(o.Down)
	var firstOK time.Time
	during := func(o bench.Outcome) bool { return o.I < firstAfter }
	for _, o := range r.Outcomes {
		if during(o) {
			res.CallsDuring++
			res.AttemptsDuring += o.Attempts
		} else if o.OK && (firstOK.IsZero() || o.End().Before(firstOK)) {
			firstOK = o.End()
		}
		if o.Fallback {
			res.Fallbacks++
		}
	}
	res.P50 = bench.Percentiles(r.Latencies(during), 0.5)[0]
	if !firstOK.IsZero() {
		res.Recovery = firstOK.Sub(upAt)
	}
	return res, nil
}

// PrintOutageTable writes the outage results side by side.
func PrintOutageTable(w io.Writer, rs []OutageResult) error {
	t := bench.Table{Pad: 3, Widths: []int{34}}
	row := func(name string, f func(OutageResult) string) { bench.Across(&t, rs, name, f) }
	row("", func(r OutageResult) string { return string(r.Mode) })
	row("client calls during the outage", func(r OutageResult) string { return fmt.Sprint(r.CallsDuring) })
	row("upstream attempts per call", func(r OutageResult) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("answered by a fallback (whole run)", func(r OutageResult) string { return fmt.Sprint(r.Fallbacks) })
	row("first success after recovery", func(r OutageResult) string {
		if r.Recovery < 0 {
			return "none"
		}
		return fmt.Sprintf("+%.1f s", r.Recovery.Seconds())
	})
	return t.Print(w)
}
