// Package resilience is the resilience benchmark: the same scenarios run
// against the fake DingTalk three ways (a plain client, a client with the
// common SDK retry loop, and through dingproxy on its built-in defaults), with
// a fresh fake and a fresh proxy for each client, and one table of what each
// client got and what each cost DingTalk. A second table holds issue 14's
// targets on pacing (a limit lower than configured, four replicas alone, a
// custom robot's 20 a minute) and whether dingproxy met them.
//
// The clients of a scenario run side by side, each against a fake of its
// own (nothing is shared but the machine's two cores, which the loads leave
// mostly idle), so the whole benchmark stays under 3 minutes;
// Options.OneAtATime runs them one after another instead.
package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/redistest"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// ProxyTuned is dingproxy with retry.max_attempts: 6, the attempts 99.9 %
// needs at 30 % independent faults (0.3^6 = 0.07 %). Run in the transient
// scenario only.
const ProxyTuned bench.Mode = "dingproxy, max_attempts 6"

// ProxyShared is a fleet of dingproxies in shared mode: the same four
// replicas as the fleet scenarios' "dingproxy" (alone), sharing through a
// redis-server the run starts. Run in issue 15's scenarios only, beside
// the four alone.
const ProxyShared bench.Mode = "dingproxy shared"

// AllModes are the clients, in table order.
var AllModes = []bench.Mode{bench.Direct, bench.SDKRetry, bench.Proxy, ProxyTuned, ProxyShared}

// Scenario names, for Options.Only.
const (
	Transient = "transient"
	Resets    = "resets"
	Throttle  = "throttle"
	Outage    = "outage"
	Tokens    = "tokens"
	// Issue 14's pacing targets.
	Unknown = "unknown"
	Fleet   = "fleet"
	Robot   = "robot"
	Robots  = "robots"
	// Issue 15's fleet targets: four proxies alone against four shared.
	SharedThrottle = "shared-throttle"
	SharedTokens   = "shared-tokens"
	SharedOutage   = "shared-outage"
	SharedBan      = "shared-ban"
	RedisKilled    = "redis-killed"
	// Issue 16's monthly quota and read cache.
	Quota = "quota"
	Cache = "cache"
)

// FleetScenarios are issue 15's, which need redis-server.
var FleetScenarios = []string{SharedThrottle, SharedTokens, SharedOutage, SharedBan, RedisKilled}

// Scenarios lists every scenario in run order.
var Scenarios = []string{Transient, Resets, Throttle, Outage, Tokens, Unknown, Fleet, Robot, Robots,
	SharedThrottle, SharedTokens, SharedOutage, SharedBan, RedisKilled, Quota, Cache}

// The issue 16 scenarios' figures.
const (
	// QuotaMonthly is the fake organisation's monthly quota in the quota
	// scenario; QuotaCalls metered reads go at QuotaRate on two paths.
	QuotaMonthly = 50
	QuotaCalls   = 200
	QuotaRate    = 20
	// CacheCalls identical reads go to a route with cache: CacheTTL.
	CacheCalls = 100
	CacheTTL   = 30 * time.Second
)

// quotaPaths are the quota scenario's two metered paths, one per host.
var quotaPaths = []string{dingtalktest.PathAttendanceList, dingtalktest.PathAPIEcho}

