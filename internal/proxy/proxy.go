package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// HeaderAttempts carries the number of upstream attempts on every answer.
const HeaderAttempts = "X-Dingproxy-Attempts"

// Options are the parts of a Proxy fixed at start.
type Options struct {
	// OAPI and API are the upstreams' base URLs.
	OAPI, API *url.URL
	// Transport sends requests upstream: the attempt loop.
	Transport http.RoundTripper
	// Tokens is the shared token. Nil means pass-through mode: nothing is
	// injected and token calls are forwarded.
	Tokens *token.Source
	// AppKey and AppSecret identify clients' own token calls that are answered
	// from the cache.
	AppKey, AppSecret string
	// Breakers, when set, guard every route; open ones answer fallbacks.
	Breakers *breaker.Set
	// Logger gets failures. Nil means none.
	Logger *zap.Logger
	// Served, if set, is told of every answered request once its handler
	// returns: its route (RouteRejected when it was refused before one was
	// known), the status the client got, the fallback kind ("" for none),
	// its Call (nil when none was made) and how long it took.
	Served func(route string, status int, fallback string, c *retry.Call, d time.Duration)
}

// RouteRejected names the route of requests refused before routing.
const RouteRejected = "_rejected"

// Policy is the part of a Proxy that a reload can change.
type Policy struct {
	// Routes holds per-route settings, by exact path or by an API's route
	// template ("/v1.0/contact/users/{unionId}"); an exact path wins.
	Routes map[string]Route
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
}

// Why a body was not buffered, as Call.NotBuffered says.
const (
	NotBufferedTooLarge  = "too_large"
	NotBufferedBufferCap = "buffer_cap"
)

// Route is per-path policy.
type Route struct {
	// Idempotent, when non-nil, overrides dingproxy's own judgement.
	Idempotent *bool
	// Fallback, when non-nil, is what the route answers while its breaker
	// is open instead of the default.
	Fallback *Fallback
}

// Proxy is the http.Handler in front of DingTalk.
type Proxy struct {
	opts   Options
	log    *zap.Logger
	rp     *httputil.ReverseProxy
	policy atomic.Pointer[Policy]
	stale  *staleCache
	// buffered counts the bytes held in request-body buffers now.
	buffered atomic.Int64
}

// New returns a Proxy under policy p.
func New(opts Options, p Policy) *Proxy {
	px := &Proxy{opts: opts, log: opts.Logger, stale: newStaleCache()}
	if px.log == nil {
		px.log = zap.NewNop()
	}
	px.SetPolicy(p)
	transport := http.RoundTripper(upstreamAnswers{opts.Transport})
	if opts.Breakers != nil {
		transport = &guard{next: transport, breakers: opts.Breakers, px: px}
	}
	px.rp = &httputil.ReverseProxy{
		Rewrite:        px.rewrite,
		Transport:      transport,
		ModifyResponse: px.modifyResponse,
		ErrorHandler:   px.errorHandler,
		BufferPool:     bufferPool{},
		ErrorLog:       zap.NewStdLog(px.log.Named("http")),
	}
	return px
}

// SetPolicy installs p for requests that start from now on.
func (px *Proxy) SetPolicy(p Policy) {
	if p.MaxBufferedBytes < p.MaxBodyBytes {
		p.MaxBufferedBytes = p.MaxBodyBytes
	}
	px.policy.Store(&p)
}

// Buffered is how many bytes request-body buffers hold now.
func (px *Proxy) Buffered() int64 { return px.buffered.Load() }

