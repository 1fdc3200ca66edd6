package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/quota"
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
	// KindQuota: the organisation's monthly quota is spent on the route
	// (DingTalk answered 90020 this month) or this app's monthly_budget is:
	// answered at once, not sent.
	KindQuota = "quota"
)

// fallback answers a call its breaker stopped (nothing was sent): the last
// good answer when the route keeps one, else the route's configured answer,
// else the default 503 in the host's shape with Retry-After.
func (px *Proxy) fallback(w http.ResponseWriter, req *http.Request, f *call.Facts, oe *breaker.OpenError) {
	h := w.Header()
	var fb *call.Fallback
	if f.Policy != nil {
		fb = f.Policy.Fallback
	}
	if oe.Kind == breaker.KindCircuitOpen && fb != nil {
		if stale := f.StaleFor(); stale > 0 {
			if e, ok := px.stale.Peek(staleKey(req, f), stale); ok {
				copyHeader(h, e.Header)
				h.Set(HeaderFallback, KindStale)
				h.Set("Age", strconv.Itoa(int(time.Since(e.Stored)/time.Second)))
				writeBody(w, e.Status, e.Body)
				return
			}
		}
		if fb.Status != 0 {
			copyHeader(h, fb.Header)
			h.Set(HeaderFallback, KindRoute)
			writeBody(w, fb.Status, fb.Body)
			return
		}
	}
	secs := int(oe.RetryAfter / time.Second)
	o := own{status: http.StatusServiceUnavailable, code: CodeCircuitOpen,
		msg: fmt.Sprintf("dingproxy: circuit open for %s, retry after %ds", oe.Route, secs)}
	if oe.Kind == breaker.KindIPBan {
		o.code = CodeIPBan
		o.msg = fmt.Sprintf("dingproxy: DingTalk banned this egress IP; circuit open for every route, retry after %ds", secs)
	}
	h.Set("Retry-After", strconv.Itoa(secs))
	h.Set(HeaderFallback, oe.Kind)
	o.write(w, f.Upstream)
}

// pacedAnswer is the 429-style answer to a call whose turn would come after
// its deadline: DingTalk's own throttle errcode on oapi, so SDKs treat it as
// one; dingproxy.Paced on api.
func (px *Proxy) pacedAnswer(w http.ResponseWriter, f *call.Facts, e *pacing.PacedError) {
	secs := int((e.Wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	o := own{status: http.StatusTooManyRequests, code: CodePaced, errcode: dingtalk.ErrcodeQPSAppAPI,
		msg: fmt.Sprintf("dingproxy: paced: %s is at DingTalk's rate limit and this call's turn would come after its deadline; retry after %ds", f.Route, secs)}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set(HeaderFallback, KindPaced)
	o.write(w, f.Upstream)
}

// quotaAnswer is the answer to a metered call the monthly quota refused:
// 403 with DingTalk's own 90020 on oapi (SDKs treat it as DingTalk's, and do
// not retry it), dingproxy.QuotaExceeded on api; Retry-After says when
// trying again may help (the route's next probe, or the month's turn).
func (px *Proxy) quotaAnswer(w http.ResponseWriter, f *call.Facts, e *quota.Error) {
	secs := int((e.RetryAfter + time.Second - 1) / time.Second)
	msg := fmt.Sprintf("dingproxy: the organisation's monthly API quota is spent on %s (DingTalk answered 90020 this month); not sent; the next try goes in %ds", f.Route, secs)
	switch {
	case e.Budget:
		msg = fmt.Sprintf("dingproxy: this app's monthly budget (quota.monthly_budget) is spent; not sent; it renews in %ds", secs)
	case e.Organisation:
		msg = fmt.Sprintf("dingproxy: the organisation's monthly API quota is spent (DingTalk said its usage is at the quota): no metered API is called this month; not sent; the next try goes in %ds", secs)
	}
	o := own{status: http.StatusForbidden, code: CodeQuotaExceeded, errcode: dingtalk.ErrcodeMonthlyQuota, msg: msg}
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	w.Header().Set(HeaderFallback, KindQuota)
	o.write(w, f.Upstream)
}

// copyHeader adds src's end-to-end fields to dst (a kept answer's
// hop-by-hop fields were its connection's, not this one's).
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Content-Length":
			continue
		}
		dst[k] = append([]string(nil), vv...)
	}
}

// writeBody writes a whole answer of known length.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// staleKey identifies "the same request": method, path, the client's query
// (with its own token, if any), the body, and a client's own api token.
// A POST read's answer depends on its body (which user?), so the body is in
// the key; a client's own token may belong to another app, so it is too.
func staleKey(req *http.Request, f *call.Facts) [sha256.Size]byte {
	h := sha256.New()
	io.WriteString(h, req.Method)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.Path)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.RawQuery)
	h.Write([]byte{0})
	io.WriteString(h, req.Header.Get(dingtalk.HeaderAccessToken))
	h.Write([]byte{0})
	h.Write(f.Body)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// keepForStale records a successful answer on a route that serves stale
// fallbacks, as the client reads it: whole answers up to maxStaleBody only.
func (px *Proxy) keepForStale(req *http.Request, f *call.Facts, resp *http.Response) {
	if f.StaleFor() <= 0 || resp.StatusCode != http.StatusOK || !f.Replayable || resp.ContentLength > maxStaleBody {
		return
	}
	resp.Body = &recordingBody{ReadCloser: resp.Body, px: px, key: staleKey(req, f), status: resp.StatusCode, header: resp.Header}
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
		b.px.stale.Put(b.key, Entry{Status: b.status, Header: h, Body: bytes.Clone(b.buf.Bytes()), Stored: time.Now()}, 0)
		b.over = true // store once
	}
	return n, err
}
