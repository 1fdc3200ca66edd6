package call

import (
	"fmt"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Outcome is what an attempt, or a call, came to.
type Outcome uint8

const (
	// Success and the next five mirror dingtalk.Class: DingTalk answered.
	Success Outcome = iota
	Business
	Throttled
	TokenInvalid
	ServerError
	IPBan
	// NotSent: no byte of the request left (dial, TLS, refused; or a layer
	// refused it before it was tried).
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

// FromClass is the outcome of an attempt DingTalk answered.
func FromClass(c dingtalk.Class) Outcome {
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

// Reasons for attempts that got no answer; answered attempts take
// dingtalk.Result.Reason. Together they are a fixed vocabulary, fit for a
// metric label.
const (
	ReasonDialError        = "dial_error"        // nothing was sent
	ReasonReset            = "reset"             // the connection broke after sending
	ReasonTimeout          = "timeout"           // per-try or overall timeout
	ReasonCanceled         = "canceled"          // the client went away
	ReasonTokenUnavailable = "token_unavailable" // no token could be had: not sent
	ReasonPaced            = "paced"             // no turn before the deadline: not sent
	ReasonClosed           = "closed"            // a gate closed (breaker, IP ban) before the attempt: not sent
)

// Report is what a layer learned of a call (or, below the attempt loop, of
// one attempt): it comes back with the answer, and an *Error carries it
// when there is none.
type Report struct {
	// Attempts counts the attempts sent to DingTalk (those that reached the
	// transport, a failed dial included). A call refused before any is 0.
	Attempts int
	// Outcome is the last attempt's outcome.
	Outcome Outcome
	// Reason is the last attempt's result in metric vocabulary.
	Reason string
	// Result is the last answer's classification (zero when none came).
	Result dingtalk.Result
	// Took is how long the last attempt took at the transport, up to its
	// answer's headers and inspected body.
	Took time.Duration
	// BudgetExhausted is set when a wanted retry was refused by the budget.
	BudgetExhausted bool
	// MayHaveExecuted is set once any attempt of the call may have been
	// executed by DingTalk (it answered other than a refusal for now, or
	// the attempt broke after its request was written), whatever the later
	// attempts' outcomes: the Outcome of a retry refused before it went is
	// NotSent, yet the call is not unexecuted.
	MayHaveExecuted bool
}

// Refused is the report of a call, or attempt, that a layer did not let go:
// nothing was sent, for reason.
func Refused(reason string) Report { return Report{Outcome: NotSent, Reason: reason} }

// Error is what a layer returns when a call ends with no answer to hand on.
// Its Report says what was learned (how many attempts were sent, the last
// attempt's outcome and reason); Err is the cause, one of the layers' typed
// errors.
type Error struct {
	Report Report
	// Outcome is how the call ended: the last attempt's, or Canceled when
	// the client went away or retry.timeout passed between attempts.
	Outcome Outcome
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("call: %d attempt(s), last %s: %v", e.Report.Attempts, e.Outcome, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// HeaderPrefix starts the names of dingproxy's own headers
// (X-Dingproxy-Attempts, -Fallback, -Cache ...). DingTalk's answers never
// carry them: the send drops any that claim to.
const HeaderPrefix = "X-Dingproxy-"
