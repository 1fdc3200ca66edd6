package dingtalk

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Class is what an answer from DingTalk means to a retrying proxy.
type Class uint8

const (
	// Success: the call did what was asked.
	Success Class = iota
	// Business: a definite answer that a retry cannot change (no permission,
	// bad parameter, no such user, monthly quota, unknown path ...).
	Business
	// Throttled: rejected unexecuted by a rate limit; safe to repeat after
	// DingTalk's penalty.
	Throttled
	// TokenInvalid: the access token was rejected; a fresh one may succeed.
	TokenInvalid
	// ServerError: DingTalk was busy or failed ("system busy", 5xx); the call
	// may or may not have executed.
	ServerError
	// IPBan: the egress IP is banned for minutes; nothing was executed.
	IPBan
)

var classNames = [...]string{"success", "business_error", "throttled", "token_invalid", "server_error", "ip_ban"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Result is the classification of one answer.
type Result struct {
	Class Class
	// Reason refines Class in a fixed vocabulary fit for a metric label:
	// success, business_error, quota, rate_limited, http_429, token_invalid,
	// system_busy, http_5xx, ip_ban, rate_limited_minute, robot_throttled,
	// unknown_api.
	Reason string
	// Errcode is the oapi errcode, or for an 88 the sub_code when numeric.
	// Zero when the answer had none.
	Errcode int
	// Code is the api error code, empty when none.
	Code string
	// PenaltyEnd is when a 90002 throttle ends, if its errmsg said so.
	PenaltyEnd time.Time
	// Wait is the ban length read from an IP-ban answer, zero if unreadable.
	Wait time.Duration
	// QuotaUsed and QuotaLimit are the organisation's calls this month and
	// its monthly quota, read from a 90020 (ApiCountLimitForOrg) message;
	// -1 when it did not say.
	QuotaUsed, QuotaLimit int64
	// RequestID is DingTalk's request_id / requestid from an answer that is
	// not a success, for logs (empty for successes: it would cost an
	// allocation on every call). Only [A-Za-z0-9._-], at most 64 bytes.
	RequestID string
}

// Reasons, the values Result.Reason takes.
const (
	ReasonSuccess      = "success"
	ReasonBusiness     = "business_error"
	ReasonQuota        = "quota"
	ReasonRateLimited  = "rate_limited"
	ReasonHTTP429      = "http_429"
	ReasonTokenInvalid = "token_invalid"
	ReasonSystemBusy   = "system_busy"
	ReasonHTTP5xx      = "http_5xx"
	ReasonIPBan        = "ip_ban"
	// ReasonMinuteLimit: a per-minute limit (90006, 90005, api QpmLimit*).
	// Not retried (a 1 s wait is pointless); pacing pauses the path until
	// the minute turns.
	ReasonMinuteLimit = "rate_limited_minute"
	// ReasonRobotThrottled: a custom robot past its 20 messages a minute,
	// blocked for 10 minutes (130101, 410100, 660026). Not retried.
	ReasonRobotThrottled = "robot_throttled"
	// ReasonUnknownAPI: DingTalk's gateway knows no such API or method
	// (errcode 404 "请求的URI地址不存在", 22 "Invalid method"; HTTP 404 or
	// 405): refused before anything was executed or metered. Not retried.
	ReasonUnknownAPI = "unknown_api"
)

// Executed says whether DingTalk may have executed (and metered) the call
// an answer is to: false for a token it refused and an API it does not
// know, which its gateway answers before any API runs.
func (r Result) Executed() bool {
	return r.Class != TokenInvalid && r.Reason != ReasonUnknownAPI
}

// RefusedForNow says DingTalk refused the call unexecuted, and the same call
// may pass later: a rate limit (per second, per minute, a custom robot's
// block), the IP ban, or an access token it rejected. A kept send so
// answered waits for another turn; any other answer is final for it.
func (r Result) RefusedForNow() bool {
	switch r.Class {
	case Throttled, IPBan, TokenInvalid:
		return true
	}
	return r.Reason == ReasonMinuteLimit || r.Reason == ReasonRobotThrottled
}

// Classify reads an answer: its HTTP status, Content-Type and (a prefix of)
// its decoded body. Bodies that are not JSON are classified by status alone,
// except an HTML page on a 200 or 403, which is DingTalk's IP ban
// (a 429 is a throttle whatever its body).
func Classify(status int, contentType string, body []byte) Result {
	var f fields
	r := classify(status, contentType, body, &f)
	if r.Class != Success && len(f.requestID) > 0 {
		r.RequestID = safeID(f.requestID)
	}
	return r
}

// safeID keeps a request id fit for a log line: an id is short and plain, so
// anything else is cut.
func safeID(b []byte) string {
	n := 0
	for n < len(b) && n < 64 {
		c := b[n]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			break
		}
		n++
	}
	return string(b[:n])
}

