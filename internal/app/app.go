package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/quota"

	"github.com/dingproxy/dingproxy/internal/fleet"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// App is a running dingproxy minus its listeners.
type App struct {
	cfg     atomic.Pointer[config.Config] // the configuration in force
	log     *zap.Logger
	level   zap.AtomicLevel
	metrics *metrics.Metrics
	series  sync.Map // route -> *routeSeries
	// inflight counts requests in the handler; maxInflight is max_inflight.
	inflight, maxInflight atomic.Int64
	// Attempt latency by upstream, resolved once.
	oapiAttempts, apiAttempts prometheus.Observer
	reloadMu                  sync.Mutex // one reload at a time
	base                      *http.Transport
	tokens                    *token.Source // nil in pass-through mode
	retry                     *retry.Transport
	breakers                  *breaker.Set
	pacer                     *pacing.Pacer
	quota                     *quota.Meter
	verdict                   func(f *retry.Facts, one retry.Report) // the fleet's failure count; nil alone
	fleet                     *fleet.Fleet                           // nil alone
	fleetPacer                *fleet.Pacer                           // nil alone
	proxy                     *proxy.Proxy
	ready                     atomic.Bool

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// Option adjusts how New builds an App.
type Option func(*options)

type options struct {
	version string
	level   *zap.AtomicLevel
}

// WithVersion names the build in dingproxy_build_info.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithLevel is the logger's level, which a reload of log.level changes.
func WithLevel(l zap.AtomicLevel) Option { return func(o *options) { o.level = &l } }

// New builds an App from cfg, which must have passed Validate.
func New(cfg *config.Config, log *zap.Logger, opts ...Option) (*App, error) {
	if log == nil {
		log = zap.NewNop()
	}
	o := options{version: "dev"}
	for _, f := range opts {
		f(&o)
	}
	oapi, err := url.Parse(cfg.Upstreams.OAPI)
	if err != nil {
		return nil, fmt.Errorf("app: upstreams.oapi: %w", err)
	}
	api, err := url.Parse(cfg.Upstreams.API)
	if err != nil {
		return nil, fmt.Errorf("app: upstreams.api: %w", err)
	}
	a := &App{log: log, base: NewUpstreamTransport(), metrics: metrics.New(o.version)}
	a.cfg.Store(cfg)
	a.maxInflight.Store(int64(cfg.MaxInflight))
	a.metrics.InflightFrom(a.inflight.Load)
	a.oapiAttempts = a.metrics.AttemptDuration.WithLabelValues(dingtalk.OAPI.String())
	a.apiAttempts = a.metrics.AttemptDuration.WithLabelValues(dingtalk.API.String())
	if o.level != nil {
		a.level = *o.level
	} else {
		a.level = zap.NewAtomicLevelAt(zap.InfoLevel) // changes nothing: the logger is not ours
	}
	m := a.metrics
	if cfg.Fleet.RedisURL != "" {
		m.EnableFleet(fleet.Ops)
		a.fleet, err = fleet.New(fleet.Options{
			URL: cfg.Fleet.RedisURL.Reveal(), KeyPrefix: cfg.Fleet.KeyPrefix, AppKey: cfg.App.Key,
			AppSecret: cfg.App.Secret.Reveal(), Timeout: cfg.Fleet.Timeout,
			Logger: log.Named("fleet"),
			OnUp: func(up bool) {
				if up {
					m.FleetRedisUp.Set(1)
				} else {
					m.FleetRedisUp.Set(0)
				}
			},
			OnError: func(op string) { m.FleetErrors.WithLabelValues(op).Inc() },
		})
		if err != nil {
			return nil, err
		}
	}
	if cfg.App.Key != "" {
		var f token.Fetcher
		if cfg.Token.Endpoint == config.EndpointGetToken {
			f = token.NewGetTokenFetcher(a.base, cfg.Upstreams.OAPI, cfg.App.Key, cfg.App.Secret.Reveal())
		} else {
			f = token.NewOAuth2Fetcher(a.base, cfg.Upstreams.API, cfg.App.Key, cfg.App.Secret.Reveal())
		}
		if a.fleet != nil {
			f = a.fleet.TokenFetcher(f, cfg.Token.RefreshBefore, cfg.Retry.PerTryTimeout)
		}
		a.tokens = token.NewSource(f, token.Options{
			RefreshBefore: cfg.Token.RefreshBefore,
			FetchTimeout:  cfg.Retry.PerTryTimeout,
			Logger:        log.Named("token"),
			OnFetch: func(err error, _ time.Time) {
				if err != nil {
					m.TokenRefreshes.WithLabelValues(metrics.ResultFailure).Inc()
				} else {
					m.TokenRefreshes.WithLabelValues(metrics.ResultSuccess).Inc()
				}
			},
		})
		tokens := a.tokens
		m.TokenExpiresAt(func() time.Time {
			if tok, exp := tokens.Peek(); tok != "" {
				return exp
			}
			return time.Time{}
		})
	} else {
		log.Info("pass-through mode: no app.key configured, tokens are not injected")
	}
	a.retry = retry.NewTransport(a.base, RetryPolicy(cfg))
	a.retry.Budget = retry.NewBudget(cfg.Retry.Budget.Ratio, cfg.Retry.Budget.MinPerSecond)
	a.retry.Logger = log.Named("retry")
	a.quota = quota.New(QuotaSettings(cfg))
	a.quota.OnWarn = func(sent, budget int64) {
		log.Warn("quota: this app has spent 80% of its monthly budget", zap.Int64("sent", sent), zap.Int64("monthly_budget", budget))
	}
	a.quota.OnStop = func(route string, stopped bool) {
		st := a.quota.State()
		if stopped && a.fleet != nil {
			a.fleet.StopMonth(route, a.quota.MonthEnd())
		}
		if stopped {
			log.Warn("quota: DingTalk answered 90020: the route is not called again this month (one probe an hour)",
				zap.String("route", route), zap.Int64("org_used", st.Used), zap.Int64("org_quota", st.Limit))
		} else {
			log.Info("quota: the route is called again", zap.String("route", route), zap.String("month", st.Month))
		}
	}
	m.QuotaFrom(func() (float64, float64) {
		st := a.quota.State()
		used, limit := float64(st.Sent), float64(-1)
		if st.Used >= 0 {
			used = float64(st.Used)
		}
		if st.Budget > 0 {
			limit = float64(st.Budget)
		} else if st.Limit >= 0 {
			limit = float64(st.Limit)
		}
		return used, limit
	})
	a.pacer = pacing.New(PacingSettings(cfg))
	a.retry.Pacer = a.pacer // takes its feedback from the loop itself
	if a.fleet != nil {
		a.fleetPacer = a.fleet.NewPacer(a.pacer, PacingSettings(cfg))
		a.retry.Pacer = a.fleetPacer // Redis while it answers, a.pacer when not
	}
	a.retry.Observe = a.observe
	a.retry.OnRetry = func(f *retry.Facts, reason string, _ time.Duration) {
		m.Retries.WithLabelValues(f.Route, reason).Inc()
	}
	a.retry.OnBudgetExhausted = func(f *retry.Facts, rep retry.Report) {
		m.BudgetExhausted.WithLabelValues(f.Route).Inc()
		log.Warn("retry budget exhausted: answer forwarded without retry", zap.String("route", f.Route),
			zap.String("reason", rep.Reason), zap.Int("attempt", rep.Attempts))
	}
	if a.tokens != nil {
		a.retry.Prepare = proxy.Injector(a.tokens)
		a.retry.OnTokenInvalid = func(tok string) {
			if a.tokens.Invalidate(tok) && a.fleet != nil {
				a.fleet.InvalidateToken(tok)
			}
		}
	}
	a.breakers = breaker.NewSet(BreakerSettings(cfg), routePaths(cfg), log.Named("breaker"))
	// A call waiting for its turn while its route opens (or its monthly
	// quota runs out) is not sent (nor retried).
	a.retry.Gate = func(f *retry.Facts) error {
		if err := a.quota.Refused(f.Route, f.Metered); err != nil {
			return err
		}
		return a.breakers.Check(f.Route)
	}
	// Every attempt sent on a metered route counts against the month
	// (retries too); DingTalk's answers teach the meter.
	a.retry.OnAttempt = func(f *retry.Facts, one retry.Report) {
		if one.Outcome != retry.NotSent && f.Metered && !f.TokenEndpoint {
			a.quota.Sent(f.Route, true)
			a.seriesFor(f.Route).metered.Inc()
		}
		if one.Result.Reason != "" {
			a.quota.Answered(f.Route, one.Result)
		}
		if a.verdict != nil {
			a.verdict(f, one)
		}
	}
	a.pacer.OnRate = func(api string, from, to float64) {
		route := a.breakers.Route(api)
		m.PacingRate.WithLabelValues(route).Set(to)
		if to > 2*from || to < from/2 {
			log.Info("pacing: learned rate changed", zap.String("route", route),
				zap.Float64("from", from), zap.Float64("to", to))
		}
	}
	a.breakers.OnStateChange = func(route string, _, to breaker.State) {
		m.BreakerState.WithLabelValues(route).Set(float64(to))
		m.BreakerTransits.WithLabelValues(route, to.String()).Inc()
		if a.fleet != nil && to == breaker.StateOpen && route != breaker.Overflow {
			a.fleet.PublishOpen(route, a.breakers.Settings().OpenTimeout)
		}
	}
	if a.fleet != nil {
		fl, set := a.fleet, a.breakers
		set.OnBan = fl.PublishBan
		// The fleet counts failures per attempt: an outage shows three times
		// sooner than in calls that retry before they end.
		a.verdict = func(f *retry.Facts, one retry.Report) {
			if v := breaker.Judge(one); v != breaker.Ignore && f.Route != "" {
				fl.Verdict(set.Route(f.Route), v == breaker.Failure)
			}
		}
		fl.OnOpen(set.OpenRemote)
		fl.OnBan(set.BanUntil)
		fl.OnQuotaStop(func(route string, _ time.Time) { a.quota.StopShared(route) })
		a.quota.Shared = fl.QuotaCount()
		fl.OnTrip(func() fleet.BreakerRule {
			st := set.Settings()
			return fleet.BreakerRule{MinRequests: st.MinRequests, FailureRatio: st.FailureRatio, Window: st.Window, OpenTimeout: st.OpenTimeout}
		}, func(route string) {
			d := set.Settings().OpenTimeout
			set.OpenRemote(route, time.Now().Add(d))
			fl.PublishOpen(route, d)
		})
	}
	a.initRoutes(cfg)
	a.proxy = proxy.New(proxy.Options{
		OAPI: oapi, API: api,
		Loop:     a.retry,
		Breakers: a.breakers,
		Tokens:   a.tokens,
		AppKey:   cfg.App.Key, AppSecret: cfg.App.Secret.Reveal(),
		Logger: log.Named("proxy"),
		Served: a.served,
		Admit:  func(f *retry.Facts) error { return a.quota.Admit(f.Route, f.Metered && !f.TokenEndpoint) },
		OnCache: func(route, result string) {
			m.CacheRequests.WithLabelValues(route, result).Inc()
		},
		SharedCache: sharedCache(a.fleet),
	}, ProxyPolicy(cfg))
	return a, nil
}

// NewUpstreamTransport is the bottom of the chain, tuned for a proxy that
// talks to two hosts: many idle connections per host, HTTP/2 where offered,
// and no compression of its own, so answers pass through as DingTalk sent them.
func NewUpstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	t.IdleConnTimeout = 90 * time.Second
	t.ForceAttemptHTTP2 = true
	t.DisableCompression = true
	t.Proxy = nil // a sidecar talks to DingTalk directly; HTTP_PROXY would bypass the pod's egress policy silently
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return copyConn{c}, nil
	}
	return t
}

