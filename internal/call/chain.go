package call

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Handler is one layer of the request path: it runs the call req is, which
// f describes, and returns the answer to hand on with what it learned, or
// no answer and an error (an *Error carrying the Report, wrapping the
// layer's typed error).
//
// Above the attempt loop a Handler runs a whole call; below it, one
// attempt, whose Report counts at most one attempt.
type Handler interface {
	Do(req *http.Request, f *Facts) (*http.Response, Report, error)
}

// HandlerFunc is a function as a Handler.
type HandlerFunc func(req *http.Request, f *Facts) (*http.Response, Report, error)

// Do calls h.
func (h HandlerFunc) Do(req *http.Request, f *Facts) (*http.Response, Report, error) {
	return h(req, f)
}

// Layer is a policy: it wraps the rest of the path below it.
type Layer func(next Handler) Handler

// Chain stacks layers, the first outermost: Chain(a, b)(send) runs a,
// which runs b, which runs send.
func Chain(layers ...Layer) Layer {
	return func(bottom Handler) Handler {
		h := bottom
		for i := len(layers) - 1; i >= 0; i-- {
			h = layers[i](h)
		}
		return h
	}
}

// Fail ends a call with no answer: rep, and an *Error of rep wrapping err.
func Fail(rep Report, err error) (*http.Response, Report, error) {
	return nil, rep, &Error{Report: rep, Outcome: rep.Outcome, Err: err}
}

// Ended ends a call with no answer that ended as o (Canceled: the client
// went away or its time ran out), rep being the last attempt's report.
func Ended(rep Report, o Outcome, err error) (*http.Response, Report, error) {
	return nil, rep, &Error{Report: rep, Outcome: o, Err: err}
}

// A Gate says whether a call may still go: nil, or why not (the error its
// client is answered with). The attempt loop asks its gates before it
// decides on a retry, and the Recheck layer before each attempt, after its
// turn: a call whose route closed while it waited is not sent.
type Gate interface {
	Closed(f *Facts) error
}

// Gates asks each gate in order; the first that is closed answers.
type Gates []Gate

// Closed is the first closed gate's error, or nil.
func (g Gates) Closed(f *Facts) error {
	for _, x := range g {
		if err := x.Closed(f); err != nil {
			return err
		}
	}
	return nil
}

// Recheck is the layer that asks gate before each attempt goes: a closed
// gate ends the attempt unsent, reason closed, with the gate's error.
func Recheck(gate Gate) Layer {
	return func(next Handler) Handler {
		return HandlerFunc(func(req *http.Request, f *Facts) (*http.Response, Report, error) {
			if err := gate.Closed(f); err != nil {
				return Fail(Refused(ReasonClosed), err)
			}
			return next.Do(req, f)
		})
	}
}

type deadlineKey struct{}

// WithDeadline returns ctx carrying the call's deadline for the layers
// below the attempt loop (pacing refuses a turn past it). Unlike a context
// deadline it does not end ctx: the answer the loop hands on is read to
// its end whenever it arrives.
func WithDeadline(ctx context.Context, t time.Time) context.Context {
	if t.IsZero() {
		return ctx
	}
	return context.WithValue(ctx, deadlineKey{}, t)
}

// Deadline is the call's deadline in ctx, zero for none.
func Deadline(ctx context.Context) time.Time {
	t, _ := ctx.Value(deadlineKey{}).(time.Time)
	return t
}

// Bookkeep runs f, bookkeeping done after an attempt was sent (metrics,
// logs, pacing and breaker feedback), so that a failure in it can never
// turn DingTalk's answer into an error of the proxy's own: a panic in f is
// recovered and logged at error level, and the caller goes on as if f had
// returned. what names the bookkeeping in the log line.
func Bookkeep(log *zap.Logger, what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			if log != nil {
				// The value is formatted with %T only: a panic value may
				// quote request data (a path, a label) that a log must not.
				log.Error("bookkeeping failed; the answer goes out regardless",
					zap.String("what", what), zap.String("panic_type", fmt.Sprintf("%T", v)), zap.StackSkip("stack", 2))
			}
		}
	}()
	f()
}
