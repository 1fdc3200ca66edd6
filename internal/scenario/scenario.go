package scenario

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// Group is what a scenario is about; each view runs its groups.
type Group string

// The groups, in table order.
const (
	// GroupDemo is make demo's two phases.
	GroupDemo Group = "demo"
	// GroupFaults is DingTalk misbehaving: transient errors, resets after
	// execution, its QPS limit, an outage, revoked tokens.
	GroupFaults Group = "faults"
	// GroupPacing is limits dingproxy must keep without being told: a
	// lower limit than configured, replicas alone, custom robots.
	GroupPacing Group = "pacing"
	// GroupFleet is four dingproxies alone beside four sharing through
	// Redis (needs redis-server).
	GroupFleet Group = "fleet"
	// GroupQuotaCache is the monthly quota and the read cache.
	GroupQuotaCache Group = "quota and cache"
	// GroupDeferred is sends dingproxy keeps for later (routes[].defer):
	// an alert burst past a robot's minute, refused connections.
	GroupDeferred Group = "deferred"
	// GroupLoad is the load tool's: the latency dingproxy adds.
	GroupLoad Group = "load"
)

// TunedAttempts is ProxyTuned's retry.max_attempts: what 99.9 % needs at
// 30 % independent faults (0.3^6 = 0.07 %).
const TunedAttempts = 6

// The clients beyond bench's three.
var (
	// ProxyTuned is dingproxy with retry.max_attempts TunedAttempts.
	ProxyTuned = bench.Mode(fmt.Sprintf("dingproxy, max_attempts %d", TunedAttempts))
	// ProxyShared is a fleet of dingproxies in shared mode: the same
	// replicas as the fleet's "dingproxy" (alone), sharing through a
	// redis-server.
	ProxyShared bench.Mode = "dingproxy shared"
	// ProxyDeferred is dingproxy with routes[].defer on every send route
	// of the workload (defer.merge on the robot's when Tuning.Merge), its
	// outbox in a temporary directory.
	ProxyDeferred bench.Mode = "dingproxy, defer"
	// ProxyFleetDeferred is the scenario's replicas of dingproxy, each a
	// process of its own, sharing through a redis-server, with
	// routes[].defer as ProxyDeferred's: the fleet's shared outbox.
	ProxyFleetDeferred bench.Mode = "dingproxy fleet, defer"
)

// Client sets.
var (
	// AllModes are the clients, in table order.
	AllModes = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy, ProxyTuned, ProxyShared, ProxyDeferred, ProxyFleetDeferred}
	// Three is a plain client, the SDK loop and dingproxy.
	Three = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy}
	// AloneAndShared is dingproxies alone beside dingproxies shared.
	AloneAndShared = []bench.Mode{bench.Proxy, ProxyShared}
	// Deferring is a plain client, the SDK loop and dingproxy deferring.
	Deferring = []bench.Mode{bench.Direct, bench.SDKRetry, ProxyDeferred}
	// DeferringFleet is a plain client, the SDK loop and dingproxy's
	// fleet deferring.
	DeferringFleet = []bench.Mode{bench.Direct, bench.SDKRetry, ProxyFleetDeferred}
	// Shared are the clients that share through a redis-server.
	Shared = []bench.Mode{ProxyShared, ProxyFleetDeferred}
)

