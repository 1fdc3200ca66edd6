package retry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dingproxy/dingproxy/internal/call"
)

var (
	// ErrTimeout ends the loop when Policy.Timeout has passed.
	ErrTimeout = errors.New("retry: request timed out")
	// ErrAttemptTimeout ends an attempt when Policy.PerTryTimeout has passed.
	ErrAttemptTimeout = errors.New("retry: attempt timed out")
)

// Turns says when an attempt could go at the earliest, without booking a
// turn (pacing's estimate): a retry whose turn would come after the call's
// deadline is not made.
type Turns interface {
	Next(f *call.Facts, earliest time.Time) time.Time
}

// Observer is told what the loop does, for metrics and logs. Its methods
// run outside every lock, and a panic in one never changes an answer.
type Observer interface {
	// Attempted: attempt n was sent (it reached the transport) and came to
	// rep (Attempts 1, with its outcome, reason, result and duration).
	Attempted(f *call.Facts, n int, rep call.Report)
	// Retrying: the attempt that came to reason is repeated after wait.
	Retrying(f *call.Facts, reason string, wait time.Duration)
	// BudgetExhausted: the budget refused a wanted retry; rep's answer is
	// handed on.
	BudgetExhausted(f *call.Facts, rep call.Report)
}

// Options are the parts of a Loop fixed when it is built.
type Options struct {
	// Budget caps retries. Nil means no cap.
	Budget *Budget
	// Gate, if set, is asked before a retry is decided: a call whose route
	// closed meanwhile (breaker, IP ban, quota) is not retried, and the
	// answer in hand is handed on.
	Gate call.Gate
	// Turns, if set, estimates when a retry's turn would come.
	Turns Turns
	// Observer, if set, is told of attempts, retries and refusals.
	Observer Observer
	// Logger gets one debug line per attempt and an info line per retry.
	// Nil means no logs.
	Logger *zap.Logger
}

// Loop is the attempt loop: the layer that runs a call's attempts through
// the layers below it (pacing, the gates, the token, the send) and decides,
// by the retry table (Retryable), whether another is safe and useful. Its
// policy is swapped whole on reload (SetPolicy); its other parts are fixed.
type Loop struct {
	opts   Options
	policy atomic.Pointer[Policy]
}

// NewLoop returns an attempt loop under p.
func NewLoop(p Policy, o Options) *Loop {
	l := &Loop{opts: o}
	l.SetPolicy(p)
	return l
}

// SetPolicy installs p for calls that start from now on.
func (l *Loop) SetPolicy(p Policy) { l.policy.Store(&p) }

// Policy returns the policy in force.
func (l *Loop) Policy() Policy { return *l.policy.Load() }

// Budget is the loop's retry budget (nil: none).
func (l *Loop) Budget() *Budget { return l.opts.Budget }

// Layer is the loop as a layer over next, the path of one attempt.
func (l *Loop) Layer(next call.Handler) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		return l.run(req, f, next)
	})
}

