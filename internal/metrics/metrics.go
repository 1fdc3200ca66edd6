// Package metrics holds dingproxy's Prometheus metrics, on a registry of its
// own: the public names of docs/metrics.md, bounded labels, and what an
// operator needs beyond them.
//
// Label values are bounded by construction: route is a name from the
// proxy's route table (a configured path, one of at most breaker.max_routes
// APIs, or "_other"); code is an HTTP status; result, reason and kind come from fixed
// vocabularies. No raw errcode, token, user id or query is ever a label.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

const namespace = "dingproxy"

// Results of a token fetch or a config reload.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
)

// Reasons for which a body was not buffered for replay.
const (
	// UnreplayableTooLarge: the body is larger than retry.max_body_bytes.
	UnreplayableTooLarge = "too_large"
	// UnreplayableBufferCap: retry.max_buffered_bytes was reached.
	UnreplayableBufferCap = "buffer_cap"
)

// Vocabularies used to create series at zero for configured routes, so that
// rate() and alerts work from the first scrape.
var (
	// RetryReasons are the attempt reasons that can be retried.
	RetryReasons = []string{"rate_limited", "http_429", "token_invalid", "system_busy", "http_5xx", "dial_error", "reset", "timeout"}
	// FallbackKinds are the X-Dingproxy-Fallback values.
	FallbackKinds = []string{"circuit-open", "ip-ban", "route", "stale", "paced", "quota"}
	// BreakerStates are the "to" values of a breaker transition.
	BreakerStates = []string{"closed", "half-open", "open"}
)

// Metrics is every dingproxy metric and the registry that holds them.
type Metrics struct {
	Registry *prometheus.Registry

	Requests          *prometheus.CounterVec   // route, code
	RequestDuration   *prometheus.HistogramVec // route
	Attempts          *prometheus.CounterVec   // route, result
	AttemptDuration   *prometheus.HistogramVec // upstream
	Retries           *prometheus.CounterVec   // route, reason
	BudgetExhausted   *prometheus.CounterVec   // route
	BreakerState      *prometheus.GaugeVec     // route
	BreakerTransits   *prometheus.CounterVec   // route, to
	Fallbacks         *prometheus.CounterVec   // route, kind
	PacingRate        *prometheus.GaugeVec     // route
	Unreplayable      *prometheus.CounterVec   // route, reason
	Inflight          prometheus.GaugeFunc     // reads the counter InflightFrom sets
	inflight          atomic.Pointer[func() int64]
	TokenRefreshes    *prometheus.CounterVec // result
	tokenExpiry       atomic.Pointer[func() time.Time]
	Reloads           *prometheus.CounterVec // result
	ReloadSuccessful  prometheus.Gauge
	ReloadSuccessTime prometheus.Gauge
	QuotaCalls        *prometheus.CounterVec // route
	CacheRequests     *prometheus.CounterVec // route, result
	quotaState        atomic.Pointer[func() (used, limit float64)]
	quotaUsed         prometheus.GaugeFunc
	quotaLimit        prometheus.GaugeFunc
	quotaStops        *quotaStops
	OutboxSends       *prometheus.CounterVec // route, result
	outbox            *outboxCollector
	// FleetRedisUp and FleetErrors exist in shared mode only (EnableFleet).
	FleetRedisUp prometheus.Gauge
	FleetErrors  *prometheus.CounterVec // op
}

