package retry

import (
	"context"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Facts are what a request is, decided once when it arrives (by the proxy,
// from dingtalk.Describe and the route's configuration) and never changed
// after: every layer reads them, none writes them. They travel on the
// request's context, the one channel httputil.ReverseProxy keeps between
// the handler and its transport.
type Facts struct {
	// API is the API's route template (dingtalk.Endpoint.Route): the unit
	// DingTalk rate-limits, whatever ids the request path carries. Pacing
	// is keyed by it.
	API string
	// Route names the request's route for breakers, logs and metrics: a
	// configured path or the API, bounded by the breaker set.
	Route string
	// Upstream is the DingTalk host the request goes to.
	Upstream dingtalk.Upstream
	// TokenEndpoint: the call issues a token; it is not paced.
	TokenEndpoint bool
	// Idempotent says a repeat cannot do harm (see SPEC: method, catalogue,
	// idempotency key, route flag).
	Idempotent bool
	// Metered: DingTalk may count the call against the organisation's
	// monthly quota (dingtalk.Endpoint.Metered).
	Metered bool
	// Body is the buffered request body, replayed byte for byte on every
	// attempt. Nil when the request has none or it was too large to buffer.
	Body []byte
	// Replayable is false when the body is streamed once: one attempt only.
	Replayable bool
	// NotBuffered says why a body was streamed once instead of buffered
	// ("too_large": over retry.max_body_bytes; "buffer_cap": the global
	// retry.max_buffered_bytes was reached); empty otherwise.
	NotBuffered string
	// Inject says where the loop's Prepare hook puts the shared token.
	Inject dingtalk.Placement
	// ClientBody, when set, is the client's body as it streams upstream.
	// Its Failed error (the client stalled, or sent too much) makes a failed
	// attempt the client's doing, whatever the connection to DingTalk says.
	ClientBody interface{ Failed() error }
}

// Report is what the attempt loop learned of one request: it returns it
// with the answer (Do), and an *Error carries it when there is none.
type Report struct {
	// Attempts counts the attempts made.
	Attempts int
	// Outcome is the last attempt's outcome.
	Outcome Outcome
	// Reason is the last attempt's result in metric vocabulary.
	Reason string
	// Result is the last answer's classification (zero when none came).
	Result dingtalk.Result
	// BudgetExhausted is set when a wanted retry was refused by the budget.
	BudgetExhausted bool
}

type factsKey struct{}

// WithFacts returns ctx carrying f, which must not change afterwards.
func WithFacts(ctx context.Context, f *Facts) context.Context {
	return context.WithValue(ctx, factsKey{}, f)
}

// FactsFrom returns the Facts in ctx, or nil.
func FactsFrom(ctx context.Context) *Facts {
	f, _ := ctx.Value(factsKey{}).(*Facts)
	return f
}
