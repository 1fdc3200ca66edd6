package app

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dingproxy/dingproxy/internal/config"
)

// Reload validates the file at path in full and, if it is valid, swaps its
// policy in for requests that start from now on; if it is not, nothing
// changes. Either way the result is logged and counted. Settings that can
// only change with a restart (listen addresses, upstreams, credentials, the
// token endpoint, the log format) keep their running values; a change to
// them is logged as such.
func (a *App) Reload(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		a.metrics.Reloaded(false)
		a.log.Error("configuration reload refused: the running configuration stays",
			zap.String("path", path), zap.Error(err))
		return err
	}
	return a.Apply(cfg)
}

// Apply swaps cfg's live settings in: the retry policy and budget, routes,
// pacing, breakers, the log level and shutdown_timeout. cfg must have passed
// Validate.
func (a *App) Apply(cfg *config.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	level, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil { // Validate refuses it; this guards direct callers
		a.metrics.Reloaded(false)
		return fmt.Errorf("app: log.level: %w", err)
	}
	old := a.cfg.Load()
	fixed := restartOnly(old, cfg)
	next := *cfg
	keepRestartOnly(&next, old)

	a.loop.SetPolicy(RetryPolicy(&next))
	a.loop.Budget().Set(next.Retry.Budget.Ratio, next.Retry.Budget.MinPerSecond)
	a.parts.turns.Update(PacingSettings(&next)) // the fleet's updates the local pacer too
	a.parts.breakers.Update(BreakerSettings(&next))
	a.proxy.SetPolicy(ProxyPolicy(&next))
	a.parts.quota.Update(QuotaSettings(&next))
	a.level.SetLevel(level)
	a.maxInflight.Store(int64(next.MaxInflight))
	a.initRoutes(&next)
	a.cfg.Store(&next)
	a.metrics.Reloaded(true)
	if len(fixed) > 0 {
		a.log.Warn("configuration reloaded; these settings change only with a restart and keep their running values",
			zap.Strings("restart_required", fixed))
	}
	a.outboxReloaded(old, &next)
	a.log.Info("configuration reloaded", zap.Strings("routes", routePaths(&next)),
		zap.Int("max_attempts", next.Retry.MaxAttempts), zap.String("log_level", next.Log.Level))
	return nil
}

// outboxReloaded logs what a reload that adds or removes defer does to the
// outbox, which opens only at start: defer added while none is open needs a
// restart (until then those routes are answered as without defer); defer
// removed from every route leaves the open outbox delivering what it holds.
func (a *App) outboxReloaded(old, next *config.Config) {
	switch {
	case a.kept == nil && deferring(next):
		a.log.Warn("defer needs a restart: no outbox is open (no route had defer at start), "+
			"so these routes are answered as without defer until the proxy restarts",
			zap.Strings("routes", deferRoutes(next)), zap.String("outbox_dir", next.Outbox.Dir))
	case a.kept != nil && deferring(old) && !deferring(next):
		a.log.Info("no route has defer now: new sends are not kept, and the outbox stays open " +
			"to deliver the sends it holds")
	}
}

// deferRoutes are the paths of cfg's routes that have defer.
func deferRoutes(cfg *config.Config) []string {
	var out []string
	for _, r := range cfg.Routes {
		if r.Defer != nil {
			out = append(out, r.Path)
		}
	}
	return out
}

// restartOnly names the settings that differ between old and cfg but cannot
// change while running: the fields tagged reload:"restart" in config.Config.
func restartOnly(old, cfg *config.Config) []string {
	return config.RestartOnly(old, cfg)
}

// keepRestartOnly copies the settings restartOnly names from old into cfg,
// so Config reports what is really in force.
func keepRestartOnly(cfg, old *config.Config) {
	config.KeepRestartOnly(cfg, old)
}