// copyConn is a connection whose ReadFrom copies through a small pooled
// buffer. http.Transport writes a request body that is not buffered with
// the connection's ReadFrom; net.TCPConn's allocates 32 KiB per call, which
// a crowd of slow streamed uploads would pay each. (Over TLS the body goes
// through tls.Conn instead, which has no ReadFrom.)
type copyConn struct{ net.Conn }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

func (c copyConn) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	return io.CopyBuffer(struct{ io.Writer }{c.Conn}, r, *buf)
}

// RetryPolicy turns cfg's retry section into the attempt loop's policy.
func RetryPolicy(cfg *config.Config) retry.Policy {
	return retry.Policy{
		MaxAttempts:     cfg.Retry.MaxAttempts,
		PerTryTimeout:   cfg.Retry.PerTryTimeout,
		Timeout:         cfg.Retry.Timeout,
		BackoffBase:     cfg.Retry.Backoff.Base,
		BackoffMax:      cfg.Retry.Backoff.Max,
		ThrottlePenalty: dingtalk.ThrottlePenalty * time.Second,
		InspectBytes:    cfg.Retry.MaxInspectBytes,
	}
}

// ProxyPolicy turns cfg's routes into the proxy's policy.
func ProxyPolicy(cfg *config.Config) proxy.Policy {
	p := proxy.Policy{
		Routes:              make(map[string]proxy.Route, len(cfg.Routes)),
		MaxBodyBytes:        cfg.Retry.MaxBodyBytes,
		MaxBufferedBytes:    cfg.Retry.MaxBufferedBytes,
		MaxRequestBodyBytes: cfg.Server.MaxRequestBodyBytes,
		BodyReadTimeout:     cfg.Server.BodyReadTimeout,
		TokenPlaceholder:    cfg.Token.Placeholder,
	}
	for _, r := range cfg.Routes {
		route := proxy.Route{Idempotent: r.Idempotent, Cache: r.Cache}
		if f := r.Fallback; f != nil {
			fb := &proxy.Fallback{Status: f.Status, Body: []byte(f.Body), Stale: f.Stale, Header: http.Header{}}
			for k, v := range f.Headers {
				fb.Header.Set(k, v) // canonicalises the lower-cased names viper gives
			}
			if fb.Header.Get("Content-Type") == "" && json.Valid(fb.Body) {
				fb.Header.Set("Content-Type", "application/json;charset=utf-8")
			}
			route.Fallback = fb
		}
		p.Routes[r.Path] = route
	}
	return p
}

