package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Codes of dingproxy's own answers on the api host: one stable code per
// kind, in the "code" member SDKs of the new API read (SPEC: "The proxy's
// own answers"). On the oapi host the same answers carry errcode -1 (5xx),
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
)

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

// response is o as the Transport's answer to req, with h's headers.
func (o own) response(req *http.Request, up dingtalk.Upstream, h http.Header) *http.Response {
	return synthesize(req, o.status, h, o.render(up, h))
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