// Scenario is one workload against one kind of trouble, for some clients,
// with the targets dingproxy must keep in it. It is data: its description
// is made from its fields (Describe).
type Scenario struct {
	Name  string
	Group Group
	Work  Workload
	// Rate is client calls per second, for Duration (multiplied by the
	// run's scale).
	Rate     float64
	Duration time.Duration
	// Calls, if set, is how many calls are made whatever the scale: over
	// Duration (scaled), or at Rate when Duration is 0.
	Calls int
	// Rates, for the load tool, are rates measured one after another on
	// one fake and one dingproxy, each for Duration.
	Rates []float64
	// Warmup, if set, is when the figures "after warm-up" start (not
	// scaled: dingproxy needs it whatever the run's length); for the load
	// tool, an unmeasured phase before each rate.
	Warmup time.Duration
	Faults Faults
	// Clients are the clients run, in table order.
	Clients []bench.Mode
	// Replicas, if above 1, makes each client a fleet of that many, calls
	// spread over them in turn.
	Replicas int
	// Tune is every dingproxy's configuration beyond the defaults.
	Tune Tuning
	// DeliverWithin, if set, is how soon every message must be delivered:
	// from the load's start, or from the end of Faults.Refuse. The run
	// waits for dingproxy's deferred sends that long (and awaitGrace more)
	// and counts what DingTalk delivered, message by message.
	DeliverWithin time.Duration
	// Judge is the client whose row the targets judge (default dingproxy).
	Judge   bench.Mode
	Targets []Target
}

func (s Scenario) validate() error {
	if err := s.Work.validate(); err != nil {
		return fmt.Errorf("scenario %s: workload: %w", s.Name, err)
	}
	if err := s.Faults.validate(); err != nil {
		return fmt.Errorf("scenario %s: faults: %w", s.Name, err)
	}
	paced := s.Rate > 0 || len(s.Rates) > 0 || s.Calls > 0 && s.Duration > 0
	if !paced || s.Duration <= 0 && s.Calls <= 0 || len(s.Clients) == 0 {
		return fmt.Errorf("scenario %s: rate %v, duration %v, calls %d, clients %v", s.Name, s.Rate, s.Duration, s.Calls, s.Clients)
	}
	if _, sends := s.Work.split(); s.DeliverWithin > 0 && (len(sends) == 0 || s.Work.SendShare > 0) {
		return fmt.Errorf("scenario %s: deliveries counted without sends in turn", s.Name)
	}
	if m := s.deferring(); m != "" && s.DeliverWithin <= 0 {
		return fmt.Errorf("scenario %s: dingproxy deferring, and no time to deliver in", s.Name)
	}
	if k := s.Faults.Kill; k != nil {
		switch {
		case s.deferring() == "":
			return fmt.Errorf("scenario %s: a kill without dingproxy deferring", s.Name)
		case k.Holder != slices.Contains(s.Clients, ProxyFleetDeferred):
			return fmt.Errorf("scenario %s: the lease holder killed, and not a fleet deferring (or the reverse)", s.Name)
		}
	}
	if slices.Contains(s.Clients, ProxyFleetDeferred) && (s.replicas() < 2 || s.Faults.Kill == nil) {
		return fmt.Errorf("scenario %s: dingproxy's fleet of %d, none killed", s.Name, s.replicas())
	}
	return nil
}

// deferring is the client of s that defers ("": none).
func (s Scenario) deferring() bench.Mode {
	for _, m := range s.Clients {
		if m == ProxyDeferred || m == ProxyFleetDeferred {
			return m
		}
	}
	return ""
}

// sharedOn puts a dingproxy in the fleet on the redis-server at url,
// under key prefix prefix.
func sharedOn(url, prefix string) func(*config.Config) {
	return func(c *config.Config) {
		c.Fleet.RedisURL = config.RedisURL(url)
		c.Fleet.KeyPrefix = prefix
	}
}

// judge is the client the targets judge.
func (s Scenario) judge() bench.Mode {
	if s.Judge == "" {
		return bench.Proxy
	}
	return s.Judge
}

// replicas is how many replicas each client has (1 for one).
func (s Scenario) replicas() int { return max(s.Replicas, 1) }

// load is the scenario's calls and rate at scale.
func (s Scenario) load(scale float64) (calls int, rate float64) {
	d := scaled(s.Duration, scale)
	rate, calls = s.Rate, int(d.Seconds()*s.Rate)
	if s.Calls > 0 {
		calls = s.Calls
		if s.Duration > 0 {
			rate = float64(calls) / d.Seconds()
		}
	}
	return min(calls, maxCalls), rate
}

