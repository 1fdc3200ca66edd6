package retry

import (
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
)

// Retryable is the retry table (README, "Retry"): whether an attempt that
// came to o may be repeated, for an idempotent request or not. TokenInvalid
// is retryable once, with a fresh token; the loop enforces the once.
func Retryable(o call.Outcome, idempotent bool) bool {
	switch o {
	case call.NotSent, call.Throttled, call.TokenInvalid:
		return true // nothing was executed
	case call.AfterSend, call.ServerError:
		return idempotent // it may have executed
	}
	return false // success, business errors, the IP ban, cancellation
}

// Policy is the attempt loop's configuration. Values are immutable once in
// use; a reload installs a new Policy.
type Policy struct {
	// MaxAttempts counts the first attempt. Values below 1 mean 1.
	MaxAttempts int
	// PerTryTimeout bounds one attempt up to its answer's headers and the
	// inspected part of its body. For a streamed (unreplayable) body it
	// starts once the body is sent: the client sets that pace. Zero means no
	// per-attempt limit.
	PerTryTimeout time.Duration
	// Timeout bounds the whole loop: all attempts and waits. Zero means none.
	// It does not bound reading the final answer's body.
	Timeout time.Duration
	// BackoffBase and BackoffMax bound the full-jitter exponential backoff.
	// A throttled attempt's retry also waits for its turn, after DingTalk's
	// penalty: pacing keeps it.
	BackoffBase, BackoffMax time.Duration
	// InspectBytes is how much of an answer's (decoded) body is read to find
	// its errcode. Zero means 64 KiB.
	InspectBytes int
}

// DefaultInspectBytes is the inspected prefix of an answer when Policy says 0.
const DefaultInspectBytes = 64 << 10

func (p *Policy) inspectBytes() int {
	if p.InspectBytes > 0 {
		return p.InspectBytes
	}
	return DefaultInspectBytes
}

func (p *Policy) maxAttempts() int {
	if p.MaxAttempts < 1 {
		return 1
	}
	return p.MaxAttempts
}
