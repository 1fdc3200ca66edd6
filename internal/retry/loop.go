package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

var (
	// ErrTimeout ends the loop when Policy.Timeout has passed.
	ErrTimeout = errors.New("retry: request timed out")
	// ErrAttemptTimeout ends an attempt when Policy.PerTryTimeout has passed.
	ErrAttemptTimeout = errors.New("retry: attempt timed out")
)

// Error is what the loop returns when it ends with no answer to forward.
type Error struct {
	// Attempts is how many attempts were made.
	Attempts int
	// Outcome is how the loop ended: the last attempt's, or Canceled when
	// the client went away or retry.timeout passed between attempts.
	Outcome Outcome
	// Err is the last attempt's error, or why the loop ended.
	Err error
	// Report is what the loop learned: the last attempt's outcome and reason
	// (which the breaker judges), whether the budget refused a retry.
	Report Report
}

func (e *Error) Error() string {
	return fmt.Sprintf("retry: %d attempt(s), last %s: %v", e.Attempts, e.Outcome, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Transport is the attempt loop. Its zero value is not usable: build it with
// NewTransport.
type Transport struct {
	// Base sends each attempt.
	Base http.RoundTripper
	// Budget caps retries. Nil means no cap.
	Budget *Budget
	// Prepare, if set, readies each attempt's request (a clone, free to
	// modify): it injects the token and returns the token it injected, or ""
	// if none. An error ends the loop before anything is sent.
	Prepare func(req *http.Request, f *Facts) (token string, err error)
	// OnTokenInvalid, if set, is told of an injected token DingTalk rejected.
	OnTokenInvalid func(token string)
	// Pacer, if set, gives each attempt its turn under DingTalk's limits
	// and is told how DingTalk answered it. Token endpoints are not paced.
	Pacer Pacer
	// OnAttempt, if set, is told of every attempt's outcome as a Report of
	// that attempt alone (the fleet's failure count).
	OnAttempt func(f *Facts, attempt Report)
	// Gate, if set, says whether the call's route is still open to calls
	// (its breaker, locally or for the fleet, and the IP ban): asked before
	// each attempt, after its turn, and before deciding on a retry. A call
	// whose route opened while it waited is not sent into the outage: the
	// first attempt is answered with Gate's error; a retry is not made and
	// the answer in hand is handed on.
	Gate func(f *Facts) error
	// Observe, if set, is told of every attempt's outcome once it is known:
	// its number, reason, classification and duration.
	Observe func(f *Facts, n int, reason string, r dingtalk.Result, d time.Duration)
	// OnRetry, if set, is told of every retry about to be made: the reason
	// of the attempt being repeated and the wait before the next one.
	OnRetry func(f *Facts, reason string, wait time.Duration)
	// OnBudgetExhausted, if set, is told of a retry the budget refused; the
	// answer of the attempt it would have repeated is handed on.
	OnBudgetExhausted func(f *Facts, rep Report)
	// Logger gets one debug line per attempt and an info line per retry.
	// Nil means no logs.
	Logger *zap.Logger

	policy atomic.Pointer[Policy]
}

// Pacer gives attempts their turns on an API, and takes the feedback that
// tunes them. Wait waits for a turn no earlier than earliest; an error means
// there is none before deadline (zero: none) or ctx ended. Next estimates,
// without booking, when a turn could come. Answered is told how DingTalk
// answered each attempt (throttled, success, or anything else).
type Pacer interface {
	Wait(ctx context.Context, api string, earliest, deadline time.Time) error
	Next(api string, earliest time.Time) time.Time
	Answered(api string, r dingtalk.Result)
}

// NewTransport returns an attempt loop sending through base under p.
func NewTransport(base http.RoundTripper, p Policy) *Transport {
	t := &Transport{Base: base}
	t.SetPolicy(p)
	return t
}

// SetPolicy installs p for requests that start from now on.
func (t *Transport) SetPolicy(p Policy) { t.policy.Store(&p) }

// Policy returns the policy in force.
func (t *Transport) Policy() Policy { return *t.policy.Load() }

// RoundTrip runs the attempt loop for req, as Do with the Facts on req's
// context; without them, req is described by its path and method alone and
// its body is sent once.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := FactsFrom(req.Context())
	if f == nil {
		ep := dingtalk.Describe(req.URL.Path)
		f = &Facts{
			API:           ep.Route,
			Route:         ep.Route,
			Upstream:      ep.Upstream,
			TokenEndpoint: ep.TokenEndpoint,
			Idempotent:    req.Method == http.MethodGet || req.Method == http.MethodHead,
			Replayable:    req.Body == nil || req.Body == http.NoBody,
		}
	}
	resp, _, err := t.Do(req, f)
	return resp, err
}

// Do runs the attempt loop for req, which f describes, and returns the
// answer to hand on with what the loop learned. With no answer, the error is
// an *Error that carries the Report (or the client's context error).
func (t *Transport) Do(req *http.Request, f *Facts) (*http.Response, Report, error) {
	var rep Report
	p := t.policy.Load()
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
	t.Budget.Request()
	tokenRetried := false
	charged := false       // this attempt is a retry the budget paid for
	var earliest time.Time // of the next attempt
	for n := 1; ; n++ {
		if t.Pacer != nil && !f.TokenEndpoint {
			if err := t.Pacer.Wait(ctx, f.API, earliest, deadline); err != nil {
				// Whether the loop's context ended is asked before release
				// ends it: asked after, every refusal looked like a client
				// gone (and was answered 502 after 0 attempts).
				ended := ctx.Err() != nil
				release()
				if ended {
					return nil, rep, &Error{Attempts: n - 1, Outcome: Canceled, Err: cause(req, ctx), Report: rep}
				}
				rep.Outcome, rep.Reason = NotSent, ReasonPaced
				return nil, rep, &Error{Attempts: n - 1, Outcome: NotSent, Err: err, Report: rep}
			}
		}
		if t.Gate != nil {
			if err := t.Gate(f); err != nil {
				release()
				rep.Outcome, rep.Reason = NotSent, ReasonClosed
				return nil, rep, &Error{Attempts: n - 1, Outcome: NotSent, Err: err, Report: rep}
			}
		}
		rep.Attempts = n
		a := t.attempt(ctx, req, f, n, p)
		rep.Outcome, rep.Reason, rep.Result = a.outcome, a.reason, a.result
		if t.OnAttempt != nil {
			one := Report{Attempts: n, Outcome: a.outcome, Reason: a.reason, Result: a.result}
			Bookkeep(t.Logger, "attempt", func() { t.OnAttempt(f, one) })
		}
		if charged && (a.outcome == Success || a.outcome == Business) {
			t.Budget.Refund() // the retry was not wasted
		}
		charged = false

		// A Prepare error ends the loop: nothing was sent, and nothing would be.
		retry := !a.unprepared && Retryable(a.outcome, f.Idempotent) && f.Replayable && n < p.maxAttempts()
		if a.outcome == TokenInvalid {
			retry = retry && a.token != "" && !tokenRetried
		}
		var wait time.Duration
		if retry {
			now := time.Now()
			var ra time.Duration
			if a.resp != nil {
				ra = RetryAfter(a.resp.Header, now)
			}
			wait = p.wait(a.outcome, n, a.result.PenaltyEnd, ra, now)
			// A wait ending at the deadline leaves no time for the attempt.
			if !deadline.IsZero() && !now.Add(wait).Before(deadline) {
				retry = false
			}
		}
		if retry && a.outcome != TokenInvalid {
			if charged = t.Budget.Retry(); !charged {
				retry, rep.BudgetExhausted = false, true
				if t.OnBudgetExhausted != nil {
					Bookkeep(t.Logger, "budget", func() { t.OnBudgetExhausted(f, rep) })
				}
			}
		}
		if retry && t.Gate != nil && t.Gate(f) != nil {
			retry = false // the route opened meanwhile: this answer is the last
		}
		if retry && t.Pacer != nil && !f.TokenEndpoint && !deadline.IsZero() {
			if at := t.Pacer.Next(f.API, time.Now().Add(wait)); at.After(deadline) {
				retry = false // no turn before the deadline: this answer is the last
			}
		}
		if !retry {
			if testHookBeforeForward != nil && a.resp != nil {
				testHookBeforeForward()
			}
			if a.resp != nil && !state.CompareAndSwap(loopRunning, loopForwarding) && !wholeBody(a.resp) {
				// retry.timeout ended the loop as this answer came: the
				// rest of its body can no longer be read. Say so, rather
				// than hand on an answer that breaks off mid-stream.
				a.resp.Body.Close()
				a.resp, a.outcome, a.reason, a.err = nil, Canceled, ReasonTimeout, ErrTimeout
				rep.Outcome, rep.Reason = a.outcome, a.reason
			}
			if a.resp != nil {
				stopTimer()
				a.resp.Body = &finalBody{ReadCloser: a.resp.Body, done: func() { a.cancel(nil); release() }}
				return a.resp, rep, nil
			}
			a.cancel(nil)
			release()
			if a.outcome == Canceled && context.Cause(ctx) == ErrTimeout {
				a.err = ErrTimeout
			}
			return nil, rep, &Error{Attempts: n, Outcome: a.outcome, Err: a.err, Report: rep}
		}
		Bookkeep(t.Logger, "retry", func() {
			if t.OnRetry != nil {
				t.OnRetry(f, a.reason, wait)
			}
			if t.Logger != nil {
				if ce := t.Logger.Check(zapcore.InfoLevel, "retrying"); ce != nil {
					ce.Write(append(attemptFields(f, n, req.Method, a), zap.Duration("wait", wait))...)
				}
			}
		})
		if a.outcome == TokenInvalid {
			tokenRetried = true
			if t.OnTokenInvalid != nil {
				t.OnTokenInvalid(a.token)
			}
		}
		if a.resp != nil {
			a.resp.Body.Close()
		}
		a.cancel(nil)
		earliest = time.Now().Add(wait)
		if err := sleepUntil(ctx, earliest); err != nil {
			release()
			return nil, rep, &Error{Attempts: n, Outcome: Canceled, Err: cause(req, ctx), Report: rep}
		}
	}
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
	if pb, ok := resp.Body.(*prefixBody); ok {
		return pb.Reader == io.Reader(&pb.prefix)
	}
	return resp.ContentLength == 0
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

// cause is why the loop's context ended: the client's own error if it went
// away, else ErrTimeout.
func cause(req *http.Request, ctx context.Context) error {
	if err := req.Context().Err(); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// finalBody releases the attempt's context and timers when the client's copy
// of the answer is done, so no timer of the loop cuts a body still being read.
type finalBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *finalBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

var _ http.RoundTripper = (*Transport)(nil)