// sharedCache is the fleet's read cache, or none (a nil interface, not a
// nil pointer in one) alone or in pass-through mode.
func sharedCache(fl *fleet.Fleet) proxy.SharedCache {
	if fl == nil {
		return nil
	}
	if c := fl.Cache(); c != nil {
		return c
	}
	return nil
}

// QuotaSettings turns cfg's quota section into the meter's settings (a
// validated timezone loads).
func QuotaSettings(cfg *config.Config) quota.Settings {
	loc, err := time.LoadLocation(cfg.Quota.Timezone)
	if err != nil {
		loc = quota.China
	}
	return quota.Settings{Budget: cfg.Quota.MonthlyBudget, Location: loc}
}

// PacingSettings turns cfg's pacing section into the pacer's settings.
func PacingSettings(cfg *config.Config) pacing.Settings {
	return pacing.Settings{PerAPIQPS: cfg.Pacing.PerAPIQPS, GlobalQPS: cfg.Pacing.GlobalQPS, RobotPerMinute: cfg.Pacing.RobotPerMinute}
}

// observe counts each attempt and times it by upstream. (Pacing takes its
// own feedback from the loop.)
func (a *App) observe(f *retry.Facts, _ int, reason string, _ dingtalk.Result, d time.Duration) {
	if reason == dingtalk.ReasonSuccess {
		a.seriesFor(f.Route).success.Inc()
	} else {
		a.metrics.Attempts.WithLabelValues(f.Route, reason).Inc()
	}
	if f.Upstream == dingtalk.API {
		a.apiAttempts.Observe(d.Seconds())
	} else {
		a.oapiAttempts.Observe(d.Seconds())
	}
}

