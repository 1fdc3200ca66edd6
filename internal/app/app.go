package app

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// App is a running dingproxy minus its listeners.
type App struct {
	cfg     atomic.Pointer[config.Config] // the configuration in force
	log     *zap.Logger
	level   zap.AtomicLevel
	metrics *metrics.Metrics
	// inflight counts requests in the handler; maxInflight is max_inflight.
	inflight, maxInflight atomic.Int64
	reloadMu              sync.Mutex // one reload at a time
	base                  *http.Transport
	obs                   *observer
	parts                 parts
	tokens                *token.Source // nil in pass-through mode
	loop                  *retry.Loop
	proxy                 *proxy.Proxy
	kept                  *kept // the outbox; nil when no route defers
	ready                 atomic.Bool

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

// New builds an App from cfg, which must have passed Validate: its parts
// (newParts: this proxy's own, decorated by the fleet when one is
// configured), the request path through them (requestPath, in chain.go),
// and the proxy in front.
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
	a.level = zap.NewAtomicLevelAt(zap.InfoLevel) // changes nothing: the logger is not ours
	if o.level != nil {
		a.level = *o.level
	}
	obs := newObserver(a.metrics, log)
	a.obs = obs
	if a.parts, err = newParts(cfg, a, obs, log); err != nil {
		return nil, err
	}
	a.tokens = newTokenSource(cfg, a.parts.fetcher, obs, log)
	if a.kept, err = openOutbox(cfg, a.parts.fleet, obs, log); err != nil {
		a.parts.link.Close()
		return nil, err
	}
	var keep *deferral.Layer
	if a.kept != nil {
		a.kept.layer = deferral.NewLayer(a.kept.store, a.wakeCourier, log.Named("outbox"))
		keep = a.kept.layer
	}
	chain, below, loop := requestPath(cfg, a.parts, keep, a.tokens, a.base, obs, log)
	a.loop = loop
	if a.kept != nil {
		a.kept.startCourier(a, below, log)
		a.metrics.OutboxFrom(a.outboxGauges)
	}
	a.proxy = proxy.New(proxy.Options{
		OAPI: oapi, API: api,
		Path:      chain,
		Tokens:    a.tokens,
		AppKey:    cfg.App.Key,
		AppSecret: cfg.App.Secret.Reveal(),
		Logger:    log.Named("proxy"),
		Observer:  obs,
		Routes:    routeJanitor{obs: obs, breakers: a.parts.breakers},
	}, ProxyPolicy(cfg))
	a.metrics.InflightFrom(a.inflight.Load)
	if a.tokens != nil {
		a.metrics.TokenExpiresAt(tokenExpiry(a.tokens))
	}
	a.metrics.QuotaFrom(a.quotaGauges)
	a.metrics.QuotaStopsFrom(func() metrics.QuotaStops {
		st := a.parts.meter.State()
		return metrics.QuotaStops{Paths: st.Stopped, Organisation: st.Organisation, Budget: st.BudgetSpent()}
	})
	a.initRoutes(cfg)
	return a, nil
}

// quotaGauges are the month's used and limit gauges: learned from DingTalk
// or configured; -1 unknown.
func (a *App) quotaGauges() (float64, float64) {
	st := a.parts.meter.State()
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
}

// initRoutes creates the configured routes' series at zero.
func (a *App) initRoutes(cfg *config.Config) {
	for _, r := range cfg.Routes {
		a.metrics.InitRoute(r.Path, cfg.Pacing.PerAPIQPS)
		if r.Cache > 0 {
			a.metrics.InitCache(r.Path)
		}
		if r.Defer != nil {
			a.metrics.InitOutbox(r.Path)
		}
	}
}

// Metrics are the App's metrics.
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// Config is the configuration in force.
func (a *App) Config() *config.Config { return a.cfg.Load() }

// Pacer is this proxy's own rate pacer.
func (a *App) Pacer() *pacing.Pacer { return a.parts.pacer }

// Breakers is this proxy's own set of circuit breakers.
func (a *App) Breakers() *breaker.Set { return a.parts.breakers }

// Check says whether route is open to calls now, as the request path asks
// (its breaker here or across the fleet, the IP ban): an *OpenError if not.
func (a *App) Check(route string) error { return a.parts.guard.Check(route) }

// Fleet is the link to the other proxies of the app, nil alone.
func (a *App) Fleet() *fleet.Fleet { return a.parts.fleet }

// Routes is how many routes have a name of their own, configured ones
// included: breaker.max_routes bounds it.
func (a *App) Routes() int { return a.proxy.Routes() }

// QuotaState is the monthly quota meter's view of the month (the fleet's
// count, shared).
func (a *App) QuotaState() quota.State { return a.parts.meter.State() }

// Tokens is the shared token source, nil in pass-through mode.
func (a *App) Tokens() *token.Source { return a.tokens }

// Loop is the attempt loop, for tests and reload.
func (a *App) Loop() *retry.Loop { return a.loop }

// BufferedBytes is how many bytes request-body buffers hold now.
func (a *App) BufferedBytes() int64 { return a.proxy.Buffered() }

// wakeCourier tells the courier a send was kept.
func (a *App) wakeCourier() {
	if a.kept != nil && a.kept.courier != nil {
		a.kept.courier.Wake()
	}
}