func classify(status int, contentType string, body []byte, f *fields) Result {
	isJSON := scanTop(body, f)
	if !isJSON {
		if isHTML(contentType, body) && (status == 200 || status == 403) {
			return Result{Class: IPBan, Reason: ReasonIPBan}
		}
		return byStatus(status)
	}
	if f.hasStatus {
		if n, ok := atoi(f.status); ok && n == IPBanStatus {
			r := Result{Class: IPBan, Reason: ReasonIPBan}
			// The unit of "wait" is undocumented; its sample value 5 matches
			// the documented 5-minute ban, so it is read as minutes.
			if w, ok := atoi(f.wait); ok && w > 0 && w <= 24*60 {
				r.Wait = time.Duration(w) * time.Minute
			}
			return r
		}
	}
	if f.hasErrcode {
		if n, ok := atoi(f.errcode); ok {
			r := classifyErrcode(n, *f)
			if r.Class == Success && status >= 300 {
				return byStatus(status)
			}
			if status == 429 && r.Class == Business {
				return Result{Class: Throttled, Reason: ReasonHTTP429, Errcode: r.Errcode}
			}
			return r
		}
	}
	if f.hasCode && len(f.code) > 0 && f.code[0] != '-' && (f.code[0] < '0' || f.code[0] > '9') {
		r := classifyCode(status, string(f.code))
		if r.Reason == ReasonQuota {
			r.QuotaUsed, r.QuotaLimit = quotaFigures(f.message)
		}
		return r
	}
	return byStatus(status)
}

func classifyErrcode(n int, f fields) Result {
	if n == ErrcodeGateway {
		sub, ok := atoi(f.subCode)
		if !ok {
			sub = subcodeFromErrmsg(f.errmsg)
		}
		switch {
		case isThrottleErrcode(sub):
			return throttled(sub, f.errmsg)
		case isTokenErrcode(sub):
			return Result{Class: TokenInvalid, Reason: ReasonTokenInvalid, Errcode: sub}
		}
		return Result{Class: Business, Reason: ReasonBusiness, Errcode: n}
	}
	switch {
	case n == ErrcodeOK:
		return Result{Class: Success, Reason: ReasonSuccess}
	case n == ErrcodeSystemBusy:
		return Result{Class: ServerError, Reason: ReasonSystemBusy, Errcode: n}
	case isThrottleErrcode(n):
		return throttled(n, f.errmsg)
	case isTokenErrcode(n):
		return Result{Class: TokenInvalid, Reason: ReasonTokenInvalid, Errcode: n}
	case n == ErrcodeMonthlyQuota:
		used, limit := quotaFigures(f.errmsg)
		return Result{Class: Business, Reason: ReasonQuota, Errcode: n, QuotaUsed: used, QuotaLimit: limit}
	case n == ErrcodeQPMAppAPI || n == ErrcodeQPMCorpAPI:
		return Result{Class: Business, Reason: ReasonMinuteLimit, Errcode: n}
	case n == ErrcodeRobotTooFast || n == ErrcodeRobotTooFastDoc || n == ErrcodeRobotTooMany:
		return Result{Class: Business, Reason: ReasonRobotThrottled, Errcode: n}
	case n == ErrcodeUnknownPath || n == ErrcodeInvalidMethod:
		return Result{Class: Business, Reason: ReasonUnknownAPI, Errcode: n}
	}
	return Result{Class: Business, Reason: ReasonBusiness, Errcode: n}
}

func throttled(code int, errmsg []byte) Result {
	r := Result{Class: Throttled, Reason: ReasonRateLimited, Errcode: code}
	if code == ErrcodeQPSAPI {
		r.PenaltyEnd = penaltyEnd(errmsg)
	}
	return r
}

func classifyCode(status int, code string) Result {
	switch {
	case strings.HasPrefix(code, CodeQPSLimitPrefix):
		return Result{Class: Throttled, Reason: ReasonRateLimited, Code: code}
	case code == CodeSystemBusy || code == CodeSystemBusyAlt:
		return Result{Class: Throttled, Reason: ReasonHTTP429, Code: code}
	case code == CodeInvalidAuthentication:
		return Result{Class: TokenInvalid, Reason: ReasonTokenInvalid, Code: code}
	case code == CodeMonthlyQuota:
		return Result{Class: Business, Reason: ReasonQuota, Code: code}
	case strings.HasPrefix(code, CodeQPMLimitPrefix):
		return Result{Class: Business, Reason: ReasonMinuteLimit, Code: code}
	}
	r := byStatus(status)
	r.Code = code
	if r.Class == Success || r.Reason == ReasonUnknownAPI && !unknownAPICode(code) {
		// An error code on a 2xx is a business answer; so is one on a 404
		// (an API that exists answering "no such user", say): only the
		// gateway's own 404 says the API is unknown.
		r.Class, r.Reason = Business, ReasonBusiness
	}
	return r
}

