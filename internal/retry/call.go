package retry

import (
	"context"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Call is what the attempt loop knows about one client request. The proxy
// fills in the first group before the request reaches the Transport; the loop
// fills in the second. A Call belongs to one request and is not shared.
type Call struct {
	// Path is the API's route template (dingtalk.Endpoint.Route): the unit
	// DingTalk rate-limits, whatever ids the request path carries.
	Path string
	// Route names the request's route (a configured path or the request path,
	// bounded by the caller) for logs and metrics.
	Route string
	// Upstream is the DingTalk host the request goes to.
	Upstream dingtalk.Upstream
	// TokenEndpoint: the call issues a token; it is not paced.
	TokenEndpoint bool
	// Idempotent says a repeat cannot do harm (see SPEC: method, catalogue,
	// idempotency key, route flag).
	Idempotent bool
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

	// Attempts counts the attempts made so far.
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

type callKey struct{}

// WithCall returns ctx carrying c.
func WithCall(ctx context.Context, c *Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// CallFrom returns the Call in ctx, or nil.
func CallFrom(ctx context.Context) *Call {
	c, _ := ctx.Value(callKey{}).(*Call)
	return c
}