// run runs the attempt loop for req, which f describes, and returns the
// answer to hand on with what the loop learned. With no answer, the error
// is a *call.Error that carries the Report.
func (l *Loop) run(req *http.Request, f *call.Facts, next call.Handler) (*http.Response, call.Report, error) {
	var rep call.Report
	p := l.policy.Load()
	ctx, cancel := context.WithCancelCause(req.Context())
	var deadline time.Time
	var timer *time.Timer
	// state decides, once, between retry.timeout ending the loop and the
	// loop handing an answer on: a timeout that fires as an answer is
	// being handed on would otherwise cut its body off mid-stream.
	var state atomic.Int32 // loopRunning, loopForwarding, loopTimedOut
	if p.Timeout > 0 {
		deadline = time.Now().Add(p.Timeout)
		timer = time.AfterFunc(p.Timeout, func() {
			if state.CompareAndSwap(loopRunning, loopTimedOut) {
				cancel(ErrTimeout)
			}
		})
	}
	// release ends the loop's timer and context. For a forwarded answer it
	// runs in two steps: the timer stops at once, so retry.timeout never cuts
	// a body the client is still reading; the context ends when it is closed.
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
		}
	}
	release := func() {
		stopTimer()
		cancel(nil)
	}
	// A caller's own, earlier deadline for turns (a delivery from the
	// outbox takes only a turn free now) bounds the loop's too.
	if d := call.Deadline(req.Context()); !d.IsZero() && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	// Every attempt runs on the loop's context, which carries the deadline
	// to the layers below (pacing).
	areq := req.WithContext(call.WithDeadline(ctx, deadline))
	budget := l.opts.Budget
	budget.Request()
	tokenRetried := false
	charged := false // this attempt is a retry the budget paid for
	for n := 1; ; n++ {
		resp, one, err := next.Do(areq, f)
		if one.Attempts == 0 {
			// A layer below refused the attempt (no turn before the deadline,
			// the route closed, no token): nothing was sent, nor would be.
			if resp != nil {
				resp.Body.Close() // a refusal has no answer to hand on
			}
			ended := ctx.Err() != nil
			release()
			if ended {
				return call.Ended(rep, call.Canceled, cause(req, ctx))
			}
			rep.Outcome, rep.Reason, rep.Result = one.Outcome, one.Reason, one.Result
			return call.Fail(rep, unwrap(err))
		}
		rep.Attempts = n
		rep.Outcome, rep.Reason, rep.Result, rep.Took = one.Outcome, one.Reason, one.Result, one.Took
		if one.Outcome != call.NotSent && !one.Result.RefusedForNow() {
			rep.MayHaveExecuted = true
		}
		l.observe(f, n, req.Method, resp, one, err)
		if charged && (one.Outcome == call.Success || one.Outcome == call.Business) {
			budget.Refund() // the retry was not wasted
		}
		charged = false

		retry := Retryable(one.Outcome, f.Idempotent) && f.Replayable && n < p.maxAttempts()
		if one.Outcome == call.TokenInvalid {
			// Once, and only for a token of the proxy's own: a client's own
			// token DingTalk rejected is the client's answer.
			retry = retry && f.Inject != 0 && !tokenRetried
		} else if retry && f.Deferrable() && !rep.MayHaveExecuted && (one.Outcome == call.NotSent || one.Result.RefusedForNow()) {
			// A send its route's outbox can keep: kept now and delivered
			// later, rather than retried while its client waits.
			retry = false
		}
		var wait time.Duration
		if retry {
			now := time.Now()
			var ra time.Duration
			if resp != nil {
				ra = RetryAfter(resp.Header, now)
			}
			wait = p.wait(one.Outcome, n, ra)
			// A wait ending at the deadline leaves no time for the attempt.
			if !deadline.IsZero() && !now.Add(wait).Before(deadline) {
				retry = false
			}
		}
		if retry && one.Outcome != call.TokenInvalid {
			if charged = budget.Retry(); !charged {
				retry, rep.BudgetExhausted = false, true
				if o := l.opts.Observer; o != nil {
					call.Bookkeep(l.opts.Logger, "budget", func() { o.BudgetExhausted(f, rep) })
				}
			}
		}
		if retry && l.opts.Gate != nil && l.opts.Gate.Closed(f) != nil {
			retry = false // the route closed meanwhile: this answer is the last
		}
		if retry && l.opts.Turns != nil && !deadline.IsZero() {
			if at := l.opts.Turns.Next(f, time.Now().Add(wait)); !at.Before(deadline) {
				retry = false // no turn before the deadline: this answer is the last
			}
		}
		if !retry {
			if testHookBeforeForward != nil && resp != nil {
				testHookBeforeForward()
			}
			if resp != nil && !state.CompareAndSwap(loopRunning, loopForwarding) && !wholeBody(resp) {
				// retry.timeout ended the loop as this answer came: the
				// rest of its body can no longer be read. Say so, rather
				// than hand on an answer that breaks off mid-stream.
				resp.Body.Close()
				resp, err = nil, ErrTimeout
				rep.Outcome, rep.Reason = call.Canceled, call.ReasonTimeout
			}
			if resp != nil {
				stopTimer()
				forward(resp, release)
				return resp, rep, nil
			}
			release()
			err = unwrap(err)
			if rep.Outcome == call.Canceled && context.Cause(ctx) == ErrTimeout {
				err = ErrTimeout
			}
			return call.Fail(rep, err)
		}
		l.retrying(f, n, req.Method, one, wait)
		if one.Outcome == call.TokenInvalid {
			tokenRetried = true
		}
		if resp != nil {
			resp.Body.Close()
		}
		if err := sleepUntil(ctx, time.Now().Add(wait)); err != nil {
			release()
			return call.Ended(rep, call.Canceled, cause(req, ctx))
		}
	}
}

