package proxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// HeaderFallback names the kind of fallback an answer is: circuit-open,
// ip-ban, route (a configured fallback) or stale.
const HeaderFallback = "X-Dingproxy-Fallback"

// Fallback kinds beyond the breaker's own.
const (
	KindRoute = "route"
	KindStale = "stale"
	// KindPaced: the call's turn under DingTalk's rate limits would come
	// after its deadline, so it was answered at once instead of sent.
	KindPaced = "paced"
)

// Fallback is what a route answers while its breaker is open.
type Fallback struct {
	// Status, Header and Body are the configured answer; Status 0 means none
	// (only Stale, then the default).
	Status int
	Header http.Header
	Body   []byte
	// Stale, when positive, serves the last good answer to the same request
	// up to this age first (idempotent requests only).
	Stale time.Duration
}

// guard is the outermost RoundTripper: the route's breaker, the proxy-wide
// IP-ban breaker, and the fallbacks they answer with. It counts each call's
// final outcome after the attempt loop, as SPEC says.
type guard struct {
	next     http.RoundTripper
	breakers *breaker.Set
	px       *Proxy
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	c := retry.CallFrom(req.Context())
	if c == nil {
		return g.next.RoundTrip(req)
	}
	done, err := g.breakers.Allow(c.Route)
	if err != nil {
		return g.px.fallback(req, c, err.(*breaker.OpenError)), nil
	}
	resp, err := g.next.RoundTrip(req)
	var paced *pacing.PacedError
	if err != nil && errors.As(err, &paced) {
		done(breaker.Ignore)
		return g.px.pacedAnswer(req, c, paced), nil
	}
	if c.Outcome == retry.IPBan {
		ban := c.Result.Wait
		if ban <= 0 {
			ban = dingtalk.IPBanDuration * time.Second
		}
		retry.Bookkeep(g.px.log, "breaker", func() {
			done(breaker.Ignore)
			g.breakers.Ban(ban)
		})
		if resp != nil {
			resp.Body.Close()
		}
		return g.px.fallback(req, c, &breaker.OpenError{Route: c.Route, Kind: breaker.KindIPBan, RetryAfter: ban}), nil
	}
	// DingTalk may have executed the call: its bookkeeping cannot fail it.
	retry.Bookkeep(g.px.log, "breaker", func() {
		done(verdict(c))
		if err == nil && c.Outcome == retry.Success {
			g.px.keepForStale(req, c, resp)
		}
	})
	return resp, err
}

// verdict is how a call's final outcome counts for its breaker: network
// errors, timeouts, 5xx and "system busy" fail it; business errors,
// throttling (pacing's business), token trouble and clients that went away
// do not count.
func verdict(c *retry.Call) breaker.Verdict {
	switch c.Outcome {
	case retry.Success:
		return breaker.Success
	case retry.ServerError, retry.AfterSend:
		return breaker.Failure
	case retry.NotSent:
		if c.Reason == retry.ReasonTokenUnavailable || c.Reason == retry.ReasonPaced {
			return breaker.Ignore
		}
		return breaker.Failure
	case retry.Canceled:
		if c.Reason == retry.ReasonTimeout {
			return breaker.Failure
		}
	}
	return breaker.Ignore
}

// fallback answers a call its breaker stopped: the last good answer when
// the route keeps one, else the route's configured answer, else the default
// DingTalk-shaped 503 with Retry-After.
func (px *Proxy) fallback(req *http.Request, c *retry.Call, oe *breaker.OpenError) *http.Response {
	fb := px.routeFor(req, c).Fallback
	if oe.Kind == breaker.KindCircuitOpen && fb != nil {
		if fb.Stale > 0 && c.Idempotent {
			if e, ok := px.stale.get(staleKey(req, c), fb.Stale); ok {
				h := e.header.Clone()
				h.Set(HeaderFallback, KindStale)
				h.Set("Age", strconv.Itoa(int(time.Since(e.stored)/time.Second)))
				return synthesize(req, e.status, h, e.body)
			}
		}
		if fb.Status != 0 {
			h := fb.Header.Clone()
			if h == nil {
				h = http.Header{}
			}
			h.Set(HeaderFallback, KindRoute)
			return synthesize(req, fb.Status, h, fb.Body)
		}
	}
	secs := int(oe.RetryAfter / time.Second)
	o := own{status: http.StatusServiceUnavailable, code: CodeCircuitOpen,
		msg: fmt.Sprintf("dingproxy: circuit open for %s, retry after %ds", oe.Route, secs)}
	if oe.Kind == breaker.KindIPBan {
		o.code = CodeIPBan
		o.msg = fmt.Sprintf("dingproxy: DingTalk banned this egress IP; circuit open for every route, retry after %ds", secs)
	}
	h := http.Header{}
	h.Set("Retry-After", strconv.Itoa(secs))
	h.Set(HeaderFallback, oe.Kind)
	return o.response(req, c.Upstream, h)
}

