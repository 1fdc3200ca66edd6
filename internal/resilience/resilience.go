// Package resilience is the resilience benchmark: the same scenarios run
// against the fake DingTalk three ways (a plain client, a client with the
// common SDK retry loop, and through dingproxy on its built-in defaults), with
// a fresh fake and a fresh proxy for each client, and one table of what each
// client got and what each cost DingTalk.
package resilience

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// ProxyTuned is dingproxy with retry.max_attempts: 6, the attempts 99.9 %
// needs at 30 % independent faults (0.3^6 = 0.07 %). Run in the transient
// scenario only.
const ProxyTuned bench.Mode = "dingproxy, max_attempts 6"

// AllModes are the clients, in table order.
var AllModes = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy, ProxyTuned}

// Scenario names, for Options.Only.
const (
	Transient = "transient"
	Resets    = "resets"
	Throttle  = "throttle"
	Outage    = "outage"
	Tokens    = "tokens"
)

// Scenarios lists every scenario in run order.
var Scenarios = []string{Transient, Resets, Throttle, Outage, Tokens}

// maxInFlight bounds concurrent client calls; it is above any scenario's
// calls in flight (dingproxy queues up to ~300 in the throttle scenario),
// so the bound never bends the arrival schedule.
const maxInFlight = 1024

// maxCalls bounds one run of one scenario for one client.
const maxCalls = 20000

// Options shape a run.
type Options struct {
	// Scale multiplies every scenario's duration (and the token revocation
	// interval); rates stay. Default 1.
	Scale float64
	// Only lists the scenarios to run; default all of Scenarios.
	Only []string
	// Modes lists the clients; default AllModes.
	Modes []bench.Mode
	// Seed seeds the fake's fault draws; default 1.
	Seed int64
	// Progress, if set, is called after each scenario and client.
	Progress func(Row)
}

// Row is one client's figures in one scenario.
type Row struct {
	Scenario string
	Mode     bench.Mode
	// Calls is how many client calls were made, OK how many succeeded
	// (a fallback answered by dingproxy is not a success).
	Calls, OK int
	// Fallbacks is how many calls dingproxy answered itself.
	Fallbacks int
	// Duplicates is the fake's count of sends executed twice.
	Duplicates int
	// UpstreamAttempts is what the fake received, token calls excluded;
	// CallAttempts is the sum of what each call counted (its own attempts,
	// or X-Dingproxy-Attempts). PerCall says which AttemptsPerCall uses.
	UpstreamAttempts, CallAttempts int
	PerCall                        bool
	// Throttled is how many upstream attempts the fake rejected for its
	// QPS limit.
	Throttled int
	// After1s: the fake's attempts and throttles after the first second of
	// load, when HasAfter1s.
	After1sAttempts, After1sThrottled int
	HasAfter1s                        bool
	P50, P99                          time.Duration
	// Elapsed is the wall time from the first call to the last answer.
	Elapsed time.Duration
}

// Success is the share of calls that succeeded.
func (r Row) Success() float64 { return bench.Ratio(r.OK, r.Calls) }

// AttemptsPerCall is how many upstream attempts each client call cost.
func (r Row) AttemptsPerCall() float64 {
	if r.PerCall {
		return bench.Ratio(r.CallAttempts, r.Calls)
	}
	return bench.Ratio(r.UpstreamAttempts, r.Calls)
}

// ThrottledPer100 is throttle rejections per 100 upstream attempts.
func (r Row) ThrottledPer100() float64 { return 100 * bench.Ratio(r.Throttled, r.UpstreamAttempts) }

// ThrottledPer100After1s is the same after the first second of load.
func (r Row) ThrottledPer100After1s() float64 {
	return 100 * bench.Ratio(r.After1sThrottled, r.After1sAttempts)
}

// scenario is one workload against one kind of trouble.
type scenario struct {
	name     string
	duration time.Duration // of the load, before Scale
	rate     float64       // client calls per second
	setup    func(*dingtalktest.Server)
	// every, if set, runs tick on the fake every that long (scaled) into
	// the load: token revocations.
	every time.Duration
	tick  func(*dingtalktest.Server)
	// call is client call number i.
	call func(i int) bench.Request
	// perCall: attempts per call counted per call (the outage).
	perCall bool
	// snapshot1s: take the fake's counters one second into the load.
	snapshot1s bool
}

// Fault mixes.
var (
	transientFaults = []dingtalktest.Weighted{
		{Fault: dingtalktest.SystemBusy(), P: 0.10},
		{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 0.10},
		{Fault: dingtalktest.ResetBeforeExec(), P: 0.10},
	}
	resetAfterFaults = []dingtalktest.Weighted{{Fault: dingtalktest.ResetAfterExec(), P: 0.20}}
	sendPaths        = []string{dingtalktest.PathAsyncSend, dingtalktest.PathChatSend, dingtalktest.PathRobotBatchSend}
)

