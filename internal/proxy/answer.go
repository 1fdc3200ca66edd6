package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
	"go.uber.org/zap"
)

// Codes of dingproxy's own answers on the api host: one stable code per
// kind, in the "code" member SDKs of the new API read (README: "The
// proxy's own answers"). On the oapi host the same answers carry errcode -1 (5xx),
// the status (4xx), or DingTalk's own throttle errcode when paced.
const (
	CodeBadRequest       = "dingproxy.BadRequest"
	CodeRequestTimeout   = "dingproxy.RequestTimeout"
	CodeBodyTooLarge     = "dingproxy.RequestTooLarge"
	CodePaced            = "dingproxy.Paced"
	CodeCircuitOpen      = "dingproxy.CircuitOpen"
	CodeIPBan            = "dingproxy.IPBan"
	CodeOverloaded       = "dingproxy.Overloaded"
	CodeTokenUnavailable = "dingproxy.TokenUnavailable"
	CodeBadGateway       = "dingproxy.BadGateway"
	CodeGatewayTimeout   = "dingproxy.GatewayTimeout"
	CodeInternalError    = "dingproxy.InternalError"
	CodeQuotaExceeded    = "dingproxy.QuotaExceeded"
)

// errorHandler maps the typed errors of the layers below to answers, in one
// place: an open breaker to its fallback, a paced call to the paced answer,
// a client's failed body to 408/413, a client gone to 499, no token to 503,
// timeouts to 504, and every other failure to 502.
func (px *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	f := call.FactsFrom(r.Context())
	if f == nil { // only errNoFacts: the one answer, whatever the host
		f = &call.Facts{}
	}
	// The typed errors of the layers below, each mapped to its answer here.
	var rep call.Report
	var ce *call.Error
	if errors.As(err, &ce) {
		rep = ce.Report
	}
	attempts := rep.Attempts
	w.Header().Set(HeaderAttempts, strconv.Itoa(attempts))
	var open *breaker.OpenError
	if errors.As(err, &open) {
		px.fallback(w, r, f, open) // an open breaker, or an IP-ban answer
		return
	}
	var paced *pacing.PacedError
	if errors.As(err, &paced) {
		px.pacedAnswer(w, f, paced)
		return
	}
	var spent *quota.Error
	if errors.As(err, &spent) {
		px.quotaAnswer(w, f, spent)
		return
	}
	var tokErr *token.Error
	status, code, msg := http.StatusBadGateway, CodeBadGateway, "dingproxy: DingTalk could not be reached after "+strconv.Itoa(attempts)+" attempt(s)"
	var berr error
	if f.ClientBody != nil {
		berr = f.ClientBody.Failed()
	}
	if berr != nil {
		// The client's own body failed while it streamed upstream: say so,
		// whatever the attempt made of it. DingTalk got a cut-off body,
		// which it cannot have executed.
		status, msg = clientBodyStatus(w, berr)
		px.log.Debug("client body failed", zap.String("route", f.Route), zap.Int("status", status), zap.Error(berr))
		writeError(w, f.Upstream, status, msg)
		return
	}
	if r.Context().Err() != nil || errors.Is(err, context.Canceled) && !errors.Is(err, retry.ErrTimeout) {
		// The client went away; nobody reads this answer. Counted as 499,
		// never as DingTalk unreachable.
		px.log.Debug("client went away", zap.String("route", f.Route), zap.Int("attempts", attempts))
		w.WriteHeader(499)
		return
	}
	switch rep.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429, call.ReasonPaced:
		// DingTalk throttled the last attempt, and no turn for another came
		// in time: that is pacing's answer, not a network failure.
		now := time.Now()
		px.pacedAnswer(w, f, &pacing.PacedError{Path: f.API, Wait: dingtalk.Penalty(rep.Result, now).Sub(now)})
		return
	}
	switch {
	case errors.As(err, &tokErr):
		status, code, msg = http.StatusServiceUnavailable, CodeTokenUnavailable, "dingproxy: no access token available"
	case errors.Is(err, retry.ErrTimeout):
		status, code, msg = http.StatusGatewayTimeout, CodeGatewayTimeout, "dingproxy: DingTalk did not answer within retry.timeout"
	case rep.Outcome == call.AfterSend && !f.Idempotent:
		msg = "dingproxy: the connection to DingTalk failed after the request was sent; it may have been executed, so it was not repeated"
		if errors.Is(err, retry.ErrAttemptTimeout) {
			status, code = http.StatusGatewayTimeout, CodeGatewayTimeout
			msg = "dingproxy: DingTalk did not answer within retry.per_try_timeout; the request may have been executed, so it was not repeated"
		}
	case errors.Is(err, retry.ErrAttemptTimeout):
		status, code, msg = http.StatusGatewayTimeout, CodeGatewayTimeout, "dingproxy: DingTalk did not answer within retry.per_try_timeout after "+strconv.Itoa(attempts)+" attempt(s)"
	}
	px.log.Warn("request failed", zap.String("route", f.Route), zap.String("method", r.Method),
		zap.Int("status", status), zap.Int("attempts", attempts), zap.String("reason", rep.Reason), zap.Error(token.Redact(err)))
	own{status: status, code: code, msg: msg}.write(w, f.Upstream)
}