// Limit is the fake's QPS limit on the one API the scenario calls (0: no
// limit, or several APIs): the accepted rate is measured against it.
func (s Scenario) Limit() int {
	if len(s.Work.APIs) != 1 {
		return 0
	}
	return s.Faults.QPSLimit
}

// Deliver is how many of a robot scenario's first calls DingTalk can
// deliver: each robot's first RobotPerMinute, the robots taken in turn;
// the rest must wait for a robot's next minute (0: not a robot scenario).
func (s Scenario) Deliver(calls int) int {
	n := s.Work.robots()
	if n == 0 || s.Faults.RobotPerMinute == 0 {
		return 0
	}
	return min(calls, n*s.Faults.RobotPerMinute)
}

// sharedRuns numbers the shared runs: each gets key prefixes of its own.
var sharedRuns atomic.Int64

// client is client mode m in the scenario: a fleet of Replicas, and
// dingproxy tuned by Tune (shared through redis under prefix).
func (s Scenario) client(m bench.Mode, redis *redistest.Server, prefix, outbox string) (bench.Client, error) {
	tune := []func(*config.Config){s.Tune.apply}
	var c bench.Client
	switch {
	case s.asProcesses(m):
		if outbox == "" {
			return c, errors.New("dingproxy deferring without an outbox directory")
		}
		url := ""
		if redis != nil {
			url = redis.URL()
		}
		p, err := s.processes(m, url, prefix, outbox)
		if err != nil {
			return c, err
		}
		return bench.Client{Mode: m, Via: p}, nil
	case m == ProxyDeferred:
		if outbox == "" {
			return c, errors.New("dingproxy deferring without an outbox directory")
		}
		tune = append(tune, s.deferOn(outbox))
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: tune}}
	case m == ProxyShared:
		if redis == nil {
			return c, errors.New("shared mode without a redis-server")
		}
		tune = append(tune, sharedOn(redis.URL(), prefix))
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: tune}}
	case m == ProxyTuned:
		tune = append(tune, Tuning{MaxAttempts: TunedAttempts}.apply)
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: tune}}
	default:
		var err error
		if c, err = bench.Standard(m, tune...); err != nil {
			return c, err
		}
	}
	if s.Replicas > 1 {
		c.Via = bench.Fleet{N: s.Replicas, Of: c.Via}
	}
	return c, nil
}

// Open readies client mode m of the scenario against fake, for views that
// run their own schedule (the load tool); Close it when done.
func (s Scenario) Open(ctx context.Context, m bench.Mode, fake *dingtalktest.Server, hc *http.Client) (*bench.Caller, error) {
	c, err := s.client(m, nil, "", "")
	if err != nil {
		return nil, err
	}
	return bench.Open(ctx, c, fake, hc)
}

// Find is the scenario of the table named name.
func Find(name string) (Scenario, bool) {
	i := slices.IndexFunc(All, func(s Scenario) bool { return s.Name == name })
	if i < 0 {
		return Scenario{}, false
	}
	return All[i], true
}

// Must is the scenario of the table named name; it panics if there is
// none (the views name theirs).
func Must(name string) Scenario {
	s, ok := Find(name)
	if !ok {
		panic("scenario: no scenario " + name)
	}
	return s
}

// Of are the table's scenarios in groups, in table order.
func Of(groups ...Group) []Scenario {
	var out []Scenario
	for _, s := range All {
		if slices.Contains(groups, s.Group) {
			out = append(out, s)
		}
	}
	return out
}

// Names are the names of scenarios.
func Names(ss []Scenario) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Name
	}
	return out
}

func scaled(d time.Duration, scale float64) time.Duration {
	if scale <= 0 {
		scale = 1
	}
	return time.Duration(float64(d) * scale).Round(time.Millisecond)
}
