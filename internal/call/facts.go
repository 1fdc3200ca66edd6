package call

import (
	"context"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Facts are what a call is, decided once when it arrives (by the proxy,
// from dingtalk.Describe and the route's configuration) and never changed
// after: every layer reads them, none writes them. Layers pass them to each
// other explicitly; the request's context carries them only across
// httputil.ReverseProxy, between its handler and its transport, where
// nothing else can.
type Facts struct {
	// API is the API's route template (dingtalk.Endpoint.Route), or a
	// custom robot's pacing name: the unit DingTalk rate-limits, whatever
	// ids the request path carries. Pacing is keyed by it.
	API string
	// Route names the call's route for breakers, logs and metrics: a
	// configured path, the API, or OverflowRoute. The proxy's route table
	// bounds it.
	Route string
	// Upstream is the DingTalk host the request goes to.
	Upstream dingtalk.Upstream
	// TokenEndpoint: the call issues a token; it is not paced, metered or
	// injected.
	TokenEndpoint bool
	// Idempotent says a repeat cannot do harm: the method, the catalogue of
	// reads that use POST, an idempotency key, or the route's own flag (see
	// the README, "Idempotency").
	Idempotent bool
	// Read says the call only asks: a GET, HEAD or OPTIONS, or a read
	// DingTalk's catalogue lists. A read is never deferred: its caller
	// needs the answer now.
	Read bool
	// Metered: the call spends the app's month: DingTalk may count it
	// against the organisation's monthly quota (dingtalk.Endpoint.Metered)
	// and it carries the app's own token (the proxy injects it). A call
	// with a client's own token is that client's business: it is neither
	// counted nor refused for the app.
	Metered bool
	// AppCall: the call carries the app's own token (the proxy injects
	// it) and is not a token call. DingTalk's quota answer on it (90020)
	// speaks of the app's organisation, whether or not the call is on the
	// list of metered APIs: DingTalk's answer stops the route.
	AppCall bool
	// Body is the buffered request body, replayed byte for byte on every
	// attempt. Nil when the request has none or it was too large to buffer.
	Body []byte
	// Replayable is false when the body is streamed once: one attempt only.
	Replayable bool
	// NotBuffered says why a body was streamed once instead of buffered
	// ("too_large": over retry.max_body_bytes; "buffer_cap": the global
	// retry.max_buffered_bytes was reached); empty otherwise.
	NotBuffered string
	// Inject says where the shared token goes on each attempt.
	Inject dingtalk.Placement
	// Policy is the route's configured policy; nil when the route has none.
	Policy *RoutePolicy
	// Kept is the outbox id of a kept send being delivered; empty for a
	// live call. A delivery takes only a turn that is free now, and is
	// never deferred again.
	Kept string
	// ClientBody, when set, is the client's body as it streams upstream.
	// Its Failed error (the client stalled, or sent too much) makes a failed
	// attempt the client's doing, whatever the connection to DingTalk says.
	ClientBody interface{ Failed() error }
}

// OverflowRoute is the route of calls whose API has no route of its own
// (past breaker.max_routes). It decides nothing for them: no breaker of its
// own, no quota stop; only its metrics are shared.
const OverflowRoute = "_other"

// RoutePolicy is a route's configured policy (routes[] in the
// configuration), found once at the door.
type RoutePolicy struct {
	// Idempotent, when non-nil, overrides dingproxy's own judgement.
	Idempotent *bool
	// Fallback, when non-nil, is what the route answers while its breaker
	// is open instead of the default.
	Fallback *Fallback
	// Cache, when positive, serves repeats of a successful idempotent call
	// from the read cache for that long.
	Cache time.Duration
	// Defer, when non-nil, keeps a send that cannot go now for later
	// delivery (the outbox).
	Defer *Defer
	// SlowCall, when non-nil, is the route's own slow-call limit in place
	// of the breaker's default (0: off on this route).
	SlowCall *time.Duration
}

// Defer is a route's deferral policy.
type Defer struct {
	// MaxAge is how long a kept send may wait for delivery before it is
	// dead.
	MaxAge time.Duration
	// Merge lets a robot's queued text and markdown messages go as one.
	Merge bool
}

// Fallback is what a route answers while its breaker is open.
type Fallback struct {
	// Status, Header and Body are the configured answer; Status 0 means none
	// (only Stale, then the default).
	Status int
	Header http.Header
	Body   []byte
	// Stale, when positive, serves the last good answer to the same request
	// up to this age first (idempotent requests only).
	Stale time.Duration
}

// CacheTTL is how long the call's answer may be served again from the read
// cache: the route's cache, for an idempotent call whose body was read
// whole; 0 for none.
func (f *Facts) CacheTTL(method string) time.Duration {
	if f.Policy == nil || f.Policy.Cache <= 0 || !f.Idempotent || !f.Replayable || f.TokenEndpoint || method == http.MethodHead {
		return 0
	}
	return f.Policy.Cache
}

// Deferrable says a call that cannot go now may be kept for later: a live
// send, its body held whole, on a route with defer.
func (f *Facts) Deferrable() bool {
	return f.Policy != nil && f.Policy.Defer != nil && f.Kept == "" && !f.Read && !f.TokenEndpoint && f.Replayable
}

// StaleFor is how old a kept answer the route may serve as its fallback
// while open; 0 for none.
func (f *Facts) StaleFor() time.Duration {
	if f.Policy == nil || f.Policy.Fallback == nil || !f.Idempotent {
		return 0
	}
	return f.Policy.Fallback.Stale
}

type factsKey struct{}

// WithFacts returns ctx carrying f, which must not change afterwards. Only
// the proxy's handler uses it, to reach its transport through
// httputil.ReverseProxy.
func WithFacts(ctx context.Context, f *Facts) context.Context {
	return context.WithValue(ctx, factsKey{}, f)
}

// FactsFrom returns the Facts in ctx, or nil.
func FactsFrom(ctx context.Context) *Facts {
	f, _ := ctx.Value(factsKey{}).(*Facts)
	return f
}