// HeaderRequestID is the new API's request id header, which dingproxy's own
// answers on that host carry too (the same id as the body's requestid).
const HeaderRequestID = "x-acs-request-id"

// own is an answer of dingproxy's own.
type own struct {
	status int
	// code is the api host's code; "" picks the status's usual one.
	code string
	// errcode is the oapi host's errcode; 0 means -1 for 5xx, else the status.
	errcode int
	msg     string
}

// codeFor is the usual code of a status.
func codeFor(status int) string {
	switch status {
	case http.StatusBadRequest:
		return CodeBadRequest
	case http.StatusRequestTimeout:
		return CodeRequestTimeout
	case http.StatusRequestEntityTooLarge:
		return CodeBodyTooLarge
	case http.StatusTooManyRequests:
		return CodePaced
	case http.StatusGatewayTimeout:
		return CodeGatewayTimeout
	case http.StatusServiceUnavailable:
		return CodeOverloaded
	}
	return CodeBadGateway
}

// render is o's body in up's shape, and the headers that go with it:
// {"errcode":N,"errmsg":"..."} for oapi, {"code":"dingproxy.X",
// "message":"...","requestid":"..."} for api.
func (o own) render(up dingtalk.Upstream, h http.Header) []byte {
	var v any
	if up == dingtalk.API {
		code := o.code
		if code == "" {
			code = codeFor(o.status)
		}
		id := newRequestID()
		h.Set(HeaderRequestID, id)
		v = struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			RequestID string `json:"requestid"`
		}{code, o.msg, id}
	} else {
		errcode := o.errcode
		if errcode == 0 {
			errcode = o.status
			if o.status >= 500 {
				errcode = dingtalk.ErrcodeSystemBusy
			}
		}
		v = struct {
			Errcode int    `json:"errcode"`
			Errmsg  string `json:"errmsg"`
		}{errcode, o.msg}
	}
	b, _ := json.Marshal(v)
	h.Set("Content-Type", "application/json;charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	return b
}

// write sends o to the client in up's shape. An answer written before any
// attempt says so: X-Dingproxy-Attempts: 0.
func (o own) write(w http.ResponseWriter, up dingtalk.Upstream) {
	if w.Header().Get(HeaderAttempts) == "" {
		w.Header().Set(HeaderAttempts, "0")
	}
	b := o.render(up, w.Header())
	w.WriteHeader(o.status)
	w.Write(b)
}

// writeError writes an answer of dingproxy's own in the shape of up, with
// the status's usual code.
func writeError(w http.ResponseWriter, up dingtalk.Upstream, status int, msg string) {
	own{status: status, msg: msg}.write(w, up)
}

// newRequestID is a random id in the new API's shape
// (01A08FE7-CD6B-79BB-8B2E-35D8768AD457), so a proxy's answer can be told
// apart in logs and support tickets.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	for i, c := range out {
		if 'a' <= c && c <= 'f' {
			out[i] = c - 'a' + 'A'
		}
	}
	return string(out[:])
}