// served counts an answered request, and logs the fallbacks.
func (a *App) served(route string, status int, fallback string, f *retry.Facts, d time.Duration) {
	m := a.metrics
	rs := a.seriesFor(route)
	rs.duration.Observe(d.Seconds())
	if fallback != "" {
		m.Fallbacks.WithLabelValues(route, fallback).Inc()
		a.log.Info("fallback served", zap.String("route", route), zap.String("kind", fallback), zap.Int("status", status))
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

// routeSeries are a route's series on the common path, resolved once:
// WithLabelValues hashes its labels and takes a lock on every call.
type routeSeries struct {
	ok       prometheus.Counter  // requests_total{code="200"}
	duration prometheus.Observer // request_duration_seconds
	success  prometheus.Counter  // upstream_attempts_total{result="success"}
	metered  prometheus.Counter  // quota_calls_total
}

// seriesFor returns route's resolved series. Routes are bounded (see
// breaker.Set.Route), so the map is too.
func (a *App) seriesFor(route string) *routeSeries {
	if v, ok := a.series.Load(route); ok {
		return v.(*routeSeries)
	}
	m := a.metrics
	v, _ := a.series.LoadOrStore(route, &routeSeries{
		ok:       m.Requests.WithLabelValues(route, "200"),
		duration: m.RequestDuration.WithLabelValues(route),
		success:  m.Attempts.WithLabelValues(route, dingtalk.ReasonSuccess),
		metered:  m.QuotaCalls.WithLabelValues(route),
	})
	return v.(*routeSeries)
}

// initRoutes creates the configured routes' series at zero.
func (a *App) initRoutes(cfg *config.Config) {
	for _, r := range cfg.Routes {
		a.metrics.InitRoute(a.breakers.Route(r.Path), cfg.Pacing.PerAPIQPS)
		if r.Cache > 0 {
			a.metrics.InitCache(a.breakers.Route(r.Path))
		}
	}
}

// Pacer is the rate pacer.
func (a *App) Pacer() *pacing.Pacer { return a.pacer }

// BreakerSettings turns cfg's breaker section into the breakers' settings.
func BreakerSettings(cfg *config.Config) breaker.Settings {
	b := cfg.Breaker
	return breaker.Settings{
		FailureRatio:     b.FailureRatio,
		MinRequests:      b.MinRequests,
		Window:           b.Window,
		OpenTimeout:      b.OpenTimeout,
		HalfOpenRequests: b.HalfOpenRequests,
		MaxRoutes:        b.MaxRoutes,
	}
}

func routePaths(cfg *config.Config) []string {
	paths := make([]string, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		paths = append(paths, r.Path)
	}
	return paths
}

// Start starts the background work (the token refresher).
func (a *App) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.stop = cancel
	if a.fleet != nil {
		a.fleet.Start() // before the token's first fetch, which reads Redis
	}
	if a.tokens != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.tokens.Run(ctx)
		}()
	}
}