// The issue 14 scenarios' figures.
const (
	// UnknownLimit is the fake's QPS limit in the unknown scenario, where
	// dingproxy is configured with UnknownConfigured.
	UnknownLimit      = 50
	UnknownConfigured = 5000
	// FleetReplicas is how many dingproxies (or plain clients) of one app
	// share DingTalk's limit (bench.QPSLimit) in the fleet scenario.
	FleetReplicas = 4
	// RobotPerMinute is the fake's per-robot limit (DingTalk's 20 a
	// minute, then a 10-minute block) in the robot scenarios.
	RobotPerMinute = 20
	// RobotAlerts alerts go to one robot, spread over 30 s; RobotsN robots
	// get RobotsEach alerts each, all at once.
	RobotAlerts, RobotsN, RobotsEach = 40, 5, 10
	// AtOnce bounds an answer given "at once" (delivered, or answered
	// paced), far under a robot's next free turn (tens of seconds).
	AtOnce = time.Second
)

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
	// OneAtATime runs a scenario's clients one after another instead of
	// side by side (about 4 minutes in all instead of 2).
	OneAtATime bool
	// Progress, if set, is called after each scenario and client.
	Progress func(Row)
	// Redis is the server the shared proxies use; nil: Run starts one for
	// issue 15's scenarios (and skips them, telling Skipped, when there is
	// no redis-server).
	Redis *redistest.Server
	// Skipped, if set, hears of a scenario not run, and why.
	Skipped func(scenario, why string)
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
	// The fake's attempts and throttles after the scenario's warm-up (the
	// first Warmup of load), when HasAfter.
	Warmup                        time.Duration
	AfterAttempts, AfterThrottled int
	HasAfter                      bool
	// Limit is the fake's QPS limit on the one API a scenario calls (0: none
	// or several); Accepted is the successful calls per second after the
	// warm-up, counted by when each ended, over the whole seconds of the
	// clock (the fake counts its limit in them) until the load's end, when
	// HasAccepted.
	Limit       int
	Accepted    float64
	HasAccepted bool
	// Shares is each replica's share of the successful calls (a fleet).
	Shares []float64
	// RobotThrottled is how many robot sends the fake answered with its
	// robot throttle (and a 10-minute block).
	RobotThrottled int
	// Deliver is how many of the first calls a robot scenario can deliver
	// (the rest must wait for the robot's minute); Delivered is how many
	// of them succeeded, Paced how many of the rest were answered paced
	// (429, X-Dingproxy-Fallback: paced); the AtOnce counts are those
	// answered within AtOnce.
	Deliver, Delivered, Paced, DeliveredAtOnce, PacedAtOnce int
	// TokenFetches is how many tokens the fake issued.
	TokenFetches int
	// QuotaRejected is how many calls DingTalk answered 90020; QuotaAnswered
	// how many dingproxy answered quota itself, QuotaP99 their p99.
	QuotaRejected, QuotaAnswered int
	QuotaP99                     time.Duration
	// CacheHits is how many calls were answered from the read cache.
	CacheHits int
	// BanCalls is how many calls reached DingTalk once it banned the IP
	// (the fleet's ban scenario), when HasBan.
	BanCalls int
	HasBan   bool
	// ShareAgain is how long after Redis came back every proxy listened to
	// the fleet again (the Redis-killed scenario), when HasShareAgain.
	ShareAgain    time.Duration
	HasShareAgain bool
	// Alone is the same scenario's row for the proxies alone, on a shared
	// row (for the targets that compare the two).
	Alone *Row
	// P50 and P99 are the calls' latencies.
	P50, P99 time.Duration
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

// ThrottledPer100After is the same after the warm-up.
func (r Row) ThrottledPer100After() float64 {
	return 100 * bench.Ratio(r.AfterThrottled, r.AfterAttempts)
}

// AcceptedOfLimit is the accepted rate after the warm-up as a share of the
// limit.
func (r Row) AcceptedOfLimit() float64 {
	if r.Limit == 0 {
		return 0
	}
	return r.Accepted / float64(r.Limit)
}

// LeastShare is the smallest replica's share of the successful calls.
func (r Row) LeastShare() float64 {
	if len(r.Shares) == 0 {
		return 0
	}
	return slices.Min(r.Shares)
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
	// warmup, if set, is when the fake's counters are taken (unscaled):
	// the after-warm-up figures count from there.
	warmup time.Duration
	// calls, if set, is how many calls are made whatever the scale: over
	// duration (scaled), or at rate when duration is 0.
	calls int
	// fake configures the fake (a per-robot limit).
	fake dingtalktest.Options
	// tune adjusts dingproxy's configuration.
	tune func(*config.Config)
	// replicas, if above 1, makes the client a fleet of that many.
	replicas int
	// limit is the fake's QPS limit on the one API called, for the
	// accepted rate after warmup.
	limit int
	// deliver, in a robot scenario, is how many of the first calls can be
	// delivered.
	deliver int
	// fleetOnly: an issue-15 scenario, run for the proxies alone and shared
	// only.
	fleetOnly bool
	// at runs do once, at that time into the load (unscaled): a ban, Redis
	// killed and back.
	at []event
	// quotaPaths are the paths whose 90020 answers are counted.
	quotaPaths []string
}