// pacedAnswer is the 429-style answer to a call whose turn would come after
// its deadline: DingTalk's own throttle errcode on oapi, so SDKs treat it as
// one; dingproxy.Paced on api.
func (px *Proxy) pacedAnswer(req *http.Request, c *retry.Call, e *pacing.PacedError) *http.Response {
	secs := int((e.Wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	o := own{status: http.StatusTooManyRequests, code: CodePaced, errcode: dingtalk.ErrcodeQPSAppAPI,
		msg: fmt.Sprintf("dingproxy: paced: %s is at DingTalk's rate limit and this call's turn would come after its deadline; retry after %ds", e.Path, secs)}
	h := http.Header{}
	h.Set("Retry-After", strconv.Itoa(secs))
	h.Set(HeaderFallback, KindPaced)
	return o.response(req, c.Upstream, h)
}

func synthesize(req *http.Request, status int, h http.Header, body []byte) *http.Response {
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// staleKey identifies "the same request": method, path, the client's query
// (with its own token, if any), the body, and a client's own api token.
// A POST read's answer depends on its body (which user?), so the body is in
// the key; a client's own token may belong to another app, so it is too.
func staleKey(req *http.Request, c *retry.Call) [sha256.Size]byte {
	h := sha256.New()
	io.WriteString(h, req.Method)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.Path)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.RawQuery)
	h.Write([]byte{0})
	io.WriteString(h, req.Header.Get(dingtalk.HeaderAccessToken))
	h.Write([]byte{0})
	h.Write(c.Body)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// keepForStale records a successful answer on a route that serves stale
// fallbacks, as the client reads it: whole answers up to maxStaleBody only.
func (px *Proxy) keepForStale(req *http.Request, c *retry.Call, resp *http.Response) {
	if !c.Idempotent || resp.StatusCode != http.StatusOK || !c.Replayable {
		return
	}
	fb := px.routeFor(req, c).Fallback
	if fb == nil || fb.Stale <= 0 || resp.ContentLength > maxStaleBody {
		return
	}
	resp.Body = &recordingBody{ReadCloser: resp.Body, px: px, key: staleKey(req, c), status: resp.StatusCode, header: resp.Header}
}

// recordingBody copies an answer into the stale cache once it was read whole.
type recordingBody struct {
	io.ReadCloser
	px     *Proxy
	key    [sha256.Size]byte
	status int
	header http.Header
	buf    bytes.Buffer
	over   bool
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if !b.over {
		if b.buf.Len()+n > maxStaleBody {
			b.over = true
			b.buf = bytes.Buffer{}
		} else {
			b.buf.Write(p[:n])
		}
	}
	if err == io.EOF && !b.over {
		h := b.header.Clone()
		h.Del(HeaderAttempts)
		b.px.stale.put(b.key, staleEntry{status: b.status, header: h, body: bytes.Clone(b.buf.Bytes()), stored: time.Now()})
		b.over = true // store once
	}
	return n, err
}

// routeFor is the configured policy of c's route: by exact path, else by
// the API's template.
func (px *Proxy) routeFor(req *http.Request, c *retry.Call) Route {
	routes := px.policy.Load().Routes
	if r, ok := routes[req.URL.Path]; ok {
		return r
	}
	return routes[c.Path]
}
