package dingtalktest

import (
	"fmt"
	"strconv"
	"time"
)

type faultKind int

const (
	kindOK faultKind = iota // the zero Fault answers normally
	kindSystemBusy
	kindThrottle
	kindErrcode
	kindGateway88
	kindQPS90002
	kindAPIError
	kindStatus
	kindTooMany
	kindTokenInvalid
	kindResetBefore
	kindResetAfter
	kindHang
	kindLatency
	kindIPBanHTML
	kindIPBanJSON
	kindBody
	kindHuge
	kindBadGzip
	kindCloseMidBody
	kindEndlessChunked
	kindInformational
)

// A Fault is one way the fake answers a request instead of, or before,
// answering it normally. The zero Fault is [OK]. Build Faults with the
// constructors; they are values and safe to reuse.
type Fault struct {
	kind       faultKind
	code       int           // errcode, gateway sub code, HTTP status, IP-ban wait or 1xx count
	apiCode    string        // api "code", or Body's Content-Type
	msg        string        // message, or Body's body
	size       int64         // Huge's body length
	d          time.Duration // latency
	end        time.Time     // QPSLimitAPI90002 penalty end
	retryAfter time.Duration
}

// SystemBusy answers oapi paths with HTTP 200 errcode -1 "系统繁忙" and api paths
// with 503 {"code":"ServiceUnavailable",...}.
func SystemBusy() Fault { return Fault{kind: kindSystemBusy} }

// Throttle answers as DingTalk's per-app per-API QPS limit does: topapi paths
// with errcode 88 and sub_code "90018", legacy oapi paths with errcode 90018,
// api paths with 403 Forbidden.AccessDenied.QpsLimitForAppkeyAndApi.
func Throttle() Fault { return Fault{kind: kindThrottle} }

// Errcode answers HTTP 200 with the oapi-shaped {"errcode":code,"errmsg":msg}
// on any path (with "request_id" on topapi paths). Use [Gateway88] for the
// errcode 88 wrapper.
func Errcode(code int, msg string) Fault { return Fault{kind: kindErrcode, code: code, msg: msg} }

// Gateway88 answers HTTP 200 with the topapi gateway wrapper
// {"errcode":88,"sub_code":"<sub>","sub_msg":...,"errmsg":"ding talk error[...]","request_id":...}
// on any path.
func Gateway88(sub int) Fault { return Fault{kind: kindGateway88, code: sub} }

// QPSLimitAPI90002 answers with errcode 88 and sub_code "90002" (DingTalk's
// global per-API limit); its errmsg says "处罚将在 YYYY-MM-DD HH:MM:SS 结束"
// with end in China time (UTC+8), as DingTalk's does.
func QPSLimitAPI90002(end time.Time) Fault { return Fault{kind: kindQPS90002, end: end} }

// APIError answers on any path with the api shape: HTTP status and
// {"code":code,"message":msg,"requestid":...}.
func APIError(status int, code, msg string) Fault {
	return Fault{kind: kindAPIError, code: status, apiCode: code, msg: msg}
}

// Status answers with that HTTP status and a text/html gateway page, such as
// the tengine error page DingTalk's edge returns.
func Status(code int) Fault { return Fault{kind: kindStatus, code: code} }

// TooMany answers 429 {"code":"system.busy",...}.
func TooMany() Fault { return Fault{kind: kindTooMany} }

// TokenInvalid answers with the path's token-invalid error, as if the token
// had been revoked, without revoking it: topapi 88 + sub_code "40014", legacy
// oapi 40014, api 400 InvalidAuthentication, /robot/send 300005.
func TokenInvalid() Fault { return Fault{kind: kindTokenInvalid} }

// ResetBeforeExec reads the whole request, then closes the connection without
// answering. The request is not executed.
func ResetBeforeExec() Fault { return Fault{kind: kindResetBefore} }

// ResetAfterExec executes the request (it counts as an execution), then closes
// the connection without answering: "sent but response lost".
func ResetAfterExec() Fault { return Fault{kind: kindResetAfter} }

// Hang blocks until the client goes away or the server is closed, then closes
// the connection without answering.
func Hang() Fault { return Fault{kind: kindHang} }

// Latency waits d (or until the client goes away), then answers normally. It
// uses real time, not [Options.Now].
func Latency(d time.Duration) Fault { return Fault{kind: kindLatency, d: d} }

// IPBanHTML answers 403 with the text/html page DingTalk shows an egress IP
// over its limit.
func IPBanHTML() Fault { return Fault{kind: kindIPBanHTML} }

// IPBanJSON answers HTTP 200 with the IP-ban JSON
// {"status":1111,"wait":wait,"source":"x5","punish":"deny","uuid":"..."}.
func IPBanJSON(wait int) Fault { return Fault{kind: kindIPBanJSON, code: wait} }

// OK answers normally.
func OK() Fault { return Fault{} }

// Body answers with exactly that HTTP status, Content-Type (none if
// contentType is "") and body, with a Content-Length. With a 2xx status it
// first executes the request, as [ResetAfterExec] does: the work was done and
// only the answer is bad, so a client that retries a send on it makes a
// duplicate. With any other status it does not, as with [Status]. [ParseChaos]
// names three 200s: "non-json" (a text/html page), "truncated-json"
// ({"errcode":0,"errm) and "errcode-string" ({"errcode":"-1","errmsg":"系统繁忙"}).
func Body(status int, contentType, body string) Fault {
	return Fault{kind: kindBody, code: status, apiCode: contentType, msg: body}
}

