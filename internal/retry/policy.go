package retry

import (
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Outcome is what one attempt came to.
type Outcome uint8

const (
	// Success and the next five mirror dingtalk.Class: DingTalk answered.
	Success Outcome = iota
	Business
	Throttled
	TokenInvalid
	ServerError
	IPBan
	// NotSent: no byte of the request left (dial, TLS, refused).
	NotSent
	// AfterSend: the connection broke or the attempt timed out after the
	// request was (possibly) sent: it may have executed.
	AfterSend
	// Canceled: the client went away or the request's time ran out.
	Canceled
)

var outcomeNames = [...]string{"success", "business_error", "throttled", "token_invalid", "server_error", "ip_ban", "not_sent", "after_send", "canceled"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

func fromClass(c dingtalk.Class) Outcome {
	switch c {
	case dingtalk.Success:
		return Success
	case dingtalk.Throttled:
		return Throttled
	case dingtalk.TokenInvalid:
		return TokenInvalid
	case dingtalk.ServerError:
		return ServerError
	case dingtalk.IPBan:
		return IPBan
	}
	return Business
}

// Reasons the loop gives for attempts that got no answer; answered attempts
// take dingtalk.Result.Reason. Together they are a fixed vocabulary, fit for
// a metric label.
const (
	ReasonDialError        = "dial_error"        // nothing was sent
	ReasonReset            = "reset"             // the connection broke after sending
	ReasonTimeout          = "timeout"           // per-try or overall timeout
	ReasonCanceled         = "canceled"          // the client went away
	ReasonTokenUnavailable = "token_unavailable" // Prepare could not get a token
	ReasonPaced            = "paced"             // Pace found no turn before the deadline
	ReasonClosed           = "closed"            // Gate: the route opened (breaker, IP ban) before the attempt
)

// Retryable is SPEC's retry table: whether an attempt that came to o may be
// repeated, for an idempotent request or not. TokenInvalid is retryable once,
// with a fresh token; the loop enforces the once.
func Retryable(o Outcome, idempotent bool) bool {
	switch o {
	case NotSent, Throttled, TokenInvalid:
		return true // nothing was executed
	case AfterSend, ServerError:
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
	BackoffBase, BackoffMax time.Duration
	// ThrottlePenalty is the least wait after a throttle answer (DingTalk: 1 s).
	ThrottlePenalty time.Duration
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