// SetReady says whether the proxy accepts requests, for /readyz.
func (a *App) SetReady(ok bool) { a.ready.Store(ok) }

// CloseIdleConnections drops the idle connections to DingTalk.
func (a *App) CloseIdleConnections() { a.base.CloseIdleConnections() }

// Close stops the background work and drops idle upstream connections.
func (a *App) Close() {
	if a.stop != nil {
		a.stop()
	}
	a.wg.Wait()
	if a.tokens != nil {
		a.tokens.Close()
	}
	if a.fleet != nil {
		a.fleet.Close()
	}
	a.base.CloseIdleConnections()
}

// Handler is the proxy, behind max_inflight: a request beyond it is
// answered 503 at once rather than queued.
func (a *App) Handler() http.Handler {
	rejected := a.metrics.Requests.WithLabelValues(proxy.RouteRejected, "503")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := a.inflight.Add(1)
		defer a.inflight.Add(-1)
		if limit := a.maxInflight.Load(); n > limit {
			proxy.Overloaded(w, r, limit)
			rejected.Inc()
			return
		}
		a.proxy.ServeHTTP(w, r)
	})
}

// Server is an http.Server for Handler under the server section's limits on
// clients (as configured at New: they change only with a restart).
// errLog, if not nil, gets net/http's own errors. Serve it on a Listener.
func (a *App) Server(errLog *log.Logger) *http.Server {
	c := a.Config().Server // its restart-only keys keep their values at New
	return &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		// net/http allows 4096 bytes more than this for the request line.
		MaxHeaderBytes: c.MaxHeaderBytes,
		ErrorLog:       errLog,
		ConnContext:    proxy.ConnContext,
	}
}

