package retry

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
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
	// Outcome is the last attempt's.
	Outcome Outcome
	// Err is the last attempt's error.
	Err error
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
	Prepare func(req *http.Request, c *Call) (token string, err error)
	// OnTokenInvalid, if set, is told of an injected token DingTalk rejected.
	OnTokenInvalid func(token string)
	// Pacer, if set, gives each attempt its turn under DingTalk's limits.
	Pacer Pacer
	// Observe, if set, is told of every attempt's outcome once it is known;
	// c.Result holds the attempt's classification.
	Observe func(c *Call, reason string, d time.Duration)
	// OnRetry, if set, is told of every retry about to be made: the reason
	// of the attempt being repeated and the wait before the next one.
	OnRetry func(c *Call, reason string, wait time.Duration)
	// Logger gets one debug line per attempt and an info line per retry.
	// Nil means no logs.
	Logger *zap.Logger

	policy atomic.Pointer[Policy]
}

// Pacer gives attempts their turns. Wait waits for a turn no earlier than
// earliest; an error means there is none before deadline (zero: none) or ctx
// ended. Next estimates, without booking, when a turn could come.
type Pacer interface {
	Wait(ctx context.Context, c *Call, earliest, deadline time.Time) error
	Next(c *Call, earliest time.Time) time.Time
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

// attempt is one try's result.
type attempt struct {
	resp    *http.Response
	err     error
	outcome Outcome
	reason  string
	result  dingtalk.Result
	token   string
	cancel  context.CancelCauseFunc
	// unprepared: Prepare failed and nothing was sent.
	unprepared bool
}

// RoundTrip runs the attempt loop for req. The Call on req's context says
// what the request is; without one, req is treated by its method alone and
// its body is sent once.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	call := CallFrom(req.Context())
	if call == nil {
		call = &Call{
			Path:       req.URL.Path,
			Route:      req.URL.Path,
			Upstream:   dingtalk.UpstreamFor(req.URL.Path),
			Idempotent: req.Method == http.MethodGet || req.Method == http.MethodHead,
			Replayable: req.Body == nil || req.Body == http.NoBody,
		}
	}
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
		if t.Pacer != nil {
			if err := t.Pacer.Wait(ctx, call, earliest, deadline); err != nil {
				release()
				if ctx.Err() != nil {
					return nil, &Error{Attempts: n - 1, Outcome: Canceled, Err: cause(req, ctx)}
				}
				call.Outcome, call.Reason = NotSent, ReasonPaced
				return nil, &Error{Attempts: n - 1, Outcome: NotSent, Err: err}
			}
		}
		call.Attempts = n
		a := t.attempt(ctx, req, call, p)
		call.Outcome, call.Reason, call.Result = a.outcome, a.reason, a.result
		if charged && (a.outcome == Success || a.outcome == Business) {
			t.Budget.Refund() // the retry was not wasted
		}
		charged = false

		// A Prepare error ends the loop: nothing was sent, and nothing would be.
		retry := !a.unprepared && Retryable(a.outcome, call.Idempotent) && call.Replayable && n < p.maxAttempts()
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
				retry, call.BudgetExhausted = false, true
			}
		}
		if retry && t.Pacer != nil && !deadline.IsZero() {
			if at := t.Pacer.Next(call, time.Now().Add(wait)); at.After(deadline) {
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
				call.Outcome, call.Reason = a.outcome, a.reason
			}
			if a.resp != nil {
				stopTimer()
				a.resp.Body = &finalBody{ReadCloser: a.resp.Body, done: func() { a.cancel(nil); release() }}
				return a.resp, nil
			}
			a.cancel(nil)
			release()
			if a.outcome == Canceled && context.Cause(ctx) == ErrTimeout {
				a.err = ErrTimeout
			}
			return nil, &Error{Attempts: n, Outcome: a.outcome, Err: a.err}
		}
		Bookkeep(t.Logger, "retry", func() {
			if t.OnRetry != nil {
				t.OnRetry(call, a.reason, wait)
			}
			if t.Logger != nil {
				if ce := t.Logger.Check(zapcore.InfoLevel, "retrying"); ce != nil {
					ce.Write(append(attemptFields(call, req.Method, a), zap.Duration("wait", wait))...)
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
			return nil, &Error{Attempts: n, Outcome: Canceled, Err: cause(req, ctx)}
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

// attemptFields are the fixed log fields of an attempt. Errors are logged
// through token.Redact's rule: the query of a URL in them is dropped.
func attemptFields(call *Call, method string, a attempt) []zap.Field {
	status := 0
	requestID := a.result.RequestID
	if a.resp != nil {
		status = a.resp.StatusCode
		if id := a.resp.Header.Get("X-Acs-Request-Id"); id != "" && requestID == "" {
			requestID = id
		}
	}
	fields := make([]zap.Field, 0, 12)
	fields = append(fields,
		zap.String("route", call.Route), zap.Stringer("upstream", call.Upstream),
		zap.String("method", method), zap.Int("status", status),
		zap.Int("attempt", call.Attempts), zap.String("reason", a.reason))
	if a.result.Errcode != 0 {
		fields = append(fields, zap.Int("errcode", a.result.Errcode))
	}
	if a.result.Code != "" {
		fields = append(fields, zap.String("code", a.result.Code))
	}
	if requestID != "" {
		fields = append(fields, zap.String("request_id", requestID))
	}
	if a.err != nil {
		fields = append(fields, zap.Error(dingtalk.RedactError(a.err)))
	}
	return fields
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

// attempt makes one try and reads enough of its answer to classify it.
func (t *Transport) attempt(ctx context.Context, req *http.Request, call *Call, p *Policy) attempt {
	start := time.Now()
	actx, cancel := context.WithCancelCause(ctx)
	a := attempt{cancel: cancel}
	// The per-try clock is how long DingTalk takes to answer. A body that
	// streams from the client is sent at the client's pace (bounded by the
	// proxy's body limits), so for it the clock starts once it is all sent.
	timer := &tryTimer{d: p.PerTryTimeout, f: func() { cancel(ErrAttemptTimeout) }}
	streamed := call.Body == nil && !call.Replayable
	if !streamed {
		timer.start()
	}
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{WroteHeaders: func() { wrote.Store(true) }}
	if streamed {
		trace.WroteRequest = func(httptrace.WroteRequestInfo) { timer.start() }
	}
	areq := req.Clone(httptrace.WithClientTrace(actx, trace))
	switch {
	case call.Body != nil:
		body := call.Body
		areq.ContentLength = int64(len(body))
		areq.Body = io.NopCloser(bytes.NewReader(body))
		areq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	case call.Replayable:
		// A non-nil empty body, without GetBody, keeps http.Transport from
		// re-sending a bodiless GET by itself when a reused connection breaks:
		// every attempt is this loop's, paced and counted. The transport
		// probes the body, finds it empty, and sends no body at all.
		areq.Body, areq.GetBody, areq.ContentLength = emptyBody{}, nil, 0
	}
	if t.Prepare != nil {
		tok, err := t.Prepare(areq, call)
		if err != nil {
			timer.stop()
			a.err, a.outcome, a.reason, a.unprepared = err, NotSent, ReasonTokenUnavailable, true
			return a
		}
		a.token = tok
	}
	resp, err := t.Base.RoundTrip(areq)
	if err == nil {
		a.resp = resp
		a.result, err = inspect(resp, areq.Method, p.inspectBytes())
		if err != nil {
			resp.Body.Close()
			a.resp = nil
		}
	}
	timer.stop()
	if err != nil {
		a.err = err
		switch {
		case call.ClientBody != nil && call.ClientBody.Failed() != nil:
			// The client's body failed (stalled, too large, cut off): the
			// attempt failed on the client's side, not DingTalk's. Not a
			// breaker failure, and no retry (a streamed body has none).
			a.outcome, a.reason = Canceled, ReasonCanceled
		case req.Context().Err() != nil:
			a.outcome, a.reason = Canceled, ReasonCanceled
		case context.Cause(ctx) == ErrTimeout:
			a.outcome, a.reason = Canceled, ReasonTimeout
		case context.Cause(actx) == ErrAttemptTimeout:
			a.err, a.reason = ErrAttemptTimeout, ReasonTimeout
			a.outcome = AfterSend
			if !wrote.Load() {
				a.outcome = NotSent
			}
		case !wrote.Load():
			a.outcome, a.reason = NotSent, ReasonDialError
		default:
			a.outcome, a.reason = AfterSend, ReasonReset
		}
	} else {
		a.outcome, a.reason = fromClass(a.result.Class), a.result.Reason
	}
	d := time.Since(start)
	call.Result = a.result
	// After a sent attempt: whatever goes wrong in its bookkeeping, the
	// answer stands.
	Bookkeep(t.Logger, "attempt", func() {
		if t.Observe != nil {
			t.Observe(call, a.reason, d)
		}
		if t.Logger != nil {
			if ce := t.Logger.Check(zapcore.DebugLevel, "attempt"); ce != nil {
				ce.Write(append(attemptFields(call, req.Method, a), zap.Duration("duration", d))...)
			}
		}
	})
	return a
}

// inspect reads up to limit bytes of resp's body to classify it, and puts
// what it read back in front of the rest, so the client gets every byte as
// DingTalk sent it. A gzip-encoded body is decoded for classification only.
func inspect(resp *http.Response, method string, limit int) (dingtalk.Result, error) {
	ct := resp.Header.Get("Content-Type")
	if method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified || resp.ContentLength == 0 || !inspectable(ct) {
		return dingtalk.Classify(resp.StatusCode, ct, nil), nil
	}
	size := limit
	if resp.ContentLength > 0 && resp.ContentLength < int64(limit) {
		size = int(resp.ContentLength)
	}
	// Answers of unknown length get a pooled buffer of the whole limit,
	// given back when the body is closed; small known ones an exact one.
	var pooled *[]byte
	var buf []byte
	if size >= minPooled {
		pooled = inspectBuffers.Get().(*[]byte)
		if cap(*pooled) < size {
			*pooled = make([]byte, size)
		}
		buf = (*pooled)[:size]
	} else {
		buf = make([]byte, size)
	}
	n, complete, err := readPrefix(resp.Body, buf)
	if err != nil {
		if pooled != nil {
			inspectBuffers.Put(pooled)
		}
		return dingtalk.Result{}, err
	}
	if !complete && resp.ContentLength > 0 && int64(n) == resp.ContentLength {
		complete = true
	}
	buf = buf[:n]
	pb := &prefixBody{closer: resp.Body, pooled: pooled}
	pb.prefix.Reset(buf)
	if complete {
		pb.Reader = &pb.prefix
	} else {
		pb.Reader = io.MultiReader(&pb.prefix, resp.Body)
	}
	resp.Body = pb
	decoded := buf
	switch resp.Header.Get("Content-Encoding") {
	case "", "identity":
	case "gzip", "x-gzip":
		decoded = gunzipPrefix(buf, limit)
	default:
		decoded = nil // classified by status alone
	}
	return dingtalk.Classify(resp.StatusCode, ct, decoded), nil
}

// readPrefix fills buf from body, and reports whether the body ended within
// it. Only a clean end (io.EOF) counts: a body cut short (a connection closed
// before Content-Length or the last chunk, io.ErrUnexpectedEOF) is an error,
// so the attempt fails as a reset after sending rather than passing on half
// an answer as if it were whole.
func readPrefix(body io.Reader, buf []byte) (n int, complete bool, err error) {
	for n < len(buf) {
		m, err := body.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// inspectable reports whether a body of this type can hold a DingTalk error.
func inspectable(contentType string) bool {
	if contentType == "" {
		return true
	}
	// The media type without parameters, as mime.ParseMediaType would
	// read it but without allocating: this runs on every answer.
	mt := contentType
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	mt = strings.TrimSpace(mt)
	if slash := strings.IndexByte(mt, '/'); slash <= 0 || slash == len(mt)-1 {
		return true // not a media type: look, as for none
	}
	for _, t := range [...]string{"application/json", "text/json", "text/plain", "text/html", "application/problem+json"} {
		if strings.EqualFold(mt, t) {
			return true
		}
	}
	return false
}

// gunzipPrefix decodes as much of a gzip stream's start as it can, up to limit.
func gunzipPrefix(b []byte, limit int) []byte {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	out, _ := io.ReadAll(io.LimitReader(zr, int64(limit)))
	return out
}

// emptyBody is a request body with nothing in it that net/http does not
// take for http.NoBody.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// prefixBody is an answer's body with its inspected prefix put back. A
// pooled prefix buffer goes back to the pool on Close; reads after Close
// fail rather than see a buffer that another answer may be filling.
type prefixBody struct {
	io.Reader
	prefix bytes.Reader
	closer io.Closer
	pooled *[]byte
	closed atomic.Bool
}

func (b *prefixBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	return b.Reader.Read(p)
}

func (b *prefixBody) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	err := b.closer.Close()
	if b.pooled != nil {
		b.prefix.Reset(nil)
		inspectBuffers.Put(b.pooled)
		b.pooled = nil
	}
	return err
}

var errBodyClosed = errors.New("retry: read on a closed answer body")

// minPooled is the least inspection buffer taken from the pool: smaller
// ones cost less to allocate than to pool.
const minPooled = 4 << 10

var inspectBuffers = sync.Pool{New: func() any { b := make([]byte, 0, DefaultInspectBytes); return &b }}

// tryTimer is an attempt's per-try clock. It may be started from the
// transport's writer goroutine after the attempt is over: once stopped it
// never starts.
type tryTimer struct {
	d       time.Duration // zero: no limit
	f       func()
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func (t *tryTimer) start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.d > 0 && !t.stopped && t.t == nil {
		t.t = time.AfterFunc(t.d, t.f)
	}
}

func (t *tryTimer) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.t != nil {
		t.t.Stop()
	}
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
