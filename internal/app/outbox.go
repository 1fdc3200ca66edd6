package app

import (
	"context"
	"net/url"
	"sort"
	"sync"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// ConfigError is a start failure that a setting caused: the process exits
// as for an invalid configuration, naming the key.
type ConfigError struct {
	Key string
	Err error
}

func (e *ConfigError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// deferring says whether a route of cfg defers: only then is the outbox
// opened.
func deferring(cfg *config.Config) bool {
	for _, r := range cfg.Routes {
		if r.Defer != nil {
			return true
		}
	}
	return false
}

// kept is the outbox in the app: the store, the layer that keeps sends in
// it, and the courier that delivers them. Nil when no route defers.
type kept struct {
	store   deferral.Outbox
	shared  *fleet.Outbox // the fleet's outbox decorating the local store; nil alone
	layer   *deferral.Layer
	courier *deferral.Courier
	done    chan struct{} // closed when the courier has stopped
}

// openOutbox opens the alone-mode store under outbox.dir when a route
// defers and, in a fleet (fl not nil, an app secret to seal with), the
// fleet's outbox in Redis decorating it: the local store keeps what Redis
// cannot while it is down. A directory that cannot be written is a
// ConfigError naming outbox.dir.
func openOutbox(cfg *config.Config, fl *fleet.Fleet, obs *observer, log *zap.Logger) (*kept, error) {
	if !deferring(cfg) {
		return nil, nil
	}
	st, err := outbox.Open(outbox.Options{
		Dir: cfg.Outbox.Dir, MaxBytes: int64(cfg.Outbox.MaxBytes),
		AppKey: cfg.App.Key, AppSecret: cfg.App.Secret.Reveal(),
		Logger: log.Named("outbox"), Observer: obs,
	})
	if err != nil {
		return nil, &ConfigError{Key: "outbox.dir", Err: err}
	}
	log.Info("outbox open: sends on routes with defer are kept when they cannot go now",
		zap.String("file", st.Path()), zap.Stringer("max_bytes", cfg.Outbox.MaxBytes))
	k := &kept{store: st, done: make(chan struct{})}
	if fl == nil {
		return k, nil
	}
	shared, err := fl.NewOutbox(fleet.OutboxOptions{
		Local: st, MaxBytes: int64(cfg.Outbox.MaxBytes), Logger: log.Named("outbox"),
	})
	if err != nil {
		// Pass-through mode: nothing to seal the fleet's sends with.
		log.Info("outbox: not shared through Redis (no app secret to seal sends with): each proxy keeps its own", zap.String("reason", err.Error()))
		return k, nil
	}
	log.Info("outbox: shared through Redis; kept here only while Redis does not answer")
	k.store, k.shared = shared, shared
	return k, nil
}

// startCourier builds the courier over below, the request path under the
// deferral layer, so that a kept send goes through what a live call goes
// through.
func (k *kept) startCourier(a *App, below call.Handler, log *zap.Logger) {
	cfg := a.cfg.Load()
	oapi, _ := url.Parse(cfg.Upstreams.OAPI)
	api, _ := url.Parse(cfg.Upstreams.API)
	k.courier = deferral.NewCourier(deferral.Options{
		Store: k.store,
		Path:  below,
		Next:  a.parts.turns.Next,
		OAPI:  oapi,
		API:   api,
		Merge: a.merges,
		RobotPerMinute: func() int {
			return a.cfg.Load().Pacing.RobotPerMinute
		},
		Timeout:  cfg.Retry.Timeout,
		Observer: a.obs,
		Logger:   log.Named("outbox"),
	})
}

// merges says whether route's defer has merge on, as configured now.
func (a *App) merges(route string) bool {
	for _, r := range a.cfg.Load().Routes {
		if r.Path == route && r.Defer != nil {
			return r.Defer.Merge
		}
	}
	return false
}

// outboxGauges are the outbox's counts for the metrics, by route: every
// route that defers now, at 0 when it holds nothing (so that an alert on
// them has a series to read), and any other route that still holds sends.
func (a *App) outboxGauges() []metrics.OutboxRoute {
	st := a.kept.store.Stats()
	out := make([]metrics.OutboxRoute, 0, len(st.Routes))
	for route, r := range st.Routes {
		out = append(out, metrics.OutboxRoute{Route: route, Queued: r.Queued, Dead: r.Dead, Unknown: r.Unknown, OldestSeconds: r.Oldest.Seconds()})
	}
	for _, r := range a.cfg.Load().Routes {
		if _, there := st.Routes[r.Path]; r.Defer != nil && !there {
			out = append(out, metrics.OutboxRoute{Route: r.Path})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Route < out[j].Route })
	return out
}

// run delivers until ctx ends.
func (k *kept) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(k.done)
		if k.shared != nil {
			k.shared.Start(k.courier.Wake)
		}
		k.courier.Run(ctx)
	}()
}

// close closes the store once the courier has stopped (or at once when it
// never ran).
func (k *kept) close(log *zap.Logger) {
	if err := k.store.Close(); err != nil {
		log.Warn("outbox: closing the store", zap.Error(err))
	}
}

// Outbox is the store of deferred sends, nil when no route defers.
func (a *App) Outbox() deferral.Outbox {
	if a.kept == nil {
		return nil
	}
	return a.kept.store
}
