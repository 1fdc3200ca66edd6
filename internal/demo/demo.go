package demo

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// DefaultFaults is the demo's fault mix: 25 % of calls, of which 20 % fail.
// Throttling is not drawn at random: the fake enforces DingTalk's real limit
// of bench.QPSLimit calls per second per API, with its 1 s penalty.
const DefaultFaults = "system-busy=0.08,status:503=0.04,reset-before=0.04,reset-after=0.04,latency:30ms=0.05"

// Options shape a demo run.
type Options struct {
	Calls  int     // calls per client; default 240
	Rate   float64 // calls per second; default 40 (about 9 per API, under DingTalk's 20)
	Faults string  // dingtalktest.ParseChaos spec; default DefaultFaults
	Seed   int64   // fault RNG seed; default 1
	// Modes to run; default all three.
	Modes []bench.Mode
}

// Result is one client's figures.
type Result struct {
	Mode             bench.Mode
	Reads, ReadsOK   int
	Sends, SendsOK   int
	DuplicateSends   int
	UpstreamAttempts int // calls the fake received, token calls excluded
	Throttled        int // of those, rejected by the fake's per-API limit
	P50, P99         time.Duration
}

// ReadSuccess is the share of reads that got a successful answer.
func (r Result) ReadSuccess() float64 { return bench.Ratio(r.ReadsOK, r.Reads) }

// SendSuccess is the share of sends that got a successful answer.
func (r Result) SendSuccess() float64 { return bench.Ratio(r.SendsOK, r.Sends) }

// AttemptsPerCall is how many upstream attempts each client call cost.
func (r Result) AttemptsPerCall() float64 { return bench.Ratio(r.UpstreamAttempts, r.Reads+r.Sends) }

func (o *Options) defaults() {
	if o.Calls <= 0 {
		o.Calls = 240
	}
	if o.Rate <= 0 {
		o.Rate = 40
	}
	if o.Faults == "" {
		o.Faults = DefaultFaults
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if len(o.Modes) == 0 {
		o.Modes = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy}
	}
}

// Run runs the demo: for each mode a fresh fake with the same faults and the
// same workload. It stops early when ctx ends.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	opts.defaults()
	chaos, err := dingtalktest.ParseChaos(opts.Faults)
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, m := range opts.Modes {
		c, err := bench.Standard(m)
		if err != nil {
			return out, err
		}
		rng := rand.New(rand.NewPCG(uint64(opts.Seed), 7))
		r, err := bench.Run(ctx, c, bench.Load{
			Seed: opts.Seed, Rate: opts.Rate, Calls: opts.Calls, MaxInFlight: 128,
			Call: func(i int) bench.Request { return call(i, rng.Float64() < 0.3, rng.IntN(3)) },
			Setup: func(f *dingtalktest.Server) {
				f.SetChaos(chaos)
				f.SetQPSLimit(bench.QPSLimit)
			},
		})
		if err != nil {
			return out, fmt.Errorf("demo: %s: %w", m, err)
		}
		res := Result{Mode: m, DuplicateSends: r.Duplicates, Throttled: r.Throttled, UpstreamAttempts: r.Upstream}
		for _, o := range r.Outcomes {
			n, ok := &res.Reads, &res.ReadsOK
			if o.Req.Send {
				n, ok = &res.Sends, &res.SendsOK
			}
			*n++
			if o.OK {
				*ok++
			}
		}
		p := bench.Percentiles(r.Latencies(nil), 0.50, 0.99)
		res.P50, res.P99 = p[0], p[1]
		out = append(out, res)
	}
	return out, nil
}

// call is call number i: a send (on one of two APIs) or a read (on one of
// three), by kind.
func call(i int, send bool, kind int) bench.Request {
	switch {
	case send && kind%2 == 0:
		return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathAsyncSend, Send: true,
			Body: fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%50, i)}
	case send:
		return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathRobotBatchSend, Send: true,
			Body: fmt.Appendf(nil, `{"robotCode":"r1","userIds":["u%d"],"msgKey":"sampleText","msgParam":"{\"content\":\"notice %d\"}"}`, i%50, i)}
	case kind == 0:
		return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
	case kind == 1:
		return bench.Request{Method: http.MethodGet, Path: dingtalktest.PathDeptList + "?id=1"}
	}
	return bench.Request{Method: http.MethodGet, Path: dingtalktest.PathContactUsers + fmt.Sprintf("u%d", i%50)}
}

// PrintTable writes the results side by side.
func PrintTable(w io.Writer, rs []Result) error {
	t := bench.Table{Pad: 3, Widths: []int{36}}
	row := func(name string, f func(Result) string) { bench.Across(&t, rs, name, f) }
	row("", func(r Result) string { return string(r.Mode) })
	row("reads ok", func(r Result) string {
		return fmt.Sprintf("%s (%d/%d)", bench.Pct(r.ReadsOK, r.Reads), r.ReadsOK, r.Reads)
	})
	row("sends ok", func(r Result) string {
		return fmt.Sprintf("%s (%d/%d)", bench.Pct(r.SendsOK, r.Sends), r.SendsOK, r.Sends)
	})
	row("duplicate sends", func(r Result) string { return fmt.Sprint(r.DuplicateSends) })
	row("upstream attempts per call", func(r Result) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("throttle rejections per 100 attempts", func(r Result) string {
		return fmt.Sprintf("%.1f", 100*bench.Ratio(r.Throttled, r.UpstreamAttempts))
	})
	row("p50 latency", func(r Result) string { return bench.Ms(r.P50, 1) })
	row("p99 latency", func(r Result) string { return bench.Ms(r.P99, 1) })
	return t.Print(w)
}
