package dingtalktest

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// apply answers r as f says.
func (s *Server) apply(w http.ResponseWriter, r *http.Request, body []byte, f Fault) {
	if f.retryAfter > 0 {
		secs := int64((f.retryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	path := r.URL.Path
	switch f.kind {
	case kindOK:
		s.normal(w, r, body)
	case kindLatency:
		t := time.NewTimer(f.d)
		defer t.Stop()
		select {
		case <-t.C:
			s.normal(w, r, body)
		case <-r.Context().Done():
		case <-s.closing:
			abort(w)
		}
	case kindHang:
		s.mu.Lock()
		hook := s.testHookHang
		s.mu.Unlock()
		if hook != nil {
			hook()
		}
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		abort(w)
	case kindResetBefore:
		abort(w)
	case kindResetAfter:
		s.executeDiscarded(r, body)
		abort(w)
	case kindSystemBusy:
		s.answerError(w, path, errSystemBusy)
	case kindThrottle:
		s.answerError(w, path, errThrottle)
	case kindTokenInvalid:
		s.tokenInvalid(w, path)
	case kindErrcode:
		s.oapiError(w, path, f.code, f.msg)
	case kindGateway88:
		s.gateway88(w, f.code, subMsg(f.code))
	case kindQPS90002:
		s.gateway88(w, dingtalk.ErrcodeQPSAPI, qps90002Msg(path, f.end))
	case kindAPIError:
		s.apiError(w, f.code, f.apiCode, f.msg)
	case kindTooMany:
		s.apiError(w, http.StatusTooManyRequests, dingtalk.CodeSystemBusy, msgTooMany)
	case kindStatus:
		writeHTML(w, f.code, gatewayPage(f.code))
	case kindIPBanHTML:
		writeHTML(w, http.StatusForbidden, ipBanPage)
	case kindIPBanJSON:
		writeJSON(w, http.StatusOK, map[string]any{
			"status": dingtalk.IPBanStatus,
			"wait":   f.code,
			"source": "x5",
			"punish": "deny",
			"uuid":   s.apiRequestID(),
		})
	case kindBody:
		if f.code >= 200 && f.code < 300 {
			s.executeDiscarded(r, body)
		}
		writeBody(w, f.code, f.apiCode, f.msg)
	case kindHuge:
		s.executeDiscarded(r, body)
		writeHuge(w, f.size)
	case kindBadGzip:
		s.executeDiscarded(r, body)
		w.Header().Set("Content-Encoding", "gzip")
		writeBody(w, http.StatusOK, contentTypeJSON, badGzipBody)
	case kindCloseMidBody:
		s.executeDiscarded(r, body)
		closeMidBody(w)
	case kindEndlessChunked:
		s.executeDiscarded(r, body)
		s.endless(w, r)
	case kindInformational:
		s.informational(w, r, body, f.code)
	default:
		panic(fmt.Sprintf("dingtalktest: unknown fault %v", f))
	}
}

// subMsg is the sub_msg of a Gateway88 fault with sub code sub.
func subMsg(sub int) string {
	switch sub {
	case dingtalk.ErrcodeTokenInvalid:
		return msgTokenInvalid
	case dingtalk.ErrcodeTokenBlank:
		return msgTokenBlank
	case dingtalk.ErrcodeQPSAppAPI, dingtalk.ErrcodeQPSAPI:
		return msgThrottle
	case dingtalk.ErrcodeSystemBusy:
		return msgSystemBusy
	default:
		return "error"
	}
}

// qps90002Msg words DingTalk's global per-API limit, with the penalty end in
// China time.
func qps90002Msg(path string, end time.Time) string {
	api := strings.ReplaceAll(strings.Trim(strings.TrimPrefix(path, "/topapi"), "/"), "/", ".")
	from := end.Add(-time.Second).In(chinaTime).Format(time.DateTime)
	return fmt.Sprintf("您的服务器调用钉钉开放平台当前接口的所有请求都被暂时禁用了, apiPath(dingtalk.oapi.%s), "+
		"从 %s 到 %s 请求总次数超过了 100 次, 处罚将在 %s 结束.",
		api, from, from, end.In(chinaTime).Format(time.DateTime))
}

func gatewayPage(code int) string {
	title := strconv.Itoa(code) + " " + http.StatusText(code)
	return "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>" + title +
		"</h1></center>\r\n Powered by DingTalk/1.0.0<hr><center>tengine</center>\r\n</body>\r\n</html>\r\n"
}

const ipBanPage = "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>访问被拒绝</title></head>\n" +
	"<body>\n<h1>访问被拒绝</h1>\n<p>您的IP访问频率过高，已被暂时禁止访问，请5分钟后再试。</p>\n" +
	"<hr><center>tengine</center>\n</body>\n</html>\n"

// abort closes the connection without an answer: hijack and close with
// SO_LINGER 0 so the client sees a reset, or abort the handler if the
// connection cannot be hijacked (HTTP/2).
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
