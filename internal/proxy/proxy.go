package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/token"
)

// HeaderAttempts carries the number of upstream attempts on every answer.
const HeaderAttempts = "X-Dingproxy-Attempts"

// Options are the parts of a Proxy fixed at start.
type Options struct {
	// OAPI and API are the upstreams' base URLs.
	OAPI, API *url.URL
	// Path runs a call once its facts are decided: the request path's chain
	// of layers, from the read cache down to DingTalk.
	Path call.Handler
	// Tokens is the shared token. Nil means pass-through mode: nothing is
	// injected and token calls are forwarded.
	Tokens *token.Source
	// AppKey and AppSecret identify clients' own token calls that are answered
	// from the cache.
	AppKey, AppSecret string
	// Logger gets failures. Nil means none.
	Logger *zap.Logger
	// Observer, if set, is told of every answered request.
	Observer Observer
	// Routes, if set, is told of every route the route table gives up.
	Routes RouteObserver
}

// Observer is told of every request once its handler returns: its route
// (RouteRejected when it was refused before one was known), the status the
// client got, the fallback kind ("" for none), its facts (nil when it was
// answered before they were decided) and how long it took. It runs outside
// every lock, and a panic in it never changes an answer.
type Observer interface {
	Served(route string, status int, fallback string, f *call.Facts, d time.Duration)
}

// RouteRejected names the route of requests refused before routing.
const RouteRejected = "_rejected"

// Policy is the part of a Proxy that a reload can change.
type Policy struct {
	// Routes holds per-route settings, by exact path or by an API's route
	// template ("/v1.0/contact/users/{unionId}"); an exact path wins.
	Routes map[string]*call.RoutePolicy
	// MaxRoutes caps the routes with a name of their own (breaker.max_routes):
	// past it, APIs share the overflow route.
	MaxRoutes int
	// TokenPlaceholder, when set, is a token value clients send to mean
	// "the shared token": it is replaced like an empty one.
	TokenPlaceholder string
	// MaxBodyBytes is the largest request body buffered for replay.
	MaxBodyBytes int64
	// MaxBufferedBytes caps the bytes all requests together hold in body
	// buffers; past it bodies are streamed once. Zero means MaxBodyBytes.
	MaxBufferedBytes int64
	// MaxRequestBodyBytes caps a request body: a larger Content-Length is
	// answered 413 at once, a longer body of unknown length is cut off with
	// 413. Zero means no cap.
	MaxRequestBodyBytes int64
	// BodyReadTimeout is the longest pause allowed while a client sends a
	// request body; past it the request is answered 408. Zero means none.
	BodyReadTimeout time.Duration

	// table names routes under this policy (SetPolicy makes it).
	table *routeTable
}

// Proxy is the http.Handler in front of DingTalk: the door, where each
// request's facts are decided once, and the place where the layers' typed
// errors become answers.
type Proxy struct {
	opts   Options
	log    *zap.Logger
	rp     *httputil.ReverseProxy
	policy atomic.Pointer[Policy]
	stale  *LRU
	// buffered counts the bytes held in request-body buffers now.
	buffered atomic.Int64
}

// New returns a Proxy under policy p.
func New(opts Options, p Policy) *Proxy {
	px := &Proxy{opts: opts, log: opts.Logger, stale: NewLRU(staleMaxBytes)}
	if px.log == nil {
		px.log = zap.NewNop()
	}
	px.SetPolicy(p)
	px.rp = &httputil.ReverseProxy{
		Rewrite:      px.rewrite,
		Transport:    transport{px: px},
		ErrorHandler: px.errorHandler,
		BufferPool:   bufferPool{},
		ErrorLog:     zap.NewStdLog(px.log.Named("http")),
	}
	return px
}

// SetPolicy installs p for requests that start from now on. Routes already
// named keep their names.
func (px *Proxy) SetPolicy(p Policy) {
	if p.MaxBufferedBytes < p.MaxBodyBytes {
		p.MaxBufferedBytes = p.MaxBodyBytes
	}
	var old *routeTable
	if cur := px.policy.Load(); cur != nil {
		old = cur.table
	}
	p.table = old.withRoutes(p.MaxRoutes, p.Routes)
	px.policy.Store(&p)
}

