package scenario

import (
	"fmt"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Scenario names, for the views and their -only flags.
const (
	Demo       = "demo"
	DemoOutage = "demo-outage"

	Transient = "transient"
	Resets    = "resets"
	Throttle  = "throttle"
	Outages   = "outage"
	Tokens    = "tokens"

	Unknown = "unknown"
	Fleet   = "fleet"
	Robot   = "robot"
	Robots  = "robots"

	SharedThrottle = "shared-throttle"
	SharedTokens   = "shared-tokens"
	SharedOutage   = "shared-outage"
	SharedBan      = "shared-ban"
	RedisKilled    = "redis-killed"

	Quota = "quota"
	Cache = "cache"

	AlertBurst      = "alert-burst"
	AlertBurstMerge = "alert-burst-merge"
	Refused         = "refused"
	Killed          = "kill"
	FleetKilled     = "fleet-kill"

	Load = "load"
)

// Workloads more than one scenario runs.
var (
	// threeReads are reads on three APIs: two POST reads of the topapi
	// kind and one GET on the api host.
	threeReads = []Req{UserGet, DeptListSub, ContactUser}
	// threeSends are sends on three APIs, one of them on the api host.
	threeSends = []Req{AsyncSend, ChatSend, RobotBatchSend}
	// readsAndSends are reads and sends on four APIs in turn, so that a
	// breaker per API sees enough calls to decide.
	readsAndSends = []Req{UserGet, AsyncSend, DeptListSub, RobotBatchSend}
)

// apis are the paths of reqs.
func apis(reqs []Req) []string {
	out := make([]string, len(reqs))
	for i, q := range reqs {
		out[i] = q.API
	}
	return out
}

// The figures the targets name.
const (
	// fleetReplicas is how many dingproxies (or plain clients) of one app
	// share DingTalk's limit in the fleet scenarios.
	fleetReplicas = 4
	// quotaInFlight is how many metered calls may be in flight past the
	// quota when DingTalk first answers 90020 (dingproxy learns of it
	// from that answer).
	quotaInFlight = 4
	// cacheMisses is how many of the cache scenario's reads may reach
	// DingTalk (the first, and one racing it).
	cacheMisses = 2
)

// All is the scenario table, in run order: make demo's two phases, the
// resilience benchmark's groups, and the load tool's.
var All = table()

func table() []Scenario {
	unavailable := http.StatusServiceUnavailable
	t := []Scenario{
		{
			Name: Demo, Group: GroupDemo, Clients: Three,
			Work: Workload{APIs: []Req{UserGet, DeptList, ContactUser, AsyncSend, RobotBatchSend}, SendShare: 0.3},
			Rate: 40, Calls: 240,
			Faults: Faults{QPSLimit: bench.QPSLimit, Chaos: dingtalktest.Chaos{Faults: []dingtalktest.Weighted{
				{Fault: dingtalktest.SystemBusy(), P: 0.08},
				{Fault: dingtalktest.Status(unavailable), P: 0.04},
				{Fault: dingtalktest.ResetBeforeExec(), P: 0.04},
				{Fault: dingtalktest.ResetAfterExec(), P: 0.04},
				{Fault: dingtalktest.Latency(30 * time.Millisecond), P: 0.05},
			}}},
		},
		{
			// Under DingTalk's 20/s per API; the breaker's open_timeout
			// short, so the recovery shows within the run.
			Name: DemoOutage, Group: GroupDemo, Clients: Three,
			Work: Workload{APIs: []Req{UserGet}}, Rate: 18, Duration: 7 * time.Second,
			Faults: Faults{Outage: &Outage{Paths: []string{UserGet.API}, Status: unavailable, For: 4 * time.Second}},
			Tune:   Tuning{OpenTimeout: 2 * time.Second},
		},

		{
			Name: Transient, Group: GroupFaults, Clients: []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy, ProxyTuned},
			Work: Workload{APIs: threeReads}, Rate: 40, Duration: 5 * time.Second,
			Faults: Faults{Chaos: dingtalktest.Chaos{Faults: []dingtalktest.Weighted{
				{Fault: dingtalktest.SystemBusy(), P: 0.10},
				{Fault: dingtalktest.Status(unavailable), P: 0.10},
				{Fault: dingtalktest.ResetBeforeExec(), P: 0.10},
			}}},
		},
		{
			Name: Resets, Group: GroupFaults, Clients: Three,
			Work: Workload{APIs: threeSends}, Rate: 40, Duration: 5 * time.Second,
			Faults: Faults{Chaos: dingtalktest.Chaos{Paths: apis(threeSends),
				Faults: []dingtalktest.Weighted{{Fault: dingtalktest.ResetAfterExec(), P: 0.20}}}},
		},
		{
			Name: Throttle, Group: GroupFaults, Clients: Three,
			Work: Workload{APIs: []Req{UserGet}}, Rate: 60, Duration: 5 * time.Second, Warmup: time.Second,
			Faults: Faults{QPSLimit: bench.QPSLimit},
		},
		{
			Name: Outages, Group: GroupFaults, Clients: Three,
			Work: Workload{APIs: readsAndSends}, Rate: 40, Duration: 10 * time.Second,
			Faults: Faults{Outage: &Outage{Status: unavailable}},
		},
		{
			Name: Tokens, Group: GroupFaults, Clients: Three,
			Work: Workload{APIs: threeReads}, Rate: 40, Duration: 6 * time.Second,
			Faults: Faults{RevokeTokensEvery: 2 * time.Second},
		},

		// A limit lower than the one configured, learned.
		withTargets(Scenario{
			Name: Unknown, Group: GroupPacing, Clients: Three,
			Work: Workload{APIs: []Req{UserGet}}, Rate: 100, Duration: 10 * time.Second, Warmup: 3 * time.Second,
			Faults: Faults{QPSLimit: 50},
			Tune:   Tuning{PerAPIQPS: 5000, GlobalQPS: 10000},
		}, func(s Scenario) []Target {
			return []Target{
				atMost("throttled per 100 upstream attempts", Row.ThrottledPer100, "%.1f", 5),
				{Figure: "the same after the first " + secs(s.Warmup), Want: "<= 1",
					Value: optional(hasAfter, func(r Row) string { return fmt.Sprintf("%.1f", r.ThrottledPer100After()) }),
					Met:   func(r Row) bool { return r.HasAfter && r.ThrottledPer100After() <= 1 }},
				atMost("upstream attempts per call", Row.AttemptsPerCall, "%.2f", 1.3),
			}
		}),
		// Replicas alone share one app's limit: each sees a share.
		withTargets(Scenario{
			Name: Fleet, Group: GroupPacing, Clients: Three, Replicas: fleetReplicas,
			Work: Workload{APIs: []Req{UserGet}}, Rate: 10 * fleetReplicas, Duration: 10 * time.Second, Warmup: 3 * time.Second,
			Faults: Faults{QPSLimit: bench.QPSLimit},
		}, func(s Scenario) []Target {
			return []Target{
				atMost("throttled per 100 upstream attempts", Row.ThrottledPer100, "%.1f", 10),
				{Figure: "accepted per second after " + secs(s.Warmup) + " / the limit", Want: "0.85 - 1.15", Value: acceptedValue,
					Met: func(r Row) bool { a := r.AcceptedOfLimit(); return r.HasAccepted && a >= 0.85 && a <= 1.15 }},
				{Figure: "least replica's share of the successes", Want: ">= 15%",
					Value: func(r Row) string { return fmt.Sprintf("%.1f%%", 100*r.LeastShare()) },
					Met:   func(r Row) bool { return len(r.Shares) == s.Replicas && r.LeastShare() >= 0.15 }},
			}
		}),
		withTargets(Scenario{
			Name: Robot, Group: GroupPacing, Clients: Three,
			Work: Workload{APIs: []Req{Alert("")}}, Calls: 40, Duration: 30 * time.Second,
			Faults: Faults{RobotPerMinute: dingtalktest.RobotLimit},
		}, func(s Scenario) []Target {
			deliver := s.Deliver(s.Calls)
			return []Target{
				{Figure: "sends into DingTalk's robot throttle", Want: "0",
					Value: func(r Row) string { return fmt.Sprint(r.RobotThrottled) },
					Met:   func(r Row) bool { return r.RobotThrottled == 0 }},
				ofAll(fmt.Sprintf("first %d delivered at once (< %s)", deliver, secs(AtOnce)),
					func(r Row) int { return r.DeliveredAtOnce }, func(r Row) int { return min(r.Deliver, r.Calls) }, deliver),
				ofAll("the rest answered 429 paced at once",
					func(r Row) int { return r.PacedAtOnce }, func(r Row) int { return max(r.Calls-r.Deliver, 0) }, s.Calls-deliver),
			}
		}),
		withTargets(Scenario{
			Name: Robots, Group: GroupPacing, Clients: Three,
			Work: Workload{APIs: Alerts(5)}, Rate: 1000, Calls: 50,
			Faults: Faults{RobotPerMinute: dingtalktest.RobotLimit},
		}, func(s Scenario) []Target {
			n := len(s.Work.APIs)
			return []Target{
				ofAll(fmt.Sprintf("%d robots x %d: delivered at once", n, s.Calls/n),
					func(r Row) int { return r.DeliveredAtOnce }, func(r Row) int { return r.Calls }, s.Calls),
			}
		}),

		// Replicas alone, then shared, side by side.
		withTargets(fleet(Scenario{
			Name: SharedThrottle, Work: Workload{APIs: []Req{UserGet}}, Duration: 10 * time.Second, Warmup: 3 * time.Second,
			Faults: Faults{QPSLimit: bench.QPSLimit},
		}), func(s Scenario) []Target {
			return []Target{
				atMost("throttled per 100 upstream attempts", Row.ThrottledPer100, "%.1f", 1),
				{Figure: "accepted per second after " + secs(s.Warmup) + " / the limit", Want: "(shown)", Value: acceptedValue},
			}
		}),
		withTargets(fleet(Scenario{
			Name: SharedTokens, Work: Workload{APIs: threeReads}, Duration: 6 * time.Second,
			Faults: Faults{RevokeTokensEvery: 3 * time.Second},
		}), func(s Scenario) []Target {
			fetches := 1 + s.revocations(1)
			return []Target{
				{Figure: fmt.Sprintf("token fetches (%s)", plural(fetches-1, "revocation")), Want: fmt.Sprint(fetches),
					Value: func(r Row) string { return fmt.Sprint(r.TokenFetches) },
					Met:   func(r Row) bool { return r.TokenFetches == fetches }},
				succeeded(0.99),
			}
		}),
		withTargets(fleet(Scenario{
			// Call i goes to replica i%4: each replica gets every API.
			Name: SharedOutage, Work: Workload{APIs: readsAndSends, PerReplica: true}, Duration: 10 * time.Second,
			Faults: Faults{Outage: &Outage{Status: unavailable}},
		}), func(Scenario) []Target {
			return []Target{{Figure: "upstream attempts per call", Want: "<= alone / 2",
				Value: func(r Row) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) },
				Met:   func(r Row) bool { return r.Alone != nil && r.AttemptsPerCall() <= r.Alone.AttemptsPerCall()/2 }}}
		}),
		withTargets(fleet(Scenario{
			Name: SharedBan, Work: Workload{APIs: threeReads}, Duration: 6 * time.Second,
			Faults: Faults{Ban: &Ban{At: 2 * time.Second, Wait: 60}},
		}), func(Scenario) []Target {
			return []Target{{Figure: "calls reaching DingTalk once it banned the IP", Want: "1",
				Value: optional(func(r Row) bool { return r.HasBan }, func(r Row) string { return fmt.Sprint(r.BanCalls) }),
				Met:   func(r Row) bool { return r.HasBan && r.BanCalls <= 1 }}}
		}),
		withTargets(fleet(Scenario{
			Name: RedisKilled, Work: Workload{APIs: threeReads}, Duration: 10 * time.Second,
			Faults: Faults{RedisDown: &RedisDown{At: 3 * time.Second, Back: 6 * time.Second}},
		}), func(Scenario) []Target {
			const slower, again = 100 * time.Millisecond, 5 * time.Second
			return []Target{
				succeeded(0.99),
				{Figure: "p99", Want: "<= alone + " + ms(slower),
					Value: func(r Row) string { return bench.Dur(r.P99) },
					Met:   func(r Row) bool { return r.Alone != nil && r.P99 <= r.Alone.P99+slower }},
				{Figure: "every proxy sharing again after Redis is back", Want: "<= " + secs(again),
					Value: optional(func(r Row) bool { return r.HasShareAgain }, func(r Row) string { return bench.Dur(r.ShareAgain) }),
					Met:   func(r Row) bool { return r.HasShareAgain && r.ShareAgain <= again }},
			}
		}),

		// The organisation's monthly quota, and the read cache.
		withTargets(Scenario{
			Name: Quota, Group: GroupQuotaCache, Clients: Three,
			Work: Workload{APIs: []Req{AttendanceList, APIEcho}}, Rate: 20, Calls: 200,
			Faults: Faults{MonthlyQuota: 50},
		}, func(s Scenario) []Target {
			apis, quota := len(s.Work.APIs), s.Faults.MonthlyQuota
			const fast = 100 * time.Millisecond
			return []Target{
				{Figure: fmt.Sprintf("calls DingTalk answered 90020 (%d APIs)", apis), Want: fmt.Sprintf("<= %d + in flight", apis),
					Value: func(r Row) string { return fmt.Sprint(r.QuotaRejected) },
					Met:   func(r Row) bool { return r.QuotaRejected <= apis+quotaInFlight }},
				{Figure: "calls past the quota answered quota, their p99", Want: "< " + ms(fast),
					Value: optional(func(r Row) bool { return r.QuotaAnswered > 0 },
						func(r Row) string { return fmt.Sprintf("%d, %s", r.QuotaAnswered, bench.Dur(r.QuotaP99)) }),
					Met: func(r Row) bool { return r.QuotaAnswered+r.QuotaRejected == r.Calls-quota && r.QuotaP99 < fast }},
			}
		}),
		withTargets(Scenario{
			Name: Cache, Group: GroupQuotaCache, Clients: Three,
			Work: Workload{APIs: []Req{DeptListSub}}, Rate: 50, Calls: 100,
			Tune: Tuning{CachePath: DeptListSub.API, CacheTTL: 30 * time.Second},
		}, func(s Scenario) []Target {
			return []Target{
				{Figure: fmt.Sprintf("reads DingTalk saw of %d identical", s.Calls), Want: "<= " + fmt.Sprint(cacheMisses),
					Value: func(r Row) string { return fmt.Sprint(r.UpstreamAttempts) },
					Met:   func(r Row) bool { return r.UpstreamAttempts <= cacheMisses }},
				atLeastCount("answers marked hit", func(r Row) int { return r.CacheHits },
					func(r Row) int { return r.Calls - cacheMisses }, ">= "+fmt.Sprint(s.Calls-cacheMisses)),
			}
		}),

		// Sends kept for later: each message sent once by each client, and
		// what DingTalk delivered of them.
		withTargets(Scenario{
			Name: AlertBurst, Group: GroupDeferred, Clients: Deferring, Judge: ProxyDeferred,
			Work: Workload{APIs: []Req{Alert("")}}, Calls: 60, Duration: 6 * time.Second,
			Faults:        Faults{RobotPerMinute: dingtalktest.RobotLimit},
			DeliverWithin: 3 * time.Minute,
		}, burstTargets),
		withTargets(Scenario{
			Name: AlertBurstMerge, Group: GroupDeferred, Clients: Deferring, Judge: ProxyDeferred,
			Work: Workload{APIs: []Req{Alert("")}}, Calls: 60, Duration: 6 * time.Second,
			Faults:        Faults{RobotPerMinute: dingtalktest.RobotLimit},
			Tune:          Tuning{Merge: true},
			DeliverWithin: 70 * time.Second,
		}, burstTargets),
		withTargets(Scenario{
			Name: Refused, Group: GroupDeferred, Clients: Deferring, Judge: ProxyDeferred,
			Work: Workload{APIs: []Req{AsyncSend}}, Calls: 30, Duration: 15 * time.Second,
			Faults:        Faults{Refuse: 15 * time.Second},
			DeliverWithin: 30 * time.Second,
		}, refusedTargets),
		// The alert burst again, dingproxy a process of its own, killed
		// and started again on the same outbox: the burst's bound plus
		// the restart.
		withTargets(Scenario{
			Name: Killed, Group: GroupDeferred, Clients: Deferring, Judge: ProxyDeferred,
			Work: Workload{APIs: []Req{Alert("")}}, Calls: 60, Duration: 6 * time.Second,
			Faults:        Faults{RobotPerMinute: dingtalktest.RobotLimit, Kill: &Kill{After: 3 * time.Second, Restart: true}},
			DeliverWithin: 3 * time.Minute,
		}, killTargets),
		// Refused connections before a fleet whose courier dies: the
		// others take over its lease and what it had claimed.
		withTargets(Scenario{
			Name: FleetKilled, Group: GroupDeferred, Clients: DeferringFleet, Judge: ProxyFleetDeferred, Replicas: fleetReplicas,
			Work: Workload{APIs: []Req{AsyncSend}}, Calls: 30, Duration: 6 * time.Second,
			Faults:        Faults{Refuse: 15 * time.Second, Kill: &Kill{After: 3 * time.Second, Holder: true}},
			DeliverWithin: time.Minute,
		}, fleetKillTargets),

		{
			// Pacing raised above the load: DingTalk's 20 calls/s per API
			// would make the schedule, not dingproxy, the thing measured.
			Name: Load, Group: GroupLoad, Clients: []bench.Mode{bench.Direct, bench.Proxy},
			Work: Workload{APIs: []Req{UserGet}}, Rates: []float64{500, 1000}, Duration: 10 * time.Second, Warmup: time.Second,
			Tune: Tuning{PerAPIQPS: 1e6, GlobalQPS: 1e6},
		},
	}
	for _, s := range t {
		if err := s.validate(); err != nil {
			panic(err)
		}
	}
	return t
}

// withTargets sets s's targets, made from its fields.
func withTargets(s Scenario, targets func(Scenario) []Target) Scenario {
	s.Targets = targets(s)
	return s
}

// fleet makes s a scenario of the fleet group: fleetReplicas dingproxies
// alone beside as many shared, 10 calls a second each, the shared ones
// judged.
func fleet(s Scenario) Scenario {
	s.Group, s.Clients, s.Judge = GroupFleet, AloneAndShared, ProxyShared
	s.Replicas, s.Rate = fleetReplicas, 10*fleetReplicas
	return s
}

func hasAfter(r Row) bool { return r.HasAfter }

// revocations is how many times the scenario's tokens are revoked at
// scale: every RevokeTokensEvery until its last call.
func (s Scenario) revocations(scale float64) int {
	every := scaled(s.Faults.RevokeTokensEvery, scale)
	if every <= 0 {
		return 0
	}
	calls, rate := s.load(scale)
	last := time.Duration(float64(calls-1) / rate * float64(time.Second))
	return int(last / every)
}

func plural(n int, what string) string {
	if n == 1 {
		return "one " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