// read is a read on one of three APIs: two POST reads of the topapi kind
// and one GET on the api host.
func read(i int) bench.Request {
	switch i % 3 {
	case 0:
		return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
	case 1:
		return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathDeptListSub, Body: []byte(`{"dept_id":1}`)}
	default:
		return bench.Request{Method: http.MethodGet, Path: dingtalktest.PathContactUsers + fmt.Sprintf("u%d", i%50)}
	}
}

// send is a send with a body unique to i, on one of paths.
func send(i int, paths []string) bench.Request {
	switch p := paths[i%len(paths)]; p {
	case dingtalktest.PathRobotBatchSend:
		return bench.Request{Method: http.MethodPost, Path: p, Send: true, Body: fmt.Appendf(nil, `{"robotCode":"r1","userIds":["u%d"],"msgKey":"sampleText","msgParam":"{\"content\":\"notice %d\"}"}`, i%50, i)}
	case dingtalktest.PathChatSend:
		return bench.Request{Method: http.MethodPost, Path: p, Send: true, Body: fmt.Appendf(nil, `{"chatid":"chat%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%5, i)}
	default:
		return bench.Request{Method: http.MethodPost, Path: p, Send: true, Body: fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%50, i)}
	}
}

func scenarios() map[string]scenario {
	return map[string]scenario{
		Transient: {
			name: Transient, duration: 5 * time.Second, rate: 40,
			setup: func(f *dingtalktest.Server) { f.SetChaos(dingtalktest.Chaos{Faults: transientFaults}) },
			call:  read,
		},
		Resets: {
			name: Resets, duration: 5 * time.Second, rate: 40,
			setup: func(f *dingtalktest.Server) {
				f.SetChaos(dingtalktest.Chaos{Faults: resetAfterFaults, Paths: sendPaths})
			},
			call: func(i int) bench.Request { return send(i, sendPaths) },
		},
		Throttle: {
			name: Throttle, duration: 5 * time.Second, rate: 60,
			setup: func(f *dingtalktest.Server) { f.SetQPSLimit(bench.QPSLimit) },
			call: func(i int) bench.Request {
				return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
			},
			snapshot1s: true,
		},
		Outage: {
			name: Outage, duration: 10 * time.Second, rate: 40,
			setup: func(f *dingtalktest.Server) {
				f.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
			},
			// Reads and sends on fixed paths, 10/s each: a breaker per path
			// sees enough calls to decide.
			call: func(i int) bench.Request {
				switch i % 4 {
				case 0:
					return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
				case 1:
					return send(i, []string{dingtalktest.PathAsyncSend})
				case 2:
					return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathDeptListSub, Body: []byte(`{"dept_id":1}`)}
				default:
					return send(i, []string{dingtalktest.PathRobotBatchSend})
				}
			},
			perCall: true,
		},
		Tokens: {
			name: Tokens, duration: 6 * time.Second, rate: 40,
			every: 2 * time.Second,
			tick:  (*dingtalktest.Server).ExpireTokens,
			call:  read,
		},
	}
}

// Describe says in one line what a scenario does, at scale.
func Describe(name string, scale float64) string {
	if scale <= 0 {
		scale = 1
	}
	d := func(x time.Duration) string { return scaled(x, scale).String() }
	switch name {
	case Transient:
		return fmt.Sprintf("reads on 3 APIs at 40/s for %s; 30%% fail transiently (10%% system busy, 10%% 503, 10%% reset before execution)", d(5*time.Second))
	case Resets:
		return fmt.Sprintf("sends (unique bodies) on 3 APIs at 40/s for %s; 20%% are executed, then the connection is reset", d(5*time.Second))
	case Throttle:
		return fmt.Sprintf("reads on ONE API at 60/s for %s against DingTalk's limit of %d/s per API (1 s penalty); client timeout %s", d(5*time.Second), bench.QPSLimit, bench.ClientTimeout)
	case Outage:
		return fmt.Sprintf("every API answers 503 for %s while reads and sends arrive at 40/s (4 APIs); attempts counted per call", d(10*time.Second))
	case Tokens:
		return fmt.Sprintf("reads on 3 APIs at 40/s for %s; every token revoked every %s (direct clients fetched theirs once)", d(6*time.Second), d(2*time.Second))
	}
	return name
}

func scaled(d time.Duration, scale float64) time.Duration {
	return time.Duration(float64(d) * scale).Round(time.Millisecond)
}

func (o *Options) defaults() error {
	if o.Scale <= 0 {
		o.Scale = 1
	}
	if len(o.Only) == 0 {
		o.Only = Scenarios
	}
	for _, n := range o.Only {
		if !slices.Contains(Scenarios, n) {
			return fmt.Errorf("resilience: unknown scenario %q (want one of %s)", n, strings.Join(Scenarios, ", "))
		}
	}
	if len(o.Modes) == 0 {
		o.Modes = AllModes
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return nil
}

// Run runs the chosen scenarios, each for every mode with a fresh fake (and
// a fresh dingproxy), in the order of Scenarios and Modes. It stops early
// when ctx ends, returning the rows it has.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	all := scenarios()
	var out []Row
	for _, name := range Scenarios {
		if !slices.Contains(o.Only, name) {
			continue
		}
		for _, m := range o.Modes {
			if m == ProxyTuned && name != "transient" {
				continue
			}
			r, err := runOne(ctx, all[name], m, o)
			if err != nil {
				return out, fmt.Errorf("resilience: %s, %s: %w", name, m, err)
			}
			out = append(out, r)
			if o.Progress != nil {
				o.Progress(r)
			}
		}
	}
	return out, nil
}

func runOne(ctx context.Context, sc scenario, m bench.Mode, o Options) (Row, error) {
	var c bench.Client
	var err error
	if m == ProxyTuned {
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: []func(*config.Config){func(c *config.Config) { c.Retry.MaxAttempts = 6 }}}}
	} else if c, err = bench.Standard(m); err != nil {
		return Row{}, err
	}
	every := scaled(sc.every, o.Scale)
	nextTick := every
	var snapped bool
	var snapAttempts, snapThrottled int
	r, err := bench.Run(ctx, c, bench.Load{
		Seed:        o.Seed,
		Rate:        sc.rate,
		Calls:       min(int(scaled(sc.duration, o.Scale).Seconds()*sc.rate), maxCalls),
		MaxInFlight: maxInFlight,
		Call:        sc.call,
		Setup:       sc.setup,
		Before: func(f *dingtalktest.Server, _ int, since time.Duration) {
			if sc.tick != nil && every > 0 && since >= nextTick {
				from := time.Now()
				sc.tick(f)
				if traceTick != nil {
					traceTick(sc.name, m, from, time.Now())
				}
				// Once per period, even after a stall of the arrival
				// loop: ticks missed are skipped, not fired in a burst
				// (two revocations a few ms apart are not "every 2 s").
				for since >= nextTick {
					nextTick += every
				}
			}
			if sc.snapshot1s && !snapped && since >= time.Second {
				snapped = true
				snapAttempts, snapThrottled = bench.Upstream(f), f.Throttled()
			}
		},
	})
	row := Row{Scenario: sc.name, Mode: m, PerCall: sc.perCall, Elapsed: r.Elapsed}
	if err != nil {
		return row, err
	}
	for _, oc := range r.Outcomes {
		if traceCall != nil {
			traceCall(sc.name, m, oc)
		}
		row.Calls++
		row.CallAttempts += oc.Attempts
		if oc.OK {
			row.OK++
		}
		if oc.Fallback {
			row.Fallbacks++
		}
	}
	row.Duplicates, row.Throttled, row.UpstreamAttempts = r.Duplicates, r.Throttled, r.Upstream
	if snapped {
		row.HasAfter1s = true
		row.After1sAttempts = r.Upstream - snapAttempts
		row.After1sThrottled = r.Throttled - snapThrottled
	}
	p := bench.Percentiles(r.Latencies(nil), 0.50, 0.99)
	row.P50, row.P99 = p[0], p[1]
	return row, nil
}

// traceCall, if set, sees every call's outcome (tests only).
var traceCall func(scenario string, m bench.Mode, o bench.Outcome)

// traceTick, if set, is told of every tick on the fake (a token
// revocation): it took effect between from and to (tests only).
var traceTick func(scenario string, m bench.Mode, from, to time.Time)

// PrintTable writes rows as one table, a line per scenario and client.
func PrintTable(w io.Writer, rows []Row) error {
	t := bench.Table{Pad: 2, Widths: []int{10, 18}}
	t.Row("scenario", "client", "calls", "success", "dup sends", "attempts/call", "throttled/100", "after 1 s", "fallbacks", "p50", "p99")
	prev := ""
	for _, r := range rows {
		name := r.Scenario
		if name == prev {
			name = ""
		}
		prev = r.Scenario
		after := "-"
		if r.HasAfter1s {
			after = fmt.Sprintf("%.1f", r.ThrottledPer100After1s())
		}
		t.Row(name, string(r.Mode), fmt.Sprint(r.Calls), bench.Pct(r.OK, r.Calls), fmt.Sprint(r.Duplicates),
			fmt.Sprintf("%.2f", r.AttemptsPerCall()), fmt.Sprintf("%.1f", r.ThrottledPer100()), after,
			fmt.Sprint(r.Fallbacks), bench.Dur(r.P50), bench.Dur(r.P99))
	}
	return t.Print(w)
}
