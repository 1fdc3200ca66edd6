// Package resilience is the resilience benchmark: the same scenarios run
// against the fake DingTalk three ways (a plain client, a client with the
// common SDK retry loop, and through dingproxy on its built-in defaults), with
// a fresh fake and a fresh proxy for each client, and one table of what each
// client got and what each cost DingTalk.
package resilience

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/demo"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Mode is one way of calling DingTalk.
type Mode string

// The three clients.
const (
	Direct   Mode = "direct"
	SDKRetry Mode = "direct + SDK retry"
	Proxy    Mode = "dingproxy"
	// ProxyTuned is dingproxy with retry.max_attempts: 6, the attempts 99.9 %
	// needs at 30 % independent faults (0.3^6 = 0.07 %). Run in the
	// transient scenario only.
	ProxyTuned Mode = "dingproxy, max_attempts 6"
)

// AllModes are the three clients, in table order.
var AllModes = []Mode{Direct, SDKRetry, Proxy, ProxyTuned}

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

// QPSLimit is the fake's per-path limit in the throttle scenario: DingTalk's
// standard 20 calls per second per API, with its 1 s penalty.
const QPSLimit = 20

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
	Modes []Mode
	// Seed seeds the fake's fault draws; default 1.
	Seed int64
	// Progress, if set, is called after each scenario and client.
	Progress func(Row)
}

