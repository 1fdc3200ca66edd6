package app

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// The policies as values, built from a validated configuration: at start,
// and anew on every reload, which swaps each in whole.

// RetryPolicy turns cfg's retry section into the attempt loop's policy.
func RetryPolicy(cfg *config.Config) retry.Policy {
	return retry.Policy{
		MaxAttempts:   cfg.Retry.MaxAttempts,
		PerTryTimeout: cfg.Retry.PerTryTimeout,
		Timeout:       cfg.Retry.Timeout,
		BackoffBase:   cfg.Retry.Backoff.Base,
		BackoffMax:    cfg.Retry.Backoff.Max,
		InspectBytes:  cfg.Retry.MaxInspectBytes,
	}
}

// ProxyPolicy turns cfg's routes and limits into the proxy's policy.
func ProxyPolicy(cfg *config.Config) proxy.Policy {
	p := proxy.Policy{
		Routes:              make(map[string]*call.RoutePolicy, len(cfg.Routes)),
		MaxRoutes:           cfg.Breaker.MaxRoutes,
		MaxBodyBytes:        cfg.Retry.MaxBodyBytes,
		MaxBufferedBytes:    cfg.Retry.MaxBufferedBytes,
		MaxRequestBodyBytes: cfg.Server.MaxRequestBodyBytes,
		BodyReadTimeout:     cfg.Server.BodyReadTimeout,
		TokenPlaceholder:    cfg.Token.Placeholder,
	}
	for _, r := range cfg.Routes {
		route := &call.RoutePolicy{Idempotent: r.Idempotent, Cache: r.Cache, SlowCall: r.SlowCall}
		if d := r.Defer; d != nil {
			route.Defer = &call.Defer{MaxAge: d.MaxAge, Merge: d.Merge}
		}
		if f := r.Fallback; f != nil {
			fb := &call.Fallback{Status: f.Status, Body: []byte(f.Body), Stale: f.Stale, Header: http.Header{}}
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

// BreakerSettings turns cfg's breaker section into the breakers' settings.
func BreakerSettings(cfg *config.Config) breaker.Settings {
	b := cfg.Breaker
	return breaker.Settings{
		FailureRatio:     b.FailureRatio,
		MinRequests:      b.MinRequests,
		Window:           b.Window,
		OpenTimeout:      b.OpenTimeout,
		HalfOpenRequests: b.HalfOpenRequests,
		SlowCall:         b.SlowCall,
	}
}

func routePaths(cfg *config.Config) []string {
	paths := make([]string, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		paths = append(paths, r.Path)
	}
	return paths
}
