package app

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/quota"
)

// observer turns what the layers tell into metrics and log lines. It is
// every layer's observer (each sees it through its own small interface),
// fixed when the layers are built. Route labels are the route table's
// names, from the call's facts: nothing here makes a route.
type observer struct {
	m   *metrics.Metrics
	log *zap.Logger
	// series are each route's series on the common path, resolved once.
	series sync.Map // route -> *routeSeries
	// testHookAttempted, when set (by tests, before the app is used), runs
	// first in Attempted.
	testHookAttempted func()
}

func newObserver(m *metrics.Metrics, log *zap.Logger) *observer {
	return &observer{m: m, log: log}
}

// routeSeries are a route's series on the common path, resolved once:
// WithLabelValues hashes its labels and takes a lock on every call.
type routeSeries struct {
	ok       prometheus.Counter  // requests_total{code="200"}
	duration prometheus.Observer // request_duration_seconds
	success  prometheus.Counter  // upstream_attempts_total{result="success"}
	metered  prometheus.Counter  // quota_calls_total
	// attempts are upstream_attempt_duration_seconds by upstream (oapi,
	// api), each resolved on first use: a route's calls go to one
	// upstream, but the overflow route's may go to both.
	attempts [2]atomic.Pointer[prometheus.Observer]
}

// attemptDuration is the route's attempt latency series on up.
func (rs *routeSeries) attemptDuration(m *metrics.Metrics, route string, up dingtalk.Upstream) prometheus.Observer {
	slot := &rs.attempts[min(int(up), 1)]
	if o := slot.Load(); o != nil {
		return *o
	}
	o := m.AttemptDuration.WithLabelValues(route, up.String())
	slot.Store(&o)
	return o
}

// seriesFor returns route's resolved series. Routes are bounded by the
// proxy's route table, so the map is too.
func (o *observer) seriesFor(route string) *routeSeries {
	if v, ok := o.series.Load(route); ok {
		return v.(*routeSeries)
	}
	m := o.m
	v, _ := o.series.LoadOrStore(route, &routeSeries{
		ok:       m.Requests.WithLabelValues(route, "200"),
		duration: m.RequestDuration.WithLabelValues(route),
		success:  m.Attempts.WithLabelValues(route, dingtalk.ReasonSuccess),
		metered:  m.QuotaCalls.WithLabelValues(route),
	})
	return v.(*routeSeries)
}

// Attempted counts each attempt and times it by route and upstream
// (retry.Observer).
func (o *observer) Attempted(f *call.Facts, _ int, rep call.Report) {
	if o.testHookAttempted != nil {
		o.testHookAttempted()
	}
	rs := o.seriesFor(f.Route)
	if rep.Reason == dingtalk.ReasonSuccess {
		rs.success.Inc()
	} else {
		o.m.Attempts.WithLabelValues(f.Route, rep.Reason).Inc()
	}
	rs.attemptDuration(o.m, f.Route, f.Upstream).Observe(rep.Took.Seconds())
}

// Retrying counts a retry (retry.Observer).
func (o *observer) Retrying(f *call.Facts, reason string, _ time.Duration) {
	o.m.Retries.WithLabelValues(f.Route, reason).Inc()
}

// BudgetExhausted counts and logs a retry the budget refused (retry.Observer).
func (o *observer) BudgetExhausted(f *call.Facts, rep call.Report) {
	o.m.BudgetExhausted.WithLabelValues(f.Route).Inc()
	o.log.Warn("retry budget exhausted: answer forwarded without retry", zap.String("route", f.Route),
		zap.String("reason", rep.Reason), zap.Int("attempt", rep.Attempts))
}

// RateChanged sets a route's learned rate (pacing.RateObserver).
func (o *observer) RateChanged(route string, from, to float64) {
	o.m.PacingRate.WithLabelValues(route).Set(to)
	if to > 2*from || to < from/2 {
		o.log.Info("pacing: learned rate changed", zap.String("route", route),
			zap.Float64("from", from), zap.Float64("to", to))
	}
}

// BreakerChanged sets a route's breaker state (breaker.Observer).
func (o *observer) BreakerChanged(route string, _, to breaker.State) {
	o.m.BreakerState.WithLabelValues(route).Set(float64(to))
	o.m.BreakerTransits.WithLabelValues(route, to.String()).Inc()
}