// event is something done to the fake or to Redis during a load.
type event struct {
	at time.Duration
	do func(x *runState)
}

// runState is what one run's events act on and record.
type runState struct {
	fake   *dingtalktest.Server
	redis  *redistest.Server // nil alone
	prefix string            // the shared proxies' key prefix
	mode   bench.Mode

	banFrom   int // upstream attempts when the ban began; -1: no ban
	backAt    time.Time
	shareWait chan time.Duration // how long after backAt every proxy listened again
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
			setup:  func(f *dingtalktest.Server) { f.SetQPSLimit(bench.QPSLimit) },
			call:   userGet,
			warmup: time.Second,
		},
		Outage: {
			name: Outage, duration: 10 * time.Second, rate: 40,
			setup: func(f *dingtalktest.Server) {
				f.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
			},
			// Reads and sends on fixed paths, 10/s each: a breaker per path
			// sees enough calls to decide.
			call:    outageCall,
			perCall: true,
		},
		Tokens: {
			name: Tokens, duration: 6 * time.Second, rate: 40,
			every: 2 * time.Second,
			tick:  (*dingtalktest.Server).ExpireTokens,
			call:  read,
		},
		// Issue 14: a limit lower than the one configured, learned.
		Unknown: {
			name: Unknown, duration: 10 * time.Second, rate: 2 * UnknownLimit,
			setup: func(f *dingtalktest.Server) { f.SetQPSLimit(UnknownLimit) },
			tune: func(c *config.Config) {
				c.Pacing.PerAPIQPS = UnknownConfigured
				c.Pacing.GlobalQPS = 2 * UnknownConfigured
			},
			call:   userGet,
			warmup: 3 * time.Second,
			limit:  UnknownLimit,
		},
		// Four replicas alone share one app's limit: each sees a quarter.
		Fleet: {
			name: Fleet, duration: 10 * time.Second, rate: 10 * FleetReplicas,
			setup:    func(f *dingtalktest.Server) { f.SetQPSLimit(bench.QPSLimit) },
			replicas: FleetReplicas,
			call:     userGet,
			warmup:   3 * time.Second,
			limit:    bench.QPSLimit,
		},
		Robot: {
			name: Robot, duration: 30 * time.Second, calls: RobotAlerts,
			fake:    dingtalktest.Options{RobotPerMinute: RobotPerMinute},
			call:    func(i int) bench.Request { return alert(i, "") },
			deliver: RobotPerMinute,
		},
		// Issue 15: four proxies alone, then shared, side by side.
		SharedThrottle: {
			name: SharedThrottle, duration: 10 * time.Second, rate: 10 * FleetReplicas,
			setup:    func(f *dingtalktest.Server) { f.SetQPSLimit(bench.QPSLimit) },
			replicas: FleetReplicas, fleetOnly: true,
			call:   userGet,
			warmup: 3 * time.Second,
			limit:  bench.QPSLimit,
		},
		SharedTokens: {
			name: SharedTokens, duration: 6 * time.Second, rate: 10 * FleetReplicas,
			replicas: FleetReplicas, fleetOnly: true,
			every: 3 * time.Second,
			tick:  (*dingtalktest.Server).ExpireTokens,
			call:  read,
		},
		SharedOutage: {
			name: SharedOutage, duration: 10 * time.Second, rate: 40,
			setup: func(f *dingtalktest.Server) {
				f.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
			},
			replicas: FleetReplicas, fleetOnly: true,
			// Call i goes to replica i%4: each replica gets every path.
			call:    func(i int) bench.Request { return outageCall(i / FleetReplicas) },
			perCall: true,
		},
		SharedBan: {
			name: SharedBan, duration: 6 * time.Second, rate: 40,
			replicas: FleetReplicas, fleetOnly: true,
			call: read,
			at: []event{{2 * time.Second, func(x *runState) {
				x.banFrom = bench.Upstream(x.fake)
				x.fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.IPBanJSON(60), P: 1}}})
			}}},
		},
		RedisKilled: {
			name: RedisKilled, duration: 10 * time.Second, rate: 40,
			replicas: FleetReplicas, fleetOnly: true,
			call: read,
			at: []event{
				{3 * time.Second, func(x *runState) {
					if x.redis != nil {
						x.redis.Shutdown()
					}
				}},
				{6 * time.Second, func(x *runState) {
					if x.redis == nil {
						return
					}
					if err := x.redis.Restart(); err != nil {
						return
					}
					x.backAt = time.Now()
					go x.watchShared(x.backAt)
				}},
			},
		},
		// Issue 16: the organisation's monthly quota, and the read cache.
		Quota: {
			name: Quota, rate: QuotaRate, calls: QuotaCalls,
			fake: dingtalktest.Options{MonthlyQuota: QuotaMonthly},
			call: func(i int) bench.Request {
				return bench.Request{Method: http.MethodPost, Path: quotaPaths[i%2], Body: fmt.Appendf(nil, `{"offset":%d}`, i)}
			},
			quotaPaths: quotaPaths,
		},
		Cache: {
			name: Cache, rate: 50, calls: CacheCalls,
			tune: func(c *config.Config) {
				c.Routes = append(c.Routes, config.Route{Path: dingtalktest.PathDeptListSub, Cache: CacheTTL})
			},
			call: func(int) bench.Request {
				return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathDeptListSub, Body: []byte(`{"dept_id":1}`)}
			},
		},
		Robots: {
			name: Robots, rate: 1000, calls: RobotsN * RobotsEach,
			fake:    dingtalktest.Options{RobotPerMinute: RobotPerMinute},
			call:    func(i int) bench.Request { return alert(i, fmt.Sprintf("r%d", i%RobotsN)) },
			deliver: RobotsN * RobotsEach,
		},
	}
}