// Routes is how many routes have a name of their own now, configured ones
// included.
func (px *Proxy) Routes() int { return px.policy.Load().table.len() }

func (px *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	route := RouteRejected
	up := dingtalk.UpstreamFor(r.URL.Path) // the shape of the proxy's own answers
	var f *call.Facts
	defer func() {
		// A panic anywhere below becomes a 502 for this request alone, with
		// a log line; the process keeps serving. http.ErrAbortHandler is
		// ReverseProxy's way of cutting a broken answer short: pass it on.
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			px.log.Error("panic serving a request: answered 502", zap.String("route", route),
				zap.String("method", r.Method), zap.String("panic", px.redactPanic(v)), zap.StackSkip("stack", 1))
			if sw.status == 0 {
				own{status: http.StatusBadGateway, code: CodeInternalError, msg: "dingproxy: internal error"}.write(sw, up)
			}
		}
		if o := px.opts.Observer; o != nil {
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			if f != nil && !px.policy.Load().table.has(route) {
				route = Overflow // the table gave the route up during the call
			}
			call.Bookkeep(px.log, "served", func() {
				o.Served(route, status, sw.Header().Get(HeaderFallback), f, time.Since(start))
			})
		}
		if cb := sw.body; cb != nil && !cb.done() {
			// The answer went out before the body was all in: send it on
			// its way, then take in the rest (bounded), so a client still
			// writing gets its answer rather than a broken pipe.
			http.NewResponseController(sw).Flush()
			cb.drain()
		}
	}()
	route, f = px.serve(sw, r, up)
}

