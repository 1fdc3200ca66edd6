package fleet

import (
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/token"
)

// Local are one proxy's own parts, which a fleet decorates.
type Local struct {
	Pacer    *pacing.Pacer
	Pacing   pacing.Settings
	Breakers *breaker.Set
	Quota    *quota.Meter
	// Fetcher fetches from DingTalk; nil in pass-through mode.
	Fetcher token.Fetcher
	// RefreshBefore and FetchTimeout are the token's (token.refresh_before,
	// retry.per_try_timeout).
	RefreshBefore, FetchTimeout time.Duration
	// Cache is the read cache's local store.
	Cache proxy.Store
}

// Shared are the same parts behind the same interfaces, shared through
// Redis while it answers and alone while it does not.
type Shared struct {
	Pacer    *Pacer
	Breakers *Breakers
	Quota    *Quota
	// Fetcher is nil in pass-through mode.
	Fetcher token.Fetcher
	// Cache is l.Cache itself in pass-through mode (nothing to seal with).
	Cache proxy.Store
}

// Decorate wraps l's parts, and applies what the other proxies meet to
// them. Call it once, before Start.
func (f *Fleet) Decorate(l Local) Shared {
	s := Shared{
		Pacer:    f.NewPacer(l.Pacer, l.Pacing),
		Breakers: newBreakers(f, l.Breakers),
		Quota:    &Quota{f: f, local: l.Quota, count: f.quotaCount()},
		Cache:    l.Cache,
	}
	if l.Fetcher != nil {
		s.Fetcher = f.TokenFetcher(l.Fetcher, l.RefreshBefore, l.FetchTimeout)
	}
	if f.sealer != nil {
		s.Cache = &Cache{f: f, local: l.Cache}
	}
	l.Quota.ClaimProbe(f.claimProbe)
	f.events.applyTo(applier{l: l, b: s.Breakers, p: s.Pacer})
	return s
}

// applier applies the others' transitions to the local parts.
type applier struct {
	l Local
	b *Breakers
	p *Pacer
}

func (a applier) Opened(route string, until time.Time)       { a.b.hold(route, until) }
func (a applier) Banned(until time.Time)                     { a.l.Breakers.Ban(until) }
func (a applier) QuotaStopped(route string, until time.Time) { a.l.Quota.StopUntil(route, until) }
func (a applier) QuotaResumed(route string)                  { a.l.Quota.Resume(route) }

// Penalized blocks api here if this proxy paces it: one it has never paced
// books its turns in Redis, where the penalty holds, and junk names heard
// make no state.
func (a applier) Penalized(api string, until time.Time) {
	if _, ok := a.p.apis.Load(api); ok {
		a.l.Pacer.Block(api, until)
	}
}

// OpenMost is the longest opening heeded: this proxy's own
// breaker.open_timeout.
func (a applier) OpenMost() time.Duration { return a.l.Breakers.Settings().OpenTimeout }

// MonthEnd is when this proxy's month turns.
func (a applier) MonthEnd() time.Time { return a.l.Quota.MonthEnd() }