// outageCall is call i of the outages: reads and sends on four fixed
// paths in turn.
func outageCall(i int) bench.Request {
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
}

// watchShared waits (up to 30 s) until every replica listens on the
// fleet's channel again after Redis came back at from, and says how long
// that took.
func (x *runState) watchShared(from time.Time) {
	ch := x.prefix + ":" + dingtalktest.DefaultAppKey + ":events"
	for time.Since(from) < 30*time.Second {
		if n, err := x.redis.Do("PUBSUB", "NUMSUB", ch); err == nil && n == ch+" "+fmt.Sprint(FleetReplicas) {
			x.shareWait <- time.Since(from)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(x.shareWait)
}

// userGet is a read on one API.
func userGet(i int) bench.Request {
	return bench.Request{Method: http.MethodPost, Path: dingtalktest.PathUserGet, Body: fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)}
}

// alert is alert number i to a custom robot: the fake's default robot, or
// the one named robot.
func alert(i int, robot string) bench.Request {
	tok := dingtalktest.DefaultRobotToken
	if robot != "" {
		tok += "-" + robot
	}
	return bench.Request{Method: http.MethodPost, Path: dingtalk.PathRobotSend + "?" + dingtalk.QueryAccessToken + "=" + tok, Send: true,
		Body: fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d"}}`, i)}
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
	case Unknown:
		return fmt.Sprintf("reads on ONE API at %d/s for %s; DingTalk allows %d/s, dingproxy is told per_api_qps %d (the limit is learned)", 2*UnknownLimit, d(10*time.Second), UnknownLimit, UnknownConfigured)
	case Fleet:
		return fmt.Sprintf("%d replicas of one app alone (no shared state), 10/s each on ONE API for %s, against the app's %d/s", FleetReplicas, d(10*time.Second), bench.QPSLimit)
	case Robot:
		return fmt.Sprintf("%d alerts to ONE custom robot in %s; DingTalk allows %d a minute, then blocks the robot 10 minutes", RobotAlerts, d(30*time.Second), RobotPerMinute)
	case Robots:
		return fmt.Sprintf("%d custom robots x %d alerts, all at once (%d a minute each)", RobotsN, RobotsEach, RobotPerMinute)
	case SharedThrottle:
		return fmt.Sprintf("%d proxies of one app, 10/s each on ONE API for %s, against the app's %d/s", FleetReplicas, d(10*time.Second), bench.QPSLimit)
	case SharedTokens:
		return fmt.Sprintf("%d proxies, reads on 3 APIs at 40/s in all for %s; every token revoked at %s", FleetReplicas, d(6*time.Second), d(3*time.Second))
	case SharedOutage:
		return fmt.Sprintf("%d proxies; every API answers 503 for %s while reads and sends arrive at 40/s in all (4 APIs)", FleetReplicas, d(10*time.Second))
	case SharedBan:
		return fmt.Sprintf("%d proxies, reads at 40/s in all for %s; DingTalk bans the egress IP at %s (every answer the ban, for 60 s)", FleetReplicas, d(6*time.Second), d(2*time.Second))
	case Quota:
		return fmt.Sprintf("%d metered reads at %d/s on 2 APIs (oapi and api); the organisation's monthly quota is %d (then 90020)", QuotaCalls, QuotaRate, QuotaMonthly)
	case Cache:
		return fmt.Sprintf("%d identical reads at 50/s of an API dingproxy caches for %s (cache: %s)", CacheCalls, CacheTTL, CacheTTL)
	case RedisKilled:
		return fmt.Sprintf("%d proxies, reads on 3 APIs at 40/s in all for %s; Redis shut down (SHUTDOWN NOSAVE) at %s, back at %s", FleetReplicas, d(10*time.Second), d(3*time.Second), d(6*time.Second))
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

// Run runs the chosen scenarios in the order of Scenarios, each for every
// mode with a fresh fake (and fresh dingproxies); the rows come in the
// order of Modes. A scenario's clients run side by side unless
// o.OneAtATime. It stops early when ctx ends, returning the rows it has.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	all := scenarios()
	var out []Row
	var mu sync.Mutex // serializes Progress
	for _, name := range Scenarios {
		if !slices.Contains(o.Only, name) {
			continue
		}
		sc := all[name]
		var modes []bench.Mode
		for _, m := range o.Modes {
			switch {
			case sc.fleetOnly:
				if m == bench.Proxy || m == ProxyShared {
					modes = append(modes, m)
				}
			case m == ProxyShared:
			case m != ProxyTuned || name == Transient:
				modes = append(modes, m)
			}
		}
		if sc.fleetOnly && slices.Contains(modes, ProxyShared) && o.Redis == nil {
			srv, err := redistest.Launch()
			if err != nil {
				if o.Skipped != nil {
					o.Skipped(name, err.Error())
				}
				continue
			}
			defer srv.Close()
			o.Redis = srv
		}
		rows := make([]Row, len(modes))
		errs := make([]error, len(modes))
		ran := make([]bool, len(modes))
		one := func(i int) {
			rows[i], errs[i] = runOne(ctx, sc, modes[i], o)
			ran[i] = true
			if errs[i] == nil && o.Progress != nil {
				mu.Lock()
				o.Progress(rows[i])
				mu.Unlock()
			}
		}
		if o.OneAtATime {
			for i := range modes {
				if one(i); errs[i] != nil {
					break
				}
			}
		} else {
			var wg sync.WaitGroup
			for i := range modes {
				wg.Go(func() { one(i) })
			}
			wg.Wait()
		}
		// The shared proxies' row carries the alone ones' for comparison.
		if i, j := slices.Index(modes, bench.Proxy), slices.Index(modes, ProxyShared); sc.fleetOnly && i >= 0 && j >= 0 && ran[i] && errs[i] == nil {
			alone := rows[i]
			rows[j].Alone = &alone
		}
		var err error
		for i, m := range modes {
			if ran[i] && errs[i] == nil {
				out = append(out, rows[i])
			} else if err == nil {
				err = fmt.Errorf("resilience: %s, %s: %w", name, m, errs[i])
			}
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// sharedRuns numbers the shared runs: each gets key prefixes of its own.
var sharedRuns atomic.Int64

// client is the client mode m in scenario sc: a fleet of sc.replicas, and
// dingproxy tuned by sc.tune (shared through redis under prefix).
func client(sc scenario, m bench.Mode, redis *redistest.Server, prefix string) (bench.Client, error) {
	var c bench.Client
	switch {
	case m == ProxyShared:
		if redis == nil {
			return c, errors.New("shared mode without a redis-server")
		}
		share := func(c *config.Config) {
			c.Fleet.RedisURL = config.RedisURL(redis.URL())
			c.Fleet.KeyPrefix = prefix
		}
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: []func(*config.Config){sc.tune, share}}}
	case m == ProxyTuned:
		c = bench.Client{Mode: m, Via: bench.ThroughProxy{Tune: []func(*config.Config){func(c *config.Config) { c.Retry.MaxAttempts = 6 }}}}
	default:
		var err error
		if c, err = bench.Standard(m, sc.tune); err != nil {
			return c, err
		}
	}
	if sc.replicas > 1 {
		c.Via = bench.Fleet{N: sc.replicas, Of: c.Via}
	}
	return c, nil
}

func runOne(ctx context.Context, sc scenario, m bench.Mode, o Options) (Row, error) {
	x := &runState{mode: m, banFrom: -1, shareWait: make(chan time.Duration, 1)}
	if m == ProxyShared {
		x.redis = o.Redis
		x.prefix = fmt.Sprintf("res%d", sharedRuns.Add(1))
	}
	c, err := client(sc, m, x.redis, x.prefix)
	if err != nil {
		return Row{}, err
	}
	fired := make([]bool, len(sc.at))
	rate, calls := sc.rate, int(scaled(sc.duration, o.Scale).Seconds()*sc.rate)
	if sc.calls > 0 {
		calls = sc.calls
		if sc.duration > 0 {
			rate = float64(calls) / scaled(sc.duration, o.Scale).Seconds()
		}
	}
	calls = min(calls, maxCalls)
	every := scaled(sc.every, o.Scale)
	nextTick := every
	var snapped bool
	var snapAttempts, snapThrottled int
	r, err := bench.Run(ctx, c, bench.Load{
		Seed:        o.Seed,
		Fake:        sc.fake,
		Rate:        rate,
		Calls:       calls,
		MaxInFlight: maxInFlight,
		Call:        sc.call,
		Setup:       sc.setup,
		QuotaPaths:  sc.quotaPaths,
		Before: func(f *dingtalktest.Server, _ int, since time.Duration) {
			x.fake = f
			for i, ev := range sc.at {
				if !fired[i] && since >= scaled(ev.at, o.Scale) {
					fired[i] = true
					ev.do(x)
				}
			}
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
			if sc.warmup > 0 && !snapped && since >= sc.warmup {
				snapped = true
				snapAttempts, snapThrottled = bench.Upstream(f), f.Throttled()
			}
		},
	})
	row := Row{Scenario: sc.name, Mode: m, PerCall: sc.perCall, Elapsed: r.Elapsed, Warmup: sc.warmup, Limit: sc.limit, Deliver: sc.deliver}
	if err != nil {
		return row, err
	}
	ok := make([]int, max(sc.replicas, 1))
	for _, oc := range r.Outcomes {
		if traceCall != nil {
			traceCall(sc.name, m, oc)
		}
		row.Calls++
		row.CallAttempts += oc.Attempts
		if oc.OK {
			row.OK++
			ok[oc.I%len(ok)]++
		}
		if oc.Fallback {
			row.Fallbacks++
		}
		atOnce := oc.Latency < AtOnce
		switch {
		case sc.deliver == 0:
		case oc.I < sc.deliver && oc.OK:
			row.Delivered++
			if atOnce {
				row.DeliveredAtOnce++
			}
		case oc.I >= sc.deliver && oc.Status == http.StatusTooManyRequests && oc.FallbackKind == proxy.KindPaced:
			row.Paced++
			if atOnce {
				row.PacedAtOnce++
			}
		}
	}
	if len(ok) > 1 {
		for _, n := range ok {
			row.Shares = append(row.Shares, bench.Ratio(n, row.OK))
		}
	}
	row.Duplicates, row.Throttled, row.UpstreamAttempts, row.RobotThrottled = r.Duplicates, r.Throttled, r.Upstream, r.RobotThrottled
	row.TokenFetches, row.QuotaRejected = r.TokenFetches, r.QuotaRejected
	var quotaLat []time.Duration
	for _, oc := range r.Outcomes {
		if oc.FallbackKind == proxy.KindQuota {
			row.QuotaAnswered++
			quotaLat = append(quotaLat, oc.Latency)
		}
		if oc.Cache == proxy.CacheHit {
			row.CacheHits++
		}
	}
	if len(quotaLat) > 0 {
		row.QuotaP99 = bench.Percentiles(quotaLat, 0.99)[0]
	}
	if x.banFrom >= 0 {
		row.BanCalls, row.HasBan = r.Upstream-x.banFrom, true
	}
	if !x.backAt.IsZero() {
		select {
		case d, ok := <-x.shareWait:
			row.ShareAgain, row.HasShareAgain = d, ok
		case <-time.After(30 * time.Second):
		}
	}
	if snapped {
		row.HasAfter = true
		row.AfterAttempts = r.Upstream - snapAttempts
		row.AfterThrottled = r.Throttled - snapThrottled
	}
	if sc.limit > 0 && len(r.Outcomes) > 0 {
		row.Accepted, row.HasAccepted = accepted(r, sc.warmup, time.Duration(float64(calls)/rate*float64(time.Second)))
	}
	p := bench.Percentiles(r.Latencies(nil), 0.50, 0.99)
	row.P50, row.P99 = p[0], p[1]
	return row, nil
}

// accepted is the successful calls per second, counted by when each
// ended, over the whole seconds of the clock (the fake counts its limit in
// them) from warmup into the load until its end (the last arrival's
// interval); false if none fits.
func accepted(r bench.Result, warmup, load time.Duration) (float64, bool) {
	from := r.Begin.Add(warmup)
	first := from.Truncate(time.Second)
	if first.Before(from) {
		first = first.Add(time.Second)
	}
	last := r.Begin.Add(load).Truncate(time.Second)
	secs := int(last.Sub(first) / time.Second)
	if secs < 1 {
		return 0, false
	}
	n := 0
	for _, o := range r.Outcomes {
		if end := o.End(); o.OK && !end.Before(first) && end.Before(last) {
			n++
		}
	}
	return float64(n) / float64(secs), true
}

// traceCall, if set, sees every call's outcome (tests only).
var traceCall func(scenario string, m bench.Mode, o bench.Outcome)

// traceTick, if set, is told of every tick on the fake (a token
// revocation): it took effect between from and to (tests only).
var traceTick func(scenario string, m bench.Mode, from, to time.Time)

// PrintTable writes rows as one table, a line per scenario and client.
func PrintTable(w io.Writer, rows []Row) error {
	t := bench.Table{Pad: 2, Widths: []int{15, 18}}
	t.Row("scenario", "client", "calls", "success", "dup sends", "attempts/call", "throttled/100", "after warm-up", "fallbacks", "p50", "p99")
	prev := ""
	for _, r := range rows {
		name := r.Scenario
		if name == prev {
			name = ""
		}
		prev = r.Scenario
		after := "-"
		if r.HasAfter {
			after = fmt.Sprintf("%.1f", r.ThrottledPer100After())
		}
		t.Row(name, string(r.Mode), fmt.Sprint(r.Calls), bench.Pct(r.OK, r.Calls), fmt.Sprint(r.Duplicates),
			fmt.Sprintf("%.2f", r.AttemptsPerCall()), fmt.Sprintf("%.1f", r.ThrottledPer100()), after,
			fmt.Sprint(r.Fallbacks), bench.Dur(r.P50), bench.Dur(r.P99))
	}
	return t.Print(w)
}
