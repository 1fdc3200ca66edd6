package dingtalktest

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Answers in the shape of each DingTalk host. answerError and answerOK pick
// the shape from the request's path; the writers below them (apiError,
// oapiError, gateway88) write one shape on any path, for faults that force it.

// Values the fake needs that package dingtalk does not define.
const (
	// errcodeNotFound is oapi's errcode for an unknown path (HTTP 200).
	errcodeNotFound = 404
	// codeServiceUnavailable is api's code for 503 "服务不可用，系统过载".
	codeServiceUnavailable = "ServiceUnavailable"
	// codeNotFound is the fake's api code for an unknown path (HTTP 404).
	codeNotFound = "NotFound"
)

// Messages, as DingTalk words them where known.
const (
	msgOK            = "ok"
	msgSystemBusy    = "系统繁忙"
	msgTokenInvalid  = "不合法的access_token"
	msgTokenBlank    = "access_token is blank"
	msgTokenMissing  = "缺少参数access_token"
	msgThrottle      = "您的企业应用调用钉钉开放平台当前接口的所有请求都被暂时禁用了"
	msgNotFound      = "请求的URI地址不存在"
	msgRobotNoToken  = "token is not exist"
	msgBadAppKey     = "不合法的appKey或appSecret"
	msgNoAppKey      = "缺少参数 corpid or appkey"
	msgInvalidClient = "无效的clientId或者clientSecret"
	msgMissingHeader = "缺少参数：" + dingtalk.HeaderAccessToken
	msgUnavailable   = "服务不可用，系统过载"
	msgTooMany       = "system busy, request too frequest"
)

type shape int

const (
	shapeLegacy shape = iota // oapi, top-level errcodes
	shapeTopAPI              // oapi /topapi/, 88 gateway wrapper
	shapeAPI                 // api.dingtalk.com: HTTP status + code
)

func shapeOf(path string) shape {
	switch {
	case strings.HasPrefix(path, "/v1.0/"), strings.HasPrefix(path, "/v2.0/"):
		return shapeAPI
	case strings.HasPrefix(path, "/topapi/"):
		return shapeTopAPI
	default:
		return shapeLegacy
	}
}

// A hostError is one error as each DingTalk host words it; answerError picks
// the wording for the request's path.
type hostError struct {
	api    apiErr  // paths under /v1.0/ and /v2.0/
	topapi oapiErr // paths under /topapi/
	legacy oapiErr // every other path
}

// apiErr is an api error: an HTTP status and {"code","message","requestid"}.
type apiErr struct {
	status int
	code   string
	msg    string
}

// oapiErr is an oapi error: HTTP 200 {"errcode","errmsg"} (with a request_id
// on topapi paths) or, when gateway is set, the errcode 88 wrapper with
// errcode as its sub_code.
type oapiErr struct {
	errcode int
	msg     string
	gateway bool
}

// The errors whose wording depends on the host.
var (
	errTokenMissing = hostError{
		api:    apiErr{http.StatusBadRequest, dingtalk.CodeMissingToken, msgMissingHeader},
		topapi: oapiErr{dingtalk.ErrcodeTokenBlank, msgTokenBlank, true},
		legacy: oapiErr{dingtalk.ErrcodeTokenMissing, msgTokenMissing, false},
	}
	errTokenInvalid = hostError{
		api:    apiErr{http.StatusBadRequest, dingtalk.CodeInvalidAuthentication, msgTokenInvalid},
		topapi: oapiErr{dingtalk.ErrcodeTokenInvalid, msgTokenInvalid, true},
		legacy: oapiErr{dingtalk.ErrcodeTokenInvalid, msgTokenInvalid, false},
	}
	errThrottle = hostError{
		api:    apiErr{http.StatusForbidden, dingtalk.CodeQPSLimitAppAPI, msgThrottle},
		topapi: oapiErr{dingtalk.ErrcodeQPSAppAPI, msgThrottle, true},
		legacy: oapiErr{dingtalk.ErrcodeQPSAppAPI, msgThrottle, false},
	}
	errSystemBusy = hostError{
		api:    apiErr{http.StatusServiceUnavailable, codeServiceUnavailable, msgUnavailable},
		topapi: oapiErr{dingtalk.ErrcodeSystemBusy, msgSystemBusy, false},
		legacy: oapiErr{dingtalk.ErrcodeSystemBusy, msgSystemBusy, false},
	}
	errNotFound = hostError{
		api:    apiErr{http.StatusNotFound, codeNotFound, msgNotFound},
		topapi: oapiErr{errcodeNotFound, msgNotFound, false},
		legacy: oapiErr{errcodeNotFound, msgNotFound, false},
	}
)