// Latency buckets: DingTalk answers in tens of milliseconds, retries and
// penalties push calls into seconds, retry.timeout caps them at 30 s.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns dingproxy's metrics on a fresh registry, with the Go and
// process collectors and build info for version.
func New(version string) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.Requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Client requests answered, by route and the HTTP status the client got.",
	}, []string{"route", "code"})
	m.RequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Time from a client request's arrival to its answer's headers, all attempts and waits included.",
		Buckets: durationBuckets,
	}, []string{"route"})
	m.Attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_attempts_total",
		Help: "Attempts sent (or tried) upstream, by route and result: success, business_error, quota, rate_limited, http_429, token_invalid, system_busy, http_5xx, ip_ban, rate_limited_minute, robot_throttled, unknown_api, dial_error, reset, timeout, canceled.",
	}, []string{"route", "result"})
	m.AttemptDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_attempt_duration_seconds",
		Help:    "One attempt's latency, from its sending (after any wait for its turn) to its classified answer, by route and upstream (oapi, api): what breaker.slow_call is compared with.",
		Buckets: durationBuckets,
	}, []string{"route", "upstream"})
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "retries_total",
		Help: "Retries made, by route and the reason of the attempt that was retried.",
	}, []string{"route", "reason"})
	m.BudgetExhausted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "retry_budget_exhausted_total",
		Help: "Retries wanted but refused by the retry budget.",
	}, []string{"route"})
	m.BreakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "breaker_state",
		Help: "Circuit breaker state by route: 0 closed, 1 half-open, 2 open.",
	}, []string{"route"})
	m.BreakerTransits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "breaker_transitions_total",
		Help: "Circuit breaker state changes by route and the state entered.",
	}, []string{"route", "to"})
	m.Fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "fallbacks_total",
		Help: "Answers served instead of calling DingTalk, by route and kind: circuit-open, ip-ban, route, stale, paced, quota.",
	}, []string{"route", "kind"})
	m.PacingRate = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "pacing_rate",
		Help: "Calls per second the pacer lets through on a route now: pacing.per_api_qps, lower while DingTalk throttles.",
	}, []string{"route"})
	m.Unreplayable = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "unreplayable_requests_total",
		Help: "Requests whose body was streamed once and could not be retried, by route and reason: too_large (over retry.max_body_bytes), buffer_cap (retry.max_buffered_bytes reached).",
	}, []string{"route", "reason"})
	m.Inflight = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "inflight_requests",
		Help: "Client requests being served now.",
	}, func() float64 {
		if f := m.inflight.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	m.TokenRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "token_refreshes_total",
		Help: "Access token fetches by result (success, failure).",
	}, []string{"result"})
	tokenExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "token_expiry_timestamp_seconds",
		Help: "When the held access token expires, as a Unix time; 0 while none is held (and in pass-through mode).",
	}, func() float64 {
		if f := m.tokenExpiry.Load(); f != nil {
			if t := (*f)(); !t.IsZero() {
				return float64(t.UnixNano()) / 1e9
			}
		}
		return 0
	})
	m.Reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads by result (success, failure).",
	}, []string{"result"})
	m.ReloadSuccessful = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "config_last_reload_successful",
		Help: "1 if the last configuration reload was applied, 0 if it was refused.",
	})
	m.ReloadSuccessTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
		Help: "When the configuration in force was loaded, as a Unix time.",
	})
	m.QuotaCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "quota_calls_total",
		Help: "Calls sent that DingTalk may count against the organisation's monthly quota (retries included), by route.",
	}, []string{"route"})
	m.CacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cache_requests_total",
		Help: "Calls on routes with a read cache, by route and result: hit (answered from the cache, nothing sent) or miss.",
	}, []string{"route", "result"})
	quotaGauge := func(name, help string, pick func(used, limit float64) float64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, func() float64 {
			if f := m.quotaState.Load(); f != nil {
				return pick((*f)())
			}
			return -1
		})
	}
	m.quotaUsed = quotaGauge("quota_used", "Metered calls this month: the organisation's as DingTalk last said (a 90020 message), else this app's own count (the fleet's, shared); -1 unknown.",
		func(used, _ float64) float64 { return used })
	m.quotaLimit = quotaGauge("quota_limit", "The month's limit: quota.monthly_budget when set, else the organisation's quota as DingTalk last said; -1 unknown.",
		func(_, limit float64) float64 { return limit })
	m.quotaStops = &quotaStops{desc: prometheus.NewDesc(namespace+"_quota_stops",
		"Stops of the monthly quota in force, by scope: path (paths stopped because DingTalk answered 90020 there), organisation (1 while every metered path is stopped: DingTalk said the organisation's usage is at its quota), budget (1 while quota.monthly_budget is spent).",
		[]string{"scope"}, nil)}
	m.OutboxSends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "outbox_sends_total",
		Help: "Deferred sends finished, by route and result: delivered (DingTalk succeeded), dead (given up), unknown (an attempt may have executed; not sent again).",
	}, []string{"route", "result"})
	m.outbox = newOutboxCollector()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; labels name the running build.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)

	m.Registry.MustRegister(
		m.Requests, m.RequestDuration, m.Attempts, m.AttemptDuration, m.Retries,
		m.BudgetExhausted, m.BreakerState, m.BreakerTransits, m.Fallbacks, m.PacingRate,
		m.Unreplayable, m.Inflight, m.TokenRefreshes, tokenExpiry, m.Reloads,
		m.ReloadSuccessful, m.ReloadSuccessTime, build,
		m.QuotaCalls, m.CacheRequests, m.quotaUsed, m.quotaLimit, m.quotaStops,
		m.OutboxSends, m.outbox,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, r := range []string{ResultSuccess, ResultFailure} {
		m.TokenRefreshes.WithLabelValues(r)
		m.Reloads.WithLabelValues(r)
	}
	m.ReloadSuccessful.Set(1)
	m.ReloadSuccessTime.Set(float64(time.Now().UnixNano()) / 1e9)
	return m
}

// InitRoute creates route's series at zero (pacing rate at qps), so a
// configured route is on dashboards and in alerts before its first call.
func (m *Metrics) InitRoute(route string, qps float64) {
	m.Requests.WithLabelValues(route, "200")
	m.RequestDuration.WithLabelValues(route)
	m.Attempts.WithLabelValues(route, "success")
	m.AttemptDuration.WithLabelValues(route, dingtalk.UpstreamFor(route).String())
	for _, r := range RetryReasons {
		m.Retries.WithLabelValues(route, r)
	}
	m.BudgetExhausted.WithLabelValues(route)
	m.BreakerState.WithLabelValues(route)
	for _, to := range BreakerStates {
		m.BreakerTransits.WithLabelValues(route, to)
	}
	for _, k := range FallbackKinds {
		m.Fallbacks.WithLabelValues(route, k)
	}
	m.PacingRate.WithLabelValues(route).Set(qps)
	m.QuotaCalls.WithLabelValues(route)
	m.Unreplayable.WithLabelValues(route, UnreplayableTooLarge)
	m.Unreplayable.WithLabelValues(route, UnreplayableBufferCap)
}