// Overloaded answers a request refused for max_inflight: 503 at once, in
// the shape of the upstream it was meant for, with Retry-After.
func Overloaded(w http.ResponseWriter, r *http.Request, limit int64) {
	if MustClose(r) {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Retry-After", "1")
	own{status: http.StatusServiceUnavailable, code: CodeOverloaded,
		msg: "dingproxy: too many requests in flight (max_inflight " + strconv.FormatInt(limit, 10) + "); retry after 1s"}.write(w, dingtalk.UpstreamFor(r.URL.Path))
}

// serve decides r's facts, answers it, and returns its route and facts (nil
// when it was answered before they were decided). up is the upstream its
// path belongs to.
func (px *Proxy) serve(w *statusWriter, r *http.Request, up dingtalk.Upstream) (string, *call.Facts) {
	if MustClose(r) {
		// Its framing may be a smuggling attempt (see sniff.go): whatever
		// the answer, early or not, the connection closes after it. The
		// statusWriter sets it on the final answer (ReverseProxy clears the
		// headers after a 1xx).
		w.closeConn = true
	}
	// A request line in absolute form names a host of the client's choosing;
	// CONNECT asks for a tunnel. Neither goes anywhere.
	if r.Method == http.MethodConnect || r.URL.IsAbs() || r.URL.Host != "" {
		writeError(w, up, http.StatusBadRequest, "dingproxy: absolute-form request lines and CONNECT are not proxied")
		return RouteRejected, nil
	}
	if msg := badPath(r.URL); msg != "" {
		writeError(w, up, http.StatusBadRequest, "dingproxy: "+msg)
		return RouteRejected, nil
	}
	if len(r.Header.Values(dingtalk.HeaderAccessToken)) > 1 {
		// Which token would DingTalk take? The proxy will not guess: the
		// shared token, a cached answer, or the client's own.
		writeError(w, up, http.StatusBadRequest, "dingproxy: more than one "+dingtalk.HeaderAccessToken+" header: send one")
		return RouteRejected, nil
	}
	pol := px.policy.Load()
	path := r.URL.Path
	// The request's facts, decided once: upstream, API, route, token
	// placement, idempotency, body.
	ep := dingtalk.Describe(path)
	name := ep.Route
	rp, configured := pol.Routes[path]
	if configured {
		name = path
	} else if rp, configured = pol.Routes[ep.Route]; configured {
		name = ep.Route
	}

	var cb *clientBody
	if r.Body != nil && r.Body != http.NoBody {
		if limit := pol.MaxRequestBodyBytes; limit > 0 && r.ContentLength > limit {
			w.closeConn = true // the body is not read: it must not be taken for the next request
			writeError(w, up, http.StatusRequestEntityTooLarge, tooLargeMsg(limit))
			return RouteRejected, nil
		}
		cb = newClientBody(w, r.Body, pol.BodyReadTimeout, pol.MaxRequestBodyBytes)
		r.Body = cb
		w.body = cb
	}
	body, held, notBuffered, err := px.readBody(r, pol)
	if held > 0 {
		defer px.buffered.Add(-held)
	}
	if err != nil {
		status, msg := clientBodyStatus(w, err)
		writeError(w, up, status, msg)
		return RouteRejected, nil
	}
	if px.opts.Tokens != nil && ep.TokenEndpoint && px.answerTokenCall(w, r, body, up) {
		return ep.Route, nil // a token endpoint: one of a fixed few routes
	}
	inject := px.placement(r, ep, pol)
	f := &call.Facts{
		API:           ep.Route,
		Route:         pol.table.name(name, time.Now()),
		Upstream:      up,
		TokenEndpoint: ep.TokenEndpoint,
		// Only the app's own calls spend the app's month: a client's own
		// token is that client's (and its organisation's) business.
		Metered:     ep.Metered && inject != dingtalk.PlaceNone,
		AppCall:     !ep.TokenEndpoint && inject != dingtalk.PlaceNone,
		Body:        body,
		Replayable:  notBuffered == "",
		NotBuffered: notBuffered,
		Inject:      inject,
		Policy:      rp,
	}
	if cb != nil && notBuffered != "" {
		f.ClientBody = cb
	}
	if ep.Route == dingtalk.PathRobotSend {
		// Each custom robot has its own limit: paced by a digest of its
		// webhook token, which itself never leaves the request.
		f.API = robotKey(r.URL.RawQuery)
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		f.Idempotent, f.Read = true, true
	default:
		f.Idempotent = ep.Read || dingtalk.HasIdempotencyKey(ep.Route, r.Header, body)
		f.Read = ep.Read
	}
	if rp != nil && rp.Idempotent != nil {
		f.Idempotent = *rp.Idempotent
	}
	// From here on f does not change: every layer below reads it.
	px.rp.ServeHTTP(w, r.WithContext(call.WithFacts(r.Context(), f)))
	return f.Route, f
}

func (px *Proxy) rewrite(pr *httputil.ProxyRequest) {
	target := px.opts.OAPI
	if f := call.FactsFrom(pr.In.Context()); f != nil && f.Upstream == dingtalk.API {
		target = px.opts.API
	}
	pr.SetURL(target)
	// Rewrite has already dropped Forwarded and X-Forwarded-*; no other
	// header naming the pod's or the client's address goes to DingTalk.
	pr.Out.Header.Del("X-Real-Ip")
	pr.Out.Header.Del("Client-Ip")
}

// statusWriter remembers the status written through it. Unwrap lets
// http.ResponseController (which ReverseProxy flushes with) reach the
// connection's own writer.
type statusWriter struct {
	http.ResponseWriter
	status int
	// closeConn puts Connection: close on the final answer.
	closeConn bool
	// body is the client's request body, if it has one.
	body *clientBody
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || w.status < 200 { // 1xx answers come before the final one
		w.status = code
	}
	if w.closeConn && code >= 200 {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool lends ReverseProxy its copy buffers.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// robotKey is a robot's pacing name: pacing.RobotPrefix and a digest of its
// access_token (every robot without one shares the name of the empty one).
func robotKey(rawQuery string) string {
	var tok string
	for _, v := range dingtalk.QueryTokens(rawQuery) {
		tok = v
		break
	}
	sum := sha256.Sum256([]byte(tok))
	return pacing.RobotPrefix + hex.EncodeToString(sum[:12])
}