// byStatus classifies an answer that carries no DingTalk error of its own.
func byStatus(status int) Result {
	switch {
	case status == 429:
		return Result{Class: Throttled, Reason: ReasonHTTP429}
	case status == 401:
		return Result{Class: TokenInvalid, Reason: ReasonTokenInvalid}
	case status == 500 || status == 502 || status == 503 || status == 504:
		return Result{Class: ServerError, Reason: ReasonHTTP5xx}
	case status >= 200 && status < 300:
		return Result{Class: Success, Reason: ReasonSuccess}
	case status == 404 || status == 405:
		return Result{Class: Business, Reason: ReasonUnknownAPI}
	}
	return Result{Class: Business, Reason: ReasonBusiness}
}

// unknownAPICode reports whether an api 404's code is the gateway's "no such
// API": NotFound, or the Alibaba Cloud gateway's InvalidAction.NotFound.
func unknownAPICode(code string) bool {
	return code == CodeNotFound || code == CodeInvalidActionNotFound
}

func isThrottleErrcode(n int) bool {
	return n == ErrcodeQPSAppAPI || n == ErrcodeQPSAPI || n == ErrcodeQPSSuiteAPI
}

func isTokenErrcode(n int) bool {
	return n == ErrcodeTokenInvalid || n == ErrcodeTokenExpired || n == ErrcodeSecretOrToken
}

// subcodeFromErrmsg reads "subcode=90018" from an 88's errmsg, for answers
// that carry it only there.
func subcodeFromErrmsg(msg []byte) int {
	i := bytes.Index(msg, []byte("subcode="))
	if i < 0 {
		return 0
	}
	j := i + len("subcode=")
	k := j
	for k < len(msg) && msg[k] >= '0' && msg[k] <= '9' {
		k++
	}
	n, _ := atoi(msg[j:k])
	return n
}

// chinaTime is the zone of the times in DingTalk's messages (UTC+8, no DST).
var chinaTime = time.FixedZone("CST", 8*60*60)

// penaltyEnd reads the end of a 90002 penalty: "处罚将在 2018-12-09 15:01:11 结束".
func penaltyEnd(msg []byte) time.Time {
	const marker = "处罚将在"
	i := bytes.Index(msg, []byte(marker))
	if i < 0 {
		return time.Time{}
	}
	rest := bytes.TrimLeft(msg[i+len(marker):], " ")
	const layout = "2006-01-02 15:04:05"
	if len(rest) < len(layout) {
		return time.Time{}
	}
	t, err := time.ParseInLocation(layout, string(rest[:len(layout)]), chinaTime)
	if err != nil {
		return time.Time{}
	}
	return t
}

// quotaFigures reads the usage and the quota from a 90020 message, as
// DingTalk words it: "您的企业本月api调用量已超过限制,调用量:10001次,额度:10000次,..."
// (full-width colons too); -1 for a figure it does not find. The message
// is a JSON string's raw bytes: an escaped one is read unescaped first.
func quotaFigures(raw []byte) (used, limit int64) {
	msg := raw
	if bytes.IndexByte(raw, '\\') >= 0 {
		var s string
		if json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s) == nil {
			msg = []byte(s)
		}
	}
	return figureAfter(msg, "调用量"), figureAfter(msg, "额度")
}

// figureAfter is the number that follows label (and a colon) in msg, at
// the first place where one does; -1 if none.
func figureAfter(msg []byte, label string) int64 {
	for {
		i := bytes.Index(msg, []byte(label))
		if i < 0 {
			return -1
		}
		msg = msg[i+len(label):]
		rest := msg
		for _, sep := range []string{":", "：", " "} {
			rest = bytes.TrimPrefix(rest, []byte(sep))
		}
		n, digits := int64(0), 0
		for _, c := range rest {
			if c < '0' || c > '9' || digits >= 15 {
				break
			}
			n = n*10 + int64(c-'0')
			digits++
		}
		if digits > 0 {
			return n
		}
	}
}

func isHTML(contentType string, body []byte) bool {
	if strings.HasPrefix(contentType, "text/html") {
		return true
	}
	b := bytes.TrimLeft(body, " \t\r\n")
	return len(b) > 0 && b[0] == '<'
}