// Row is one client's figures in one scenario.
type Row struct {
	Scenario string
	Mode     Mode
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
func (r Row) Success() float64 { return ratio(r.OK, r.Calls) }

// AttemptsPerCall is how many upstream attempts each client call cost.
func (r Row) AttemptsPerCall() float64 {
	if r.PerCall {
		return ratio(r.CallAttempts, r.Calls)
	}
	return ratio(r.UpstreamAttempts, r.Calls)
}

// ThrottledPer100 is throttle rejections per 100 upstream attempts.
func (r Row) ThrottledPer100() float64 { return 100 * ratio(r.Throttled, r.UpstreamAttempts) }

// ThrottledPer100After1s is the same after the first second of load.
func (r Row) ThrottledPer100After1s() float64 {
	return 100 * ratio(r.After1sThrottled, r.After1sAttempts)
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
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
	call func(i int) request
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
func read(i int) request {
	switch i % 3 {
	case 0:
		return request{http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
	case 1:
		return request{http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`)}
	default:
		return request{http.MethodGet, dingtalktest.PathContactUsers + fmt.Sprintf("u%d", i%50), nil}
	}
}

// send is a send with a body unique to i, on one of paths.
func send(i int, paths []string) request {
	switch p := paths[i%len(paths)]; p {
	case dingtalktest.PathRobotBatchSend:
		return request{http.MethodPost, p, fmt.Appendf(nil, `{"robotCode":"r1","userIds":["u%d"],"msgKey":"sampleText","msgParam":"{\"content\":\"notice %d\"}"}`, i%50, i)}
	case dingtalktest.PathChatSend:
		return request{http.MethodPost, p, fmt.Appendf(nil, `{"chatid":"chat%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%5, i)}
	default:
		return request{http.MethodPost, p, fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%50, i)}
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
			call: func(i int) request { return send(i, sendPaths) },
		},
		Throttle: {
			name: Throttle, duration: 5 * time.Second, rate: 60,
			setup: func(f *dingtalktest.Server) { f.SetQPSLimit(QPSLimit) },
			call: func(i int) request {
				return request{http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
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
			call: func(i int) request {
				switch i % 4 {
				case 0:
					return request{http.MethodPost, dingtalktest.PathUserGet, fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
				case 1:
					return send(i, []string{dingtalktest.PathAsyncSend})
				case 2:
					return request{http.MethodPost, dingtalktest.PathDeptListSub, []byte(`{"dept_id":1}`)}
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
		return fmt.Sprintf("reads on ONE API at 60/s for %s against DingTalk's limit of %d/s per API (1 s penalty); client timeout %s", d(5*time.Second), QPSLimit, ClientTimeout)
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

func runOne(ctx context.Context, sc scenario, m Mode, o Options) (Row, error) {
	fake := dingtalktest.New(dingtalktest.Options{Seed: o.Seed})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return Row{}, err
	}
	defer fake.Close()

	tr := &http.Transport{MaxIdleConns: maxInFlight, MaxIdleConnsPerHost: maxInFlight, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &client{hc: &http.Client{Transport: tr, Timeout: ClientTimeout}, base: fake.URL()}
	if m == Proxy || m == ProxyTuned {
		tune := func(*config.Config) {}
		if m == ProxyTuned {
			tune = func(c *config.Config) { c.Retry.MaxAttempts = 6 }
		}
		stop, url, err := demo.StartProxy(fake.URL(), tune)
		if err != nil {
			return Row{}, err
		}
		defer stop()
		c.base = url
	} else {
		tok, err := demo.FetchToken(ctx, c.hc, fake.URL())
		if err != nil {
			return Row{}, err
		}
		c.token, c.sdkRetry = tok, m == SDKRetry
	}
	if sc.setup != nil {
		sc.setup(fake)
	}
	upstream := func() int {
		return fake.TotalHits() - fake.Hits(dingtalk.PathGetToken) - fake.Hits(dingtalk.PathOAuth2Token)
	}
	base := upstream() // the direct clients' token fetch is excluded already; nothing else ran

	row := Row{Scenario: sc.name, Mode: m, PerCall: sc.perCall}
	duration := scaled(sc.duration, o.Scale)
	total := min(int(duration.Seconds()*sc.rate), maxCalls)
	interval := time.Duration(float64(time.Second) / sc.rate)
	every := scaled(sc.every, o.Scale)

	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		lat = make([]time.Duration, 0, total)
	)
	sem := make(chan struct{}, maxInFlight)
	timer := time.NewTimer(0)
	defer timer.Stop()
	begin := time.Now()
	nextTick := begin.Add(every)
	snapped := false
	var snapAttempts, snapThrottled int
	for i := 0; i < total; i++ {
		timer.Reset(time.Until(begin.Add(time.Duration(i) * interval)))
		select {
		case <-ctx.Done():
			wg.Wait()
			return row, ctx.Err()
		case <-timer.C:
		}
		now := time.Now()
		if sc.tick != nil && every > 0 && !now.Before(nextTick) {
			sc.tick(fake)
			if traceTick != nil {
				traceTick(sc.name, m, now, time.Now())
			}
			// Once per period, even after a stall of this loop: ticks
			// missed are skipped, not fired in a burst (two revocations
			// a few ms apart are not "every 2 s").
			for !now.Before(nextTick) {
				nextTick = nextTick.Add(every)
			}
		}
		if sc.snapshot1s && !snapped && now.Sub(begin) >= time.Second {
			snapped = true
			snapAttempts, snapThrottled = upstream(), fake.Throttled()
		}
		r := sc.call(i)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return row, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res := c.do(ctx, r)
			if traceCall != nil {
				traceCall(sc.name, m, r, res)
			}
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, res.latency)
			row.Calls++
			row.CallAttempts += res.attempts
			if res.ok {
				row.OK++
			}
			if res.fallback {
				row.Fallbacks++
			}
		}()
	}
	wg.Wait()
	row.Elapsed = time.Since(begin)
	if err := ctx.Err(); err != nil {
		return row, err
	}
	row.Duplicates = fake.Duplicates()
	row.Throttled = fake.Throttled()
	row.UpstreamAttempts = upstream() - base
	if snapped {
		row.HasAfter1s = true
		row.After1sAttempts = upstream() - snapAttempts
		row.After1sThrottled = row.Throttled - snapThrottled
	}
	slices.Sort(lat)
	row.P50, row.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return row, nil
}

// traceCall, if set, sees every call's outcome (tests only).
var traceCall func(scenario string, m Mode, r request, o outcome)

// traceTick, if set, is told of every tick on the fake (a token
// revocation): it took effect between from and to (tests only).
var traceTick func(scenario string, m Mode, from, to time.Time)

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p)]
}