// reserve takes n bytes of the buffer cap, or reports that they are not left.
func (px *Proxy) reserve(n, limit int64) bool {
	for {
		used := px.buffered.Load()
		if used+n > limit {
			return false
		}
		if px.buffered.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (px *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	route := RouteRejected
	var c *retry.Call
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
				own{status: http.StatusBadGateway, code: CodeInternalError, msg: "dingproxy: internal error"}.write(sw, dingtalk.UpstreamFor(r.URL.Path))
			}
		}
		if px.opts.Served != nil {
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			retry.Bookkeep(px.log, "served", func() {
				px.opts.Served(route, status, sw.Header().Get(HeaderFallback), c, time.Since(start))
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
	route, c = px.serve(sw, r)
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

// serve answers r and returns its route and Call (nil when none was made).
func (px *Proxy) serve(w *statusWriter, r *http.Request) (string, *retry.Call) {
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
		writeError(w, dingtalk.UpstreamFor(r.URL.Path), http.StatusBadRequest, "dingproxy: absolute-form request lines and CONNECT are not proxied")
		return RouteRejected, nil
	}
	if msg := badPath(r.URL); msg != "" {
		writeError(w, dingtalk.UpstreamFor(r.URL.Path), http.StatusBadRequest, "dingproxy: "+msg)
		return RouteRejected, nil
	}
	pol := px.policy.Load()
	path := r.URL.Path
	// The request's facts, decided once: upstream, API, token placement.
	ep := dingtalk.Describe(path)
	up := ep.Upstream
	name := ep.Route
	route, configured := pol.Routes[path]
	if configured {
		name = path
	} else if route, configured = pol.Routes[ep.Route]; configured {
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
	if px.opts.Tokens != nil && ep.TokenEndpoint && px.answerTokenCall(w, r, body) {
		return ep.Route, nil // a token endpoint: one of a fixed few routes
	}
	if px.opts.Breakers != nil {
		name = px.opts.Breakers.Route(name)
	}
	call := &retry.Call{
		Path:          ep.Route,
		Route:         name,
		Upstream:      up,
		TokenEndpoint: ep.TokenEndpoint,
		Body:          body,
		Replayable:    notBuffered == "",
		NotBuffered:   notBuffered,
		Inject:        px.placement(r, ep),
	}
	if cb != nil && notBuffered != "" {
		call.ClientBody = cb
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		call.Idempotent = true
	default:
		call.Idempotent = ep.Read || dingtalk.HasIdempotencyKey(ep.Route, r.Header, body)
	}
	if configured && route.Idempotent != nil {
		call.Idempotent = *route.Idempotent
	}
	px.rp.ServeHTTP(w, r.WithContext(retry.WithCall(r.Context(), call)))
	return name, call
}

// placement decides where the shared token goes: nowhere for calls that
// take no app token (robot webhooks, token calls), requests that bring a
// token of their own, and pass-through mode. An empty token, or the
// configured placeholder, is not a token of the client's own: it is
// replaced.
func (px *Proxy) placement(r *http.Request, ep dingtalk.Endpoint) dingtalk.Placement {
	if px.opts.Tokens == nil || ep.NoAppToken {
		return dingtalk.PlaceNone
	}
	if ep.Upstream == dingtalk.API {
		if vals := r.Header.Values(dingtalk.HeaderAccessToken); len(vals) > 0 && !px.stands(vals) {
			return dingtalk.PlaceNone
		}
		return dingtalk.PlaceHeader
	}
	if vals := queryTokens(r.URL.RawQuery); len(vals) > 0 && !px.stands(vals) {
		return dingtalk.PlaceNone
	}
	return dingtalk.PlaceQuery
}

// stands reports whether every value is only a stand-in for the shared
// token: empty, blank, or the configured placeholder.
func (px *Proxy) stands(vals []string) bool {
	ph := px.policy.Load().TokenPlaceholder
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v != "" && (ph == "" || v != ph) {
			return false
		}
	}
	return true
}

func (px *Proxy) rewrite(pr *httputil.ProxyRequest) {
	target := px.opts.OAPI
	if c := retry.CallFrom(pr.In.Context()); c != nil && c.Upstream == dingtalk.API {
		target = px.opts.API
	}
	pr.SetURL(target)
	// Rewrite has already dropped Forwarded and X-Forwarded-*; no other
	// header naming the pod's or the client's address goes to DingTalk.
	pr.Out.Header.Del("X-Real-Ip")
	pr.Out.Header.Del("Client-Ip")
}

func (px *Proxy) modifyResponse(resp *http.Response) error {
	if c := retry.CallFrom(resp.Request.Context()); c != nil {
		resp.Header.Set(HeaderAttempts, strconv.Itoa(c.Attempts))
	}
	return nil
}

// upstreamAnswers strips X-Dingproxy-* headers from DingTalk's answers:
// those names are the proxy's to set (an upstream's would otherwise reach the
// client as the proxy's word, and the fallback metric as a label).
type upstreamAnswers struct{ next http.RoundTripper }

func (u upstreamAnswers) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := u.next.RoundTrip(req)
	if resp != nil {
		for k := range resp.Header {
			if len(k) >= len(headerPrefix) && strings.EqualFold(k[:len(headerPrefix)], headerPrefix) {
				delete(resp.Header, k)
			}
		}
	}
	return resp, err
}

// headerPrefix starts the names of dingproxy's own headers.
const headerPrefix = "X-Dingproxy-"

// TokenError is returned by the injector when no token can be had.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "proxy: no access token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

func (px *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := retry.CallFrom(r.Context())
	if c == nil {
		c = &retry.Call{Upstream: dingtalk.UpstreamFor(r.URL.Path)}
	}
	w.Header().Set(HeaderAttempts, strconv.Itoa(c.Attempts))
	var tokErr *TokenError
	status, code, msg := http.StatusBadGateway, CodeBadGateway, "dingproxy: DingTalk could not be reached after "+strconv.Itoa(c.Attempts)+" attempt(s)"
	var berr error
	if c.ClientBody != nil {
		berr = c.ClientBody.Failed()
	}
	if berr != nil {
		// The client's own body failed while it streamed upstream: say so,
		// whatever the attempt made of it. DingTalk got a cut-off body,
		// which it cannot have executed.
		status, msg = clientBodyStatus(w, berr)
		px.log.Debug("client body failed", zap.String("route", c.Route), zap.Int("status", status), zap.Error(berr))
		writeError(w, c.Upstream, status, msg)
		return
	}
	switch {
	case r.Context().Err() != nil:
		// The client went away; nobody reads this answer.
		px.log.Debug("client went away", zap.String("route", c.Route), zap.Int("attempts", c.Attempts))
		w.WriteHeader(499)
		return
	case errors.As(err, &tokErr):
		status, code, msg = http.StatusServiceUnavailable, CodeTokenUnavailable, "dingproxy: no access token available"
	case errors.Is(err, retry.ErrTimeout):
		status, code, msg = http.StatusGatewayTimeout, CodeGatewayTimeout, "dingproxy: DingTalk did not answer within retry.timeout"
	case c.Outcome == retry.AfterSend && !c.Idempotent:
		msg = "dingproxy: the connection to DingTalk failed after the request was sent; it may have been executed, so it was not repeated"
		if errors.Is(err, retry.ErrAttemptTimeout) {
			status, code = http.StatusGatewayTimeout, CodeGatewayTimeout
			msg = "dingproxy: DingTalk did not answer within retry.per_try_timeout; the request may have been executed, so it was not repeated"
		}
	case errors.Is(err, retry.ErrAttemptTimeout):
		status, code, msg = http.StatusGatewayTimeout, CodeGatewayTimeout, "dingproxy: DingTalk did not answer within retry.per_try_timeout after "+strconv.Itoa(c.Attempts)+" attempt(s)"
	}
	px.log.Warn("request failed", zap.String("route", c.Route), zap.String("method", r.Method),
		zap.Int("status", status), zap.Int("attempts", c.Attempts), zap.String("reason", c.Reason), zap.Error(token.Redact(err)))
	own{status: status, code: code, msg: msg}.write(w, c.Upstream)
}

// Injector returns the attempt loop's Prepare hook: it puts the shared token
// where the Call says, fresh from the cache on every attempt.
func Injector(src *token.Source) func(*http.Request, *retry.Call) (string, error) {
	return func(req *http.Request, c *retry.Call) (string, error) {
		if c.Inject == dingtalk.PlaceNone || src == nil {
			return "", nil
		}
		tok, err := src.Token(req.Context())
		if err != nil {
			return "", &TokenError{Err: err}
		}
		switch c.Inject {
		case dingtalk.PlaceHeader:
			req.Header.Set(dingtalk.HeaderAccessToken, tok) // replaces a stand-in
		case dingtalk.PlaceQuery:
			q := dingtalk.QueryAccessToken + "=" + url.QueryEscape(tok)
			if rest := withoutAccessToken(req.URL.RawQuery); rest != "" {
				q = rest + "&" + q
			}
			req.URL.RawQuery = q
		}
		return tok, nil
	}
}

// queryTokens is the access_token values in rawQuery, its names decoded
// (access%5Ftoken is access_token too). Pairs are split on "&" alone, as
// DingTalk splits them: a value with ";" is still a value (url.ParseQuery
// would drop the pair).
func queryTokens(rawQuery string) []string {
	if !mayNameToken(rawQuery) {
		return nil
	}
	var vals []string
	for part := range strings.SplitSeq(rawQuery, "&") {
		name, val, _ := strings.Cut(part, "=")
		if !isTokenName(name) {
			continue
		}
		if v, err := url.QueryUnescape(val); err == nil {
			val = v
		}
		vals = append(vals, val)
	}
	return vals
}

// withoutAccessToken is rawQuery without its access_token parameters (the
// stand-ins placement found), every other byte as it was.
func withoutAccessToken(rawQuery string) string {
	if !mayNameToken(rawQuery) {
		return rawQuery
	}
	var b strings.Builder
	for part := range strings.SplitSeq(rawQuery, "&") {
		name, _, _ := strings.Cut(part, "=")
		if isTokenName(name) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

// mayNameToken is false when no parameter of rawQuery can be access_token.
func mayNameToken(rawQuery string) bool {
	return strings.Contains(rawQuery, dingtalk.QueryAccessToken) || strings.Contains(rawQuery, "%")
}

// isTokenName reports whether a raw query name decodes to access_token.
func isTokenName(name string) bool {
	if name == dingtalk.QueryAccessToken {
		return true
	}
	n, err := url.QueryUnescape(name)
	return err == nil && n == dingtalk.QueryAccessToken
}

// readBody buffers r's body for replay when it is at most pol.MaxBodyBytes
// and the global cap pol.MaxBufferedBytes has room for it; held is what it
// took of the cap, to be given back when the request is done. Otherwise the
// body is left to stream once (its read part put back in front of the rest)
// and notBuffered says why. Reading grows the buffer chunk by chunk, each
// reserved before it is read, so a body of unknown length holds no more of
// the cap than it has sent.
func (px *Proxy) readBody(r *http.Request, pol *Policy) (body []byte, held int64, notBuffered string, err error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, 0, "", nil
	}
	if r.ContentLength > pol.MaxBodyBytes {
		return nil, 0, NotBufferedTooLarge, nil
	}
	if r.ContentLength > 0 {
		// Known length: reserve it all at once, read it in one buffer.
		if !px.reserve(r.ContentLength, pol.MaxBufferedBytes) {
			return nil, 0, NotBufferedBufferCap, nil
		}
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, r.ContentLength, "", err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		return b, r.ContentLength, "", nil
	}
	const chunk = 32 << 10
	var b []byte
	for {
		if len(b) == cap(b) {
			grow := int64(min(max(int64(cap(b)), chunk), pol.MaxBodyBytes+1-int64(cap(b))))
			if grow <= 0 || !px.reserve(grow, pol.MaxBufferedBytes) {
				why := NotBufferedBufferCap
				if int64(len(b)) > pol.MaxBodyBytes || grow <= 0 {
					why = NotBufferedTooLarge
				}
				px.streamRest(r, b)
				return nil, held, why, nil
			}
			held += grow
			nb := make([]byte, len(b), int64(cap(b))+grow)
			copy(nb, b)
			b = nb
		}
		n, rerr := r.Body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, held, "", rerr
		}
		if int64(len(b)) > pol.MaxBodyBytes {
			px.streamRest(r, b)
			return nil, held, NotBufferedTooLarge, nil
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.TransferEncoding = nil
	if len(b) == 0 {
		return nil, held, "", nil
	}
	return b, held, "", nil
}

// streamRest puts the part of r's body already read back in front of the
// rest, to be streamed once.
func (px *Proxy) streamRest(r *http.Request, read []byte) {
	if len(read) == 0 {
		return
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(read), r.Body), r.Body}
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