// observe tells the observer and the debug log of attempt n. Whatever goes
// wrong in it, the answer stands.
func (l *Loop) observe(f *call.Facts, n int, method string, resp *http.Response, one call.Report, err error) {
	call.Bookkeep(l.opts.Logger, "attempt", func() {
		if o := l.opts.Observer; o != nil {
			o.Attempted(f, n, one)
		}
		if l.opts.Logger != nil {
			if ce := l.opts.Logger.Check(zapcore.DebugLevel, "attempt"); ce != nil {
				ce.Write(append(attemptFields(f, n, method, resp, one, err), zap.Duration("duration", one.Took))...)
			}
		}
	})
}

// retrying tells the observer and the log of a retry about to be made.
func (l *Loop) retrying(f *call.Facts, n int, method string, one call.Report, wait time.Duration) {
	call.Bookkeep(l.opts.Logger, "retry", func() {
		if o := l.opts.Observer; o != nil {
			o.Retrying(f, one.Reason, wait)
		}
		if l.opts.Logger != nil {
			if ce := l.opts.Logger.Check(zapcore.InfoLevel, "retrying"); ce != nil {
				ce.Write(append(attemptFields(f, n, method, nil, one, nil), zap.Duration("wait", wait))...)
			}
		}
	})
}

// States of the loop, as retry.timeout and a forwarded answer see it.
const (
	loopRunning int32 = iota
	loopForwarding
	loopTimedOut
)

// testHookBeforeForward, when set, runs as the loop is about to hand an
// answer on.
var testHookBeforeForward func()

// wholeBody reports whether resp's body is already all in memory, so
// that handing it on needs no more reading from DingTalk.
func wholeBody(resp *http.Response) bool {
	b := resp.Body
	if ab, ok := b.(*attemptBody); ok {
		b = ab.ReadCloser
	}
	if pb, ok := b.(*prefixBody); ok {
		return pb.Reader == io.Reader(&pb.prefix)
	}
	return resp.ContentLength == 0
}

// forward makes closing resp's body also run release, which ends the loop's
// context: no timer of the loop cuts a body still being read.
func forward(resp *http.Response, release func()) {
	if ab, ok := resp.Body.(*attemptBody); ok {
		ab.then = release
		return
	}
	resp.Body = &attemptBody{ReadCloser: resp.Body, then: release}
}

// sleepUntil waits until t or until ctx ends, whichever is first.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	w := time.NewTimer(d)
	defer w.Stop()
	select {
	case <-w.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unwrap is the cause a layer below gave for an attempt with no answer.
func unwrap(err error) error {
	if ce, ok := err.(*call.Error); ok {
		return ce.Err
	}
	return err
}

// cause is why the loop's context ended: the client's own error if it went
// away, else ErrTimeout.
func cause(req *http.Request, ctx context.Context) error {
	if err := req.Context().Err(); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// attemptBody is an attempt's answer body: closing it ends the attempt's
// context, then (for the answer the loop hands on) the loop's.
type attemptBody struct {
	io.ReadCloser
	once   sync.Once
	cancel context.CancelCauseFunc
	then   func()
}

func (b *attemptBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		if b.cancel != nil {
			b.cancel(nil)
		}
		if b.then != nil {
			b.then()
		}
	})
	return err
}
