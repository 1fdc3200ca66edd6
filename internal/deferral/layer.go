package deferral

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/quota"
)

// HeaderDeferred carries a kept send's id on the deferred answer.
const HeaderDeferred = call.HeaderPrefix + "Deferred"

// Marker is the member of the deferred answer's body that holds the id.
const Marker = "dingproxy_deferred"

// Store is where kept sends wait: the local outbox, or the fleet's
// decorating it.
type Store interface {
	// Put keeps s and returns its id only once it is durable.
	Put(ctx context.Context, s *outbox.Send) (string, error)
	// Heads returns the oldest queued send of each queue, at most max.
	Heads(max int) ([]*outbox.Send, error)
	// Expired returns the queued sends due by now wherever they wait (at
	// most max), and when the next of the others falls due.
	Expired(now time.Time, max int) ([]*outbox.Send, time.Time, error)
	// Queue returns the oldest queued sends of queue, at most max.
	Queue(queue string, max int) ([]*outbox.Send, error)
	// Begin marks the queued send id as being sent, durably: if the
	// process stops before Update, it is unknown, never sent again.
	Begin(id string) error
	// Update records what a queued send came to.
	Update(s *outbox.Send) error
	// Waiting says whether queue holds a send not yet finished.
	Waiting(queue string) bool
}

// Outbox is a Store that the admin endpoints and the metrics read and
// operators act on: the alone-mode store, or the fleet's.
type Outbox interface {
	Store
	// Get returns the send id as it stands.
	Get(id string) (*outbox.Send, error)
	// Retry puts a dead or unknown send back at the end of its queue.
	Retry(id string) error
	// Delete forgets a send.
	Delete(id string) error
	// Stats counts the sends by route and state.
	Stats() outbox.Stats
	// Close releases the store; what is queued stays kept.
	Close() error
}

// Layer keeps the live sends that cannot go now. It sits above the
// breaker and the attempt loop, so that it sees what the proxy would
// answer: a paced call, an open route, an IP ban, attempts that all went
// unexecuted.
type Layer struct {
	store Store
	wake  func()
	log   *zap.Logger
}

// NewLayer returns the layer keeping sends in store; wake (may be nil) is
// told of each send kept, so that delivery looks at once.
func NewLayer(store Store, wake func(), log *zap.Logger) *Layer {
	return &Layer{store: store, wake: wake, log: log}
}

// Wrap is the layer over next.
func (l *Layer) Wrap(next call.Handler) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		if !f.Deferrable() {
			return next.Do(req, f)
		}
		now := time.Now()
		if q := queueOf(f); q != f.Route && l.store.Waiting(q) {
			// A robot's sends go in the order they came: behind the ones
			// it has waiting, never before them.
			if send, ok := Kept(req, f, now); ok {
				id, kerr := l.store.Put(context.WithoutCancel(req.Context()), send)
				if kerr == nil {
					if l.wake != nil {
						call.Bookkeep(l.log, "deferral", l.wake)
					}
					// Not sent: its turn is after its robot's waiting sends.
					return Answer(req, f, id), call.Refused(call.ReasonPaced), nil
				}
				l.log.Warn("a send could not be kept behind its robot's waiting sends: it goes now",
					zap.String("route", f.Route), zap.String("reason", keepFailure(kerr)), zap.Error(kerr))
			}
		}
		resp, rep, err := next.Do(req, f)
		if !Keepable(req.Context(), f, rep, err) {
			return resp, rep, err
		}
		now = time.Now()
		send, ok := Kept(req, f, now)
		if !ok {
			return resp, rep, err // due already (a signed robot send past its hour)
		}
		id, kerr := l.store.Put(context.WithoutCancel(req.Context()), send)
		if kerr != nil {
			// Not kept: the call is answered as without defer. The error
			// names no part of the send.
			l.log.Warn("a send could not be kept: answered as without defer",
				zap.String("route", f.Route), zap.String("reason", keepFailure(kerr)), zap.Error(kerr))
			return resp, rep, err
		}
		if resp != nil {
			// DingTalk's refusal is not the answer: the kept send is.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if l.wake != nil {
			call.Bookkeep(l.log, "deferral", l.wake)
		}
		return Answer(req, f, id), rep, nil
	})
}