// InflightFrom sets the counter the in-flight gauge reads at scrape time.
func (m *Metrics) InflightFrom(f func() int64) { m.inflight.Store(&f) }

// TokenExpiresAt sets where the token expiry gauge reads from at scrape
// time: f returns the held token's expiry, zero when none is held.
func (m *Metrics) TokenExpiresAt(f func() time.Time) { m.tokenExpiry.Store(&f) }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Reloaded records a configuration reload's result.
func (m *Metrics) Reloaded(ok bool) {
	if ok {
		m.Reloads.WithLabelValues(ResultSuccess).Inc()
		m.ReloadSuccessful.Set(1)
		m.ReloadSuccessTime.Set(float64(time.Now().UnixNano()) / 1e9)
		return
	}
	m.Reloads.WithLabelValues(ResultFailure).Inc()
	m.ReloadSuccessful.Set(0)
}

// Code is an HTTP status as a label value, without allocating for the
// common ones.
func Code(status int) string {
	if status >= 100 && status < 600 {
		if s := codes[status-100]; s != "" {
			return s
		}
	}
	return strconv.Itoa(status)
}

var codes = func() (t [500]string) {
	for i := range t {
		t[i] = strconv.Itoa(i + 100)
	}
	return t
}()

// EnableFleet registers the shared mode's metrics, with a series for each
// of ops: dingproxy_fleet_redis_up (1 while Redis answers) and
// dingproxy_fleet_errors_total{op}. Alone, they are not exported at all (a
// 0 there would read as a Redis outage).
func (m *Metrics) EnableFleet(ops []string) {
	m.FleetRedisUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "fleet_redis_up",
		Help: "1 while the fleet's Redis answers (shared mode), 0 while each proxy carries on alone.",
	})
	m.FleetErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "fleet_errors_total",
		Help: "Failed or timed-out Redis operations of the fleet, and values read from Redis that were not the fleet's (dropped), by operation.",
	}, []string{"op"})
	m.Registry.MustRegister(m.FleetRedisUp, m.FleetErrors)
	for _, op := range ops {
		m.FleetErrors.WithLabelValues(op)
	}
}

// QuotaUsed is dingproxy_quota_used.
func (m *Metrics) QuotaUsed() prometheus.Collector { return m.quotaUsed }

// QuotaLimit is dingproxy_quota_limit.
func (m *Metrics) QuotaLimit() prometheus.Collector { return m.quotaLimit }

// QuotaFrom makes dingproxy_quota_used and dingproxy_quota_limit read f.
func (m *Metrics) QuotaFrom(f func() (used, limit float64)) { m.quotaState.Store(&f) }

// QuotaStops are the quota's stops in force, for dingproxy_quota_stops.
type QuotaStops struct {
	// Paths is how many paths are stopped by a 90020 there.
	Paths int
	// Organisation: every metered path is stopped; Budget:
	// quota.monthly_budget is spent.
	Organisation, Budget bool
}

// QuotaStopsFrom makes dingproxy_quota_stops read f; until it is set the
// series read 0.
func (m *Metrics) QuotaStopsFrom(f func() QuotaStops) { m.quotaStops.from.Store(&f) }

// quotaStops is dingproxy_quota_stops, read at each scrape.
type quotaStops struct {
	desc *prometheus.Desc
	from atomic.Pointer[func() QuotaStops]
}

func (q *quotaStops) Describe(ch chan<- *prometheus.Desc) { ch <- q.desc }

func (q *quotaStops) Collect(ch chan<- prometheus.Metric) {
	var s QuotaStops
	if f := q.from.Load(); f != nil {
		s = (*f)()
	}
	one := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, float64(s.Paths), "path")
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, one(s.Organisation), "organisation")
	ch <- prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, one(s.Budget), "budget")
}

// InitCache creates a route's read-cache series at 0 (a route with cache:).
func (m *Metrics) InitCache(route string) {
	for _, r := range []string{"hit", "miss"} {
		m.CacheRequests.WithLabelValues(route, r)
	}
}

// ForgetRoute drops every series of route: the route table gave it up (a
// path DingTalk does not know), so its label is not kept.
func (m *Metrics) ForgetRoute(route string) {
	l := prometheus.Labels{"route": route}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.Requests, m.RequestDuration, m.Attempts, m.AttemptDuration, m.Retries, m.BudgetExhausted, m.BreakerState,
		m.BreakerTransits, m.Fallbacks, m.PacingRate, m.Unreplayable, m.QuotaCalls, m.CacheRequests, m.OutboxSends} {
		v.DeletePartialMatch(l)
	}
}