// QuotaWarned logs the budget's warning (quota.Observer).
func (o *observer) QuotaWarned(sent, budget int64) {
	o.log.Warn("quota: this app has spent 80% of its monthly budget", zap.Int64("sent", sent), zap.Int64("monthly_budget", budget))
}

// QuotaStopped logs a route's stop or resumption (quota.Observer).
func (o *observer) QuotaStopped(route string, stopped bool, st quota.State) {
	if route == quota.Organisation {
		if stopped {
			o.log.Warn("quota: DingTalk says the organisation's usage is at its quota: no metered API is called until the month turns (one probe an hour for them all)",
				zap.Int64("org_used", st.Used), zap.Int64("org_quota", st.Limit), zap.String("month", st.Month))
		} else {
			o.log.Info("quota: the organisation's quota came back: metered APIs are called again", zap.String("month", st.Month))
		}
		return
	}
	if stopped {
		o.log.Warn("quota: DingTalk answered 90020: the route is not called again this month (one probe an hour)",
			zap.String("route", route), zap.Int64("org_used", st.Used), zap.Int64("org_quota", st.Limit))
	} else {
		o.log.Info("quota: the route is called again", zap.String("route", route), zap.String("month", st.Month))
	}
}

// QuotaSent counts a metered attempt (quota.Observer).
func (o *observer) QuotaSent(route string) { o.seriesFor(route).metered.Inc() }

// CacheResult counts a read cache hit or miss (proxy.CacheObserver).
func (o *observer) CacheResult(route, result string) {
	o.m.CacheRequests.WithLabelValues(route, result).Inc()
}

// Served counts an answered request, and logs the fallbacks
// (proxy.Observer).
func (o *observer) Served(route string, status int, fallback string, f *call.Facts, d time.Duration) {
	m := o.m
	rs := o.seriesFor(route)
	rs.duration.Observe(d.Seconds())
	if fallback != "" {
		m.Fallbacks.WithLabelValues(route, fallback).Inc()
		o.log.Info("fallback served", zap.String("route", route), zap.String("kind", fallback), zap.Int("status", status))
	}
	if f != nil && f.NotBuffered != "" {
		m.Unreplayable.WithLabelValues(route, f.NotBuffered).Inc()
	}
	// Last: whoever sees the request counted sees all of the above.
	if status == http.StatusOK {
		rs.ok.Inc()
	} else {
		m.Requests.WithLabelValues(route, metrics.Code(status)).Inc()
	}
}

// TokenFetched counts a token fetch (token.Observer).
func (o *observer) TokenFetched(err error, _ time.Time) {
	if err != nil {
		o.m.TokenRefreshes.WithLabelValues(metrics.ResultFailure).Inc()
	} else {
		o.m.TokenRefreshes.WithLabelValues(metrics.ResultSuccess).Inc()
	}
}

// RedisUp sets the fleet's Redis gauge (fleet.Observer).
func (o *observer) RedisUp(up bool) {
	if up {
		o.m.FleetRedisUp.Set(1)
	} else {
		o.m.FleetRedisUp.Set(0)
	}
}

// RedisFailed counts a failed Redis operation (fleet.Observer).
func (o *observer) RedisFailed(op string) { o.m.FleetErrors.WithLabelValues(op).Inc() }

// routeJanitor lets go of what was kept by a route's name once the route
// table gives the route up (a path DingTalk does not know): its series and
// its breaker (proxy.RouteObserver).
type routeJanitor struct {
	obs      *observer
	breakers *breaker.Set
}

func (j routeJanitor) RouteReleased(route string) {
	j.obs.series.Delete(route)
	j.obs.m.ForgetRoute(route)
	j.breakers.Forget(route)
}

// Finished counts a kept send's end (deferral.Observer).
func (o *observer) Finished(route, result string) {
	o.m.OutboxSends.WithLabelValues(route, result).Inc()
}

// Dropped logs nothing more (the store logs what it drops) but counts it
// among the outbox's dead (outbox.Observer): a kept send that no longer
// reads back is a send that will not be delivered.
func (o *observer) Dropped(why string) {
	o.m.OutboxSends.WithLabelValues("_dropped", "dead").Inc()
}