// answerError answers e in the shape of path's host.
func (s *Server) answerError(w http.ResponseWriter, path string, e hostError) {
	var o oapiErr
	switch shapeOf(path) {
	case shapeAPI:
		s.apiError(w, e.api.status, e.api.code, e.api.msg)
		return
	case shapeTopAPI:
		o = e.topapi
	default:
		o = e.legacy
	}
	if o.gateway {
		s.gateway88(w, o.errcode, o.msg)
	} else {
		s.oapiError(w, path, o.errcode, o.msg)
	}
}

// answerOK answers a success in the shape of path's host: on api paths fields
// are the body and the request ID a header; on oapi paths errcode 0 and
// errmsg "ok" go beside fields, with a request_id on topapi paths.
func (s *Server) answerOK(w http.ResponseWriter, path string, fields map[string]any) {
	if shapeOf(path) == shapeAPI {
		w.Header().Set("x-acs-request-id", s.apiRequestID())
		writeJSON(w, http.StatusOK, fields)
		return
	}
	m := map[string]any{"errcode": dingtalk.ErrcodeOK, "errmsg": msgOK}
	for k, v := range fields {
		m[k] = v
	}
	if shapeOf(path) == shapeTopAPI {
		m["request_id"] = s.topRequestID()
	}
	writeJSON(w, http.StatusOK, m)
}

// apiError answers in the api shape on any path: HTTP status and
// {"code":code,"message":msg,"requestid":...}.
func (s *Server) apiError(w http.ResponseWriter, status int, code, msg string) {
	id := s.apiRequestID()
	w.Header().Set("x-acs-request-id", id)
	writeJSON(w, status, map[string]any{"code": code, "message": msg, "requestid": id})
}

// oapiError answers HTTP 200 {"errcode":code,"errmsg":msg}, with a request_id
// on topapi paths.
func (s *Server) oapiError(w http.ResponseWriter, path string, code int, msg string) {
	m := map[string]any{"errcode": code, "errmsg": msg}
	if shapeOf(path) == shapeTopAPI {
		m["request_id"] = s.topRequestID()
	}
	writeJSON(w, http.StatusOK, m)
}

// gateway88 answers the topapi gateway wrapper; sub_code is a string.
func (s *Server) gateway88(w http.ResponseWriter, sub int, msg string) {
	writeJSON(w, http.StatusOK, map[string]any{
		"errcode":    dingtalk.ErrcodeGateway,
		"sub_code":   strconv.Itoa(sub),
		"sub_msg":    msg,
		"errmsg":     fmt.Sprintf("ding talk error[subcode=%d,submsg=%s]", sub, msg),
		"request_id": s.topRequestID(),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("dingtalktest: marshal %T: %v", v, err))
	}
	h := w.Header()
	h.Set("Content-Type", contentTypeJSON)
	h.Set("Server", serverName)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeHTML(w http.ResponseWriter, status int, page string) {
	h := w.Header()
	h.Set("Content-Type", "text/html")
	h.Set("Server", serverName)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, page)
}

// IDs.

func (s *Server) randomHex(n int) string {
	b := make([]byte, n)
	s.idMu.Lock()
	for i := range b {
		b[i] = byte(s.idRNG.Uint32())
	}
	s.idMu.Unlock()
	return hex.EncodeToString(b)
}

// topRequestID looks like topapi's "4jzllmte0wau".
func (s *Server) topRequestID() string {
	s.idMu.Lock()
	n := s.idRNG.Uint64N(1 << 62)
	s.idMu.Unlock()
	id := strconv.FormatUint(n, 36)
	if len(id) > 13 {
		id = id[:13]
	}
	return id
}

// apiRequestID looks like api's "01A08FE7-CD6B-79BB-8B2E-35D8768AD457".
func (s *Server) apiRequestID() string {
	h := strings.ToUpper(s.randomHex(16))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// quotaSpent answers 90020 as DingTalk does past the organisation's monthly
// quota (its help page's wording): oapi HTTP 200 errcode 90020, api 403
// Forbidden.AccessDenied.ApiCountLimitForOrg.
func (s *Server) quotaSpent(w http.ResponseWriter, path string, used, limit int) {
	msg := fmt.Sprintf("您的企业本月api调用量已超过限制,调用量:%d次,额度:%d次,请登录开发者后台-资源管理-查看用量明细", used, limit)
	if shapeOf(path) == shapeAPI {
		s.apiError(w, http.StatusForbidden, dingtalk.CodeMonthlyQuota, msg)
		return
	}
	s.oapiError(w, path, dingtalk.ErrcodeMonthlyQuota, msg)
}