// Huge executes the request, as [ResetAfterExec] does, then answers 200
// application/json with the valid success body
// {"errcode":0,"errmsg":"ok","result":"xxx…"} of exactly n bytes and a
// Content-Length, streamed without holding it in memory. It panics if n is
// less than 39, the length with an empty result.
func Huge(n int64) Fault {
	if n < hugeMin {
		panic(fmt.Sprintf("dingtalktest: Huge(%d): want at least %d bytes", n, hugeMin))
	}
	return Fault{kind: kindHuge, size: n}
}

// BadGzip executes the request, as [ResetAfterExec] does, then answers 200
// application/json with Content-Encoding: gzip, whatever the request accepts,
// and a body that is a valid gzip header followed by corrupt deflate data.
func BadGzip() Fault { return Fault{kind: kindBadGzip} }

// CloseMidBody executes the request, as [ResetAfterExec] does, then sends 200
// application/json with a Content-Length of 2000 but only the first 100 bytes
// of a JSON body, and closes the connection: the client reads the 100 bytes,
// then gets io.ErrUnexpectedEOF. Over HTTP/2 it resets the stream instead.
func CloseMidBody() Fault { return Fault{kind: kindCloseMidBody} }

// EndlessChunked executes the request, as [ResetAfterExec] does, then answers
// 200 application/json with a chunked body that starts
// {"errcode":0,"errmsg":"ok","result":[ and goes on with "x", elements, each
// chunk flushed, as fast as the client reads. The body never ends: when the
// client goes away or the server is closed, the connection is aborted.
func EndlessChunked() Fault { return Fault{kind: kindEndlessChunked} }

// Informational sends n 103 Early Hints, each with a Link header, then answers
// normally, executing the request as [OK] does. A negative n counts as 0.
func Informational(n int) Fault { return Fault{kind: kindInformational, code: max(n, 0)} }

// WithRetryAfter returns f with a Retry-After header of d, in whole seconds
// rounded up, on its answer. DingTalk is not known to send one.
func (f Fault) WithRetryAfter(d time.Duration) Fault {
	f.retryAfter = d
	return f
}

// String names f as [ParseChaos] spells it where it can ("system-busy",
// "latency:50ms", "status:503", "non-json"), and as "name:args" otherwise
// ("body:<status>:<type>:<quoted body>" for other Bodies), with
// "+retry-after:<d>" appended when set.
func (f Fault) String() string {
	var s string
	switch f.kind {
	case kindOK:
		s = "ok"
	case kindSystemBusy:
		s = "system-busy"
	case kindThrottle:
		s = "throttle"
	case kindErrcode:
		s = fmt.Sprintf("errcode:%d:%s", f.code, f.msg)
	case kindGateway88:
		s = "gateway88:" + strconv.Itoa(f.code)
	case kindQPS90002:
		s = "qps-limit-90002:" + f.end.In(chinaTime).Format(time.DateTime)
	case kindAPIError:
		s = fmt.Sprintf("api-error:%d:%s", f.code, f.apiCode)
	case kindStatus:
		s = "status:" + strconv.Itoa(f.code)
	case kindTooMany:
		s = "too-many"
	case kindTokenInvalid:
		s = "token-invalid"
	case kindResetBefore:
		s = "reset-before"
	case kindResetAfter:
		s = "reset-after"
	case kindHang:
		s = "hang"
	case kindLatency:
		s = "latency:" + f.d.String()
	case kindIPBanHTML:
		s = "ip-ban-html"
	case kindIPBanJSON:
		s = "ip-ban-json"
		if f.code != defaultIPBanWait {
			s += ":" + strconv.Itoa(f.code)
		}
	case kindBody:
		s = bodyName(f)
	case kindHuge:
		s = "huge:" + strconv.FormatInt(f.size, 10)
	case kindBadGzip:
		s = "bad-gzip"
	case kindCloseMidBody:
		s = "close-mid-body"
	case kindEndlessChunked:
		s = "endless-chunked"
	case kindInformational:
		s = "informational:" + strconv.Itoa(f.code)
	default:
		s = fmt.Sprintf("fault(%d)", int(f.kind))
	}
	if f.retryAfter > 0 {
		s += "+retry-after:" + f.retryAfter.String()
	}
	return s
}

// defaultIPBanWait is the "wait" of the IP-ban JSON in DingTalk's doc sample.
const defaultIPBanWait = 5

// chinaTime is DingTalk's local time, in which 90002 errmsgs give the penalty end.
var chinaTime = time.FixedZone("CST", 8*60*60)

// Bodies of the [Body] faults ParseChaos names.
const (
	nonJSONBody       = "<html><head><title>DingTalk</title></head><body>oops</body></html>\n"
	truncatedJSONBody = `{"errcode":0,"errm`
	errcodeStringBody = `{"errcode":"-1","errmsg":"系统繁忙"}`
)

// namedBodies are the [Body] faults ParseChaos names, by name.
var namedBodies = map[string]Fault{
	"non-json":       Body(200, "text/html", nonJSONBody),
	"truncated-json": Body(200, contentTypeJSON, truncatedJSONBody),
	"errcode-string": Body(200, contentTypeJSON, errcodeStringBody),
}

// bodyName is the ParseChaos name of the Body f, or
// "body:<status>:<type>:<quoted body>" if it has none.
func bodyName(f Fault) string {
	for name, g := range namedBodies {
		if f.code == g.code && f.apiCode == g.apiCode && f.msg == g.msg {
			return name
		}
	}
	return fmt.Sprintf("body:%d:%s:%q", f.code, f.apiCode, f.msg)
}
