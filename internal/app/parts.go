package app

import (
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/token"
)

// parts are the stateful policies the request path asks, behind the
// interfaces its layers take: this proxy's own, or the fleet's decorating
// them. The local ones stay reachable for reload and for state reports.
type parts struct {
	// What the layers ask.
	turns   pacingParts
	guard   breaker.Guard
	meter   meters
	fetcher token.Fetcher // nil in pass-through mode
	store   proxy.Store
	// link is the fleet, or alone: started, closed and reported on the
	// same way.
	link link
	// fleet is the fleet, nil alone (for tests and benchmarks that count
	// its round trips).
	fleet *fleet.Fleet

	// The local parts.
	pacer    *pacing.Pacer
	breakers *breaker.Set
	quota    *quota.Meter
}

// pacingParts is the pacer the path asks, which a reload updates.
type pacingParts interface {
	pacing.Turns
	Update(pacing.Settings)
}

// meters is the quota meter the path asks, which metrics read.
type meters interface {
	quota.Meters
	State() quota.State
}

// link is what the app knows of the fleet: when to start and stop it and
// what /readyz says of it.
type link interface {
	Start()
	Close()
	// Mode is "alone" or "shared"; redisUp is nil alone.
	Mode() (mode string, redisUp *bool)
	// TokenFromRedis says whether the token in use came from the fleet.
	TokenFromRedis() bool
}

// alone is the link of a proxy without a fleet.
type alone struct{}

func (alone) Start()                {}
func (alone) Close()                {}
func (alone) Mode() (string, *bool) { return "alone", nil }
func (alone) TokenFromRedis() bool  { return false }

// newParts builds this proxy's own parts from cfg and, when a fleet is
// configured (the one place that asks), decorates them with it.
func newParts(cfg *config.Config, a *App, obs *observer, log *zap.Logger) (parts, error) {
	p := parts{
		pacer:    pacing.New(PacingSettings(cfg)),
		breakers: breaker.NewSet(BreakerSettings(cfg), log.Named("breaker"), obs),
		quota:    quota.New(QuotaSettings(cfg), obs),
		link:     alone{},
	}
	p.turns, p.guard, p.meter = p.pacer, p.breakers, p.quota
	p.store = proxy.NewLRU(proxy.CacheMaxBytes)
	if cfg.App.Key != "" {
		if cfg.Token.Endpoint == config.EndpointGetToken {
			p.fetcher = token.NewGetTokenFetcher(a.base, cfg.Upstreams.OAPI, cfg.App.Key, cfg.App.Secret.Reveal())
		} else {
			p.fetcher = token.NewOAuth2Fetcher(a.base, cfg.Upstreams.API, cfg.App.Key, cfg.App.Secret.Reveal())
		}
	}
	if cfg.Fleet.RedisURL == "" {
		return p, nil
	}
	a.metrics.EnableFleet(fleet.Ops)
	fl, err := fleet.New(fleet.Options{
		URL: cfg.Fleet.RedisURL.Reveal(), KeyPrefix: cfg.Fleet.KeyPrefix, AppKey: cfg.App.Key,
		AppSecret: cfg.App.Secret.Reveal(), Timeout: cfg.Fleet.Timeout,
		Logger: log.Named("fleet"), Observer: obs,
	})
	if err != nil {
		return parts{}, err
	}
	shared := fl.Decorate(fleet.Local{
		Pacer: p.pacer, Pacing: PacingSettings(cfg), Breakers: p.breakers, Quota: p.quota,
		Fetcher: p.fetcher, RefreshBefore: cfg.Token.RefreshBefore, FetchTimeout: cfg.Retry.PerTryTimeout,
		Cache: p.store,
	})
	p.turns, p.guard, p.meter, p.fetcher, p.store = shared.Pacer, shared.Breakers, shared.Quota, shared.Fetcher, shared.Cache
	p.link, p.fleet = fleetLink{fl}, fl
	return p, nil
}

// fleetLink is the link of a proxy in a fleet.
type fleetLink struct{ *fleet.Fleet }

func (l fleetLink) Mode() (string, *bool) {
	up := l.Up()
	return "shared", &up
}

// newTokenSource is the shared token source over fetcher, or nil in
// pass-through mode.
func newTokenSource(cfg *config.Config, fetcher token.Fetcher, obs *observer, log *zap.Logger) *token.Source {
	if fetcher == nil {
		log.Info("pass-through mode: no app.key configured, tokens are not injected")
		return nil
	}
	return token.NewSource(fetcher, token.Options{
		RefreshBefore: cfg.Token.RefreshBefore,
		FetchTimeout:  cfg.Retry.PerTryTimeout,
		Logger:        log.Named("token"),
		Observer:      obs,
	})
}

// tokenExpiry is the held token's expiry, for the metric; zero for none.
func tokenExpiry(src *token.Source) func() time.Time {
	return func() time.Time {
		if tok, exp := src.Peek(); tok != "" {
			return exp
		}
		return time.Time{}
	}
}