// Listener wraps ln for Server: its connections tell a plain chunked
// request (kept alive) from one that also carried a Content-Length (its
// connection is closed after the answer, against request smuggling). On
// another listener every chunked request closes its connection.
func (a *App) Listener(ln net.Listener) net.Listener { return proxy.Listener(ln) }

// Inflight is how many requests the handler is serving now.
func (a *App) Inflight() int64 { return a.inflight.Load() }

// Metrics are the App's metrics.
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// Config is the configuration in force.
func (a *App) Config() *config.Config { return a.cfg.Load() }

// Breakers is the set of circuit breakers.
func (a *App) Breakers() *breaker.Set { return a.breakers }

// QuotaState is the monthly quota meter's view of the month.
func (a *App) QuotaState() quota.State { return a.quota.State() }

// Fleet is the link to the other proxies of the app, nil alone.
func (a *App) Fleet() *fleet.Fleet { return a.fleet }

// Tokens is the shared token source, nil in pass-through mode.
func (a *App) Tokens() *token.Source { return a.tokens }

// AdminHandler serves /healthz, /readyz and /metrics.
func (a *App) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", a.metrics.Handler())
	return mux
}

// readyz reports readiness and the token state. It never fails because
// DingTalk is down: one dependency's outage must not empty the Service.
func (a *App) readyz(w http.ResponseWriter, r *http.Request) {
	type tokenState struct {
		Mode             string  `json:"mode"`
		Held             bool    `json:"held"`
		ExpiresInSeconds float64 `json:"expires_in_seconds,omitempty"`
		// From is where the held token came from: "dingtalk" (fetched here)
		// or "redis" (another proxy of the fleet fetched it).
		From      string `json:"from,omitempty"`
		LastError string `json:"last_error,omitempty"`
	}
	type fleetState struct {
		Mode    string `json:"mode"` // "alone" or "shared"
		RedisUp *bool  `json:"redis_up,omitempty"`
	}
	out := struct {
		Ready bool       `json:"ready"`
		Token tokenState `json:"token"`
		Fleet fleetState `json:"fleet"`
	}{Ready: a.ready.Load(), Token: tokenState{Mode: "pass-through"}, Fleet: fleetState{Mode: "alone"}}
	if a.tokens != nil {
		st := a.tokens.State()
		out.Token = tokenState{Mode: "injecting", Held: st.Held, LastError: st.LastError}
		if st.Held {
			out.Token.ExpiresInSeconds = time.Until(st.ExpiresAt).Truncate(time.Second).Seconds()
			out.Token.From = "dingtalk"
			if a.fleet != nil && a.fleet.TokenFromRedis() {
				out.Token.From = "redis"
			}
		}
	}
	if a.fleet != nil {
		up := a.fleet.Up()
		out.Fleet = fleetState{Mode: "shared", RedisUp: &up}
	}
	w.Header().Set("Content-Type", "application/json")
	if !out.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(out)
}

// RetryTransport is the attempt loop, for tests and reload.
func (a *App) RetryTransport() *retry.Transport { return a.retry }

// BufferedBytes is how many bytes request-body buffers hold now.
func (a *App) BufferedBytes() int64 { return a.proxy.Buffered() }
