package retry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Send is the bottom of the request path: one attempt through base (the
// http.Transport), the call's body replayed byte for byte, under the
// loop's per-try timeout, and enough of DingTalk's answer read to classify
// it. Its Report counts the one attempt (Attempts 1) with its outcome,
// reason, classification and duration. Headers in DingTalk's answer that
// claim to be dingproxy's own (X-Dingproxy-*) are dropped: those names are
// the proxy's word to its client.
func (l *Loop) Send(base http.RoundTripper) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		return l.send(base, req, f)
	})
}

func (l *Loop) send(base http.RoundTripper, req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
	p := l.policy.Load()
	start := time.Now()
	ctx := req.Context()
	actx, cancel := context.WithCancelCause(ctx)
	rep := call.Report{Attempts: 1}
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
	// A shallow copy: nothing below writes to the request's header or URL
	// (the token layer copies what it changes), and the body is the
	// attempt's own.
	areq := req.WithContext(httptrace.WithClientTrace(actx, trace))
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
	resp, err := base.RoundTrip(areq)
	if err == nil {
		rep.Result, err = inspect(resp, areq.Method, p.inspectBytes())
		if err != nil {
			resp.Body.Close()
			resp = nil
		}
	}
	timer.stop()
	rep.Took = time.Since(start)
	if err != nil {
		switch {
		case f.ClientBody != nil && f.ClientBody.Failed() != nil:
			// The client's body failed (stalled, too large, cut off): the
			// attempt failed on the client's side, not DingTalk's. Not a
			// breaker failure, and no retry (a streamed body has none).
			rep.Outcome, rep.Reason = call.Canceled, call.ReasonCanceled
		case context.Cause(ctx) == ErrTimeout:
			rep.Outcome, rep.Reason = call.Canceled, call.ReasonTimeout
		case ctx.Err() != nil: // the client went away
			rep.Outcome, rep.Reason = call.Canceled, call.ReasonCanceled
		case context.Cause(actx) == ErrAttemptTimeout:
			err, rep.Reason = ErrAttemptTimeout, call.ReasonTimeout
			rep.Outcome = call.AfterSend
			if !wrote.Load() {
				rep.Outcome = call.NotSent
			}
		case !wrote.Load():
			rep.Outcome, rep.Reason = call.NotSent, call.ReasonDialError
		default:
			rep.Outcome, rep.Reason = call.AfterSend, call.ReasonReset
		}
		cancel(nil)
		return call.Fail(rep, err)
	}
	rep.Outcome, rep.Reason = call.FromClass(rep.Result.Class), rep.Result.Reason
	for k := range resp.Header {
		if len(k) >= len(call.HeaderPrefix) && strings.EqualFold(k[:len(call.HeaderPrefix)], call.HeaderPrefix) {
			delete(resp.Header, k)
		}
	}
	resp.Body = &attemptBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, rep, nil
}

// attemptFields are the fixed log fields of an attempt. Errors are logged
// through dingtalk.RedactError: the query of a URL in them is dropped.
func attemptFields(f *call.Facts, n int, method string, resp *http.Response, one call.Report, err error) []zap.Field {
	status := 0
	requestID := one.Result.RequestID
	if resp != nil {
		status = resp.StatusCode
		if id := resp.Header.Get("X-Acs-Request-Id"); id != "" && requestID == "" {
			requestID = id
		}
	}
	fields := make([]zap.Field, 0, 12)
	fields = append(fields,
		zap.String("route", f.Route), zap.Stringer("upstream", f.Upstream),
		zap.String("method", method), zap.Int("status", status),
		zap.Int("attempt", n), zap.String("reason", one.Reason))
	if one.Result.Errcode != 0 {
		fields = append(fields, zap.Int("errcode", one.Result.Errcode))
	}
	if one.Result.Code != "" {
		fields = append(fields, zap.String("code", one.Result.Code))
	}
	if requestID != "" {
		fields = append(fields, zap.String("request_id", requestID))
	}
	if err != nil {
		fields = append(fields, zap.Error(dingtalk.RedactError(unwrap(err))))
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
