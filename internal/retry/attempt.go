package retry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

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

// attempt makes one try and reads enough of its answer to classify it.
func (t *Transport) attempt(ctx context.Context, req *http.Request, f *Facts, n int, p *Policy) attempt {
	start := time.Now()
	actx, cancel := context.WithCancelCause(ctx)
	a := attempt{cancel: cancel}
	// The per-try clock is how long DingTalk takes to answer. A body that
	// streams from the client is sent at the client's pace (bounded by the
	// proxy's body limits), so for it the clock starts once it is all sent.
	timer := &tryTimer{d: p.PerTryTimeout, f: func() { cancel(ErrAttemptTimeout) }}
	streamed := f.Body == nil && !f.Replayable
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
	case f.Body != nil:
		body := f.Body
		areq.ContentLength = int64(len(body))
		areq.Body = io.NopCloser(bytes.NewReader(body))
		areq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	case f.Replayable:
		// A non-nil empty body, without GetBody, keeps http.Transport from
		// re-sending a bodiless GET by itself when a reused connection breaks:
		// every attempt is this loop's, paced and counted. The transport
		// probes the body, finds it empty, and sends no body at all.
		areq.Body, areq.GetBody, areq.ContentLength = emptyBody{}, nil, 0
	}
	if t.Prepare != nil {
		tok, err := t.Prepare(areq, f)
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
		case f.ClientBody != nil && f.ClientBody.Failed() != nil:
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
	// After a sent attempt: whatever goes wrong in its bookkeeping (pacing
	// feedback, metrics, logs), the answer stands.
	Bookkeep(t.Logger, "attempt", func() {
		if t.Pacer != nil && !f.TokenEndpoint {
			t.Pacer.Answered(f.API, a.result)
		}
		if t.Observe != nil {
			t.Observe(f, n, a.reason, a.result, d)
		}
		if t.Logger != nil {
			if ce := t.Logger.Check(zapcore.DebugLevel, "attempt"); ce != nil {
				ce.Write(append(attemptFields(f, n, req.Method, a), zap.Duration("duration", d))...)
			}
		}
	})
	return a
}

// attemptFields are the fixed log fields of an attempt. Errors are logged
// through token.Redact's rule: the query of a URL in them is dropped.
func attemptFields(f *Facts, n int, method string, a attempt) []zap.Field {
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
		zap.String("route", f.Route), zap.Stringer("upstream", f.Upstream),
		zap.String("method", method), zap.Int("status", status),
		zap.Int("attempt", n), zap.String("reason", a.reason))
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

// emptyBody is a request body with nothing in it that net/http does not
// take for http.NoBody.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

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