// Keepable says whether a live send's outcome (rep, err) is one the proxy
// would have answered with an error of its own, or a refusal DingTalk gave
// it unexecuted for now: only then is it kept. A call DingTalk executed,
// or may have executed, is never kept; nor one whose client went away, or
// that the month's quota refused (it would wait only to die).
func Keepable(ctx context.Context, f *call.Facts, rep call.Report, err error) bool {
	if ctx.Err() != nil || rep.MayHaveExecuted {
		return false // an earlier attempt may have executed it
	}
	if err != nil {
		var spent *quota.Error
		if errors.As(err, &spent) {
			return false
		}
	}
	switch rep.Outcome {
	case call.NotSent:
		// Paced, a closed route (breaker, IP ban), no token, or every
		// attempt failed before a byte left.
		return rep.Reason != dingtalk.ReasonQuota
	case call.AfterSend, call.ServerError, call.Success, call.Canceled:
		return false
	}
	if !rep.Result.RefusedForNow() {
		return false
	}
	// A token DingTalk rejected is waited out only when it is the app's
	// own (the proxy fetches another); a client's own is the client's.
	return rep.Result.Class != dingtalk.TokenInvalid || f.Inject != dingtalk.PlaceNone
}

// Kept is the send req is, as the outbox keeps it: due after the route's
// max_age, or a signed robot send's hour if that ends first. ok is false
// when it would be due already.
func Kept(req *http.Request, f *call.Facts, now time.Time) (*outbox.Send, bool) {
	due := now.Add(f.Policy.Defer.MaxAge)
	if end, signed := SignedUntil(req.URL.RawQuery); signed && end.Before(due) {
		due = end
	}
	if !due.After(now) {
		return nil, false
	}
	queue := queueOf(f)
	h := req.Header.Clone()
	for k := range h {
		if strings.HasPrefix(k, call.HeaderPrefix) {
			delete(h, k)
		}
	}
	return &outbox.Send{
		Queue:  queue,
		Route:  f.Route,
		Method: req.Method,
		Path:   req.URL.EscapedPath(),
		Query:  req.URL.RawQuery,
		Header: h,
		Body:   f.Body,
		Facts:  encodeFacts(f),
		Kept:   now,
		Due:    due,
	}, true
}

// queueOf is the queue a send of f waits in: its robot's for a robot
// (per access_token), else its route's.
func queueOf(f *call.Facts) string {
	if strings.HasPrefix(f.API, pacing.RobotPrefix) {
		return f.API
	}
	return f.Route
}

// SignedUntil is when a signed robot send (timestamp and sign in its
// query) stops being good: its timestamp plus dingtalk.RobotSignWindow.
// signed is false for a send without both.
func SignedUntil(rawQuery string) (end time.Time, signed bool) {
	var ts, sign string
	for rawQuery != "" {
		var kv string
		kv, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "timestamp":
			ts = v
		case "sign":
			sign = v
		}
	}
	if ts == "" || sign == "" {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || ms < 0 || ms > 1<<50 {
		return time.Unix(0, 0), true // DingTalk refuses it: due already
	}
	return time.UnixMilli(ms).Add(dingtalk.RobotSignWindow), true
}

// Answer is the deferred answer to req: 200 in the host's success shape,
// marked with the kept send's id.
func Answer(req *http.Request, f *call.Facts, id string) *http.Response {
	var body string
	if f.Upstream == dingtalk.API {
		body = `{"` + Marker + `":"` + id + `"}`
	} else {
		body = `{"errcode":0,"errmsg":"ok","` + Marker + `":"` + id + `"}`
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json;charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set(HeaderDeferred, id)
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// keepFailure names why a send was not kept, for a log line.
func keepFailure(err error) string {
	switch {
	case errors.Is(err, outbox.ErrFull):
		return "full"
	case errors.Is(err, outbox.ErrInvalid):
		return "invalid"
	case errors.Is(err, outbox.ErrClosed):
		return "closed"
	}
	return "store_error"
}
