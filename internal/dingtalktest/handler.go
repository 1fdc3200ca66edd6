package dingtalktest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Values the fake needs that package dingtalk does not define.
const (
	// errcodeNotFound is oapi's errcode for an unknown path (HTTP 200).
	errcodeNotFound = 404
	// codeServiceUnavailable is api's code for 503 "服务不可用，系统过载".
	codeServiceUnavailable = "ServiceUnavailable"
	// codeNotFound is the fake's api code for an unknown path (HTTP 404).
	codeNotFound = "NotFound"
	// maxSeenBodies bounds duplicate detection memory per path.
	maxSeenBodies = 1 << 20
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

func isTokenPath(path string) bool {
	return path == dingtalk.PathGetToken || path == dingtalk.PathOAuth2Token
}

// serveHTTP runs the pipeline: secret check, token endpoints, script, QPS
// limit, chaos, then auth and the handler (in normal).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		abort(w)
		return
	}
	defer s.inflight.Done()

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return // the client went away mid-body
	}
	if len(body) > maxBody {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	path := r.URL.Path
	token := isTokenPath(path)
	leak := !token && s.containsSecret(r, body)
	now := s.opts.Now()

	s.mu.Lock()
	s.c.total++
	s.c.hits[path]++
	s.recordLocked(r, body)
	if leak {
		s.c.leaks++
	}
	if token {
		s.c.tokenFetches++
	}
	f, have := s.popScriptLocked(path)
	if !have && !token && s.qpsLimit > 0 && s.qpsRejectLocked(path, now) {
		s.c.throttled++
		f, have = Throttle(), true
	}
	if !have && s.chaos.appliesTo(path) {
		f, have = s.chaos.pick(s.rng.Float64())
	}
	s.mu.Unlock()

	s.apply(w, r, body, f)
}

func (s *Server) recordLocked(r *http.Request, body []byte) {
	rs := s.c.requests[r.URL.Path]
	if len(rs) >= maxRecorded {
		rs = append(rs[:0:0], rs[len(rs)-maxRecorded+1:]...)
	}
	s.c.requests[r.URL.Path] = append(rs, Request{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
	})
}

func (s *Server) popScriptLocked(path string) (Fault, bool) {
	q := s.scripts[path]
	if len(q) == 0 {
		return Fault{}, false
	}
	f := q[0]
	if len(q) == 1 {
		delete(s.scripts, path)
	} else {
		s.scripts[path] = q[1:]
	}
	return f, true
}

func (s *Server) qpsRejectLocked(path string, now time.Time) bool {
	st := s.qps[path]
	if st == nil {
		st = &qpsWindow{}
		s.qps[path] = st
	}
	if now.Before(st.penalty) {
		return true
	}
	if sec := now.Unix(); sec != st.second {
		st.second, st.count = sec, 0
	}
	st.count++
	if st.count > s.qpsLimit {
		st.penalty = now.Add(dingtalk.ThrottlePenalty * time.Second)
		return true
	}
	return false
}

func (s *Server) containsSecret(r *http.Request, body []byte) bool {
	secret := s.opts.AppSecret
	has := func(v string) bool { return strings.Contains(v, secret) }
	if has(r.URL.Path) || has(r.URL.RawPath) || has(r.URL.RawQuery) || has(r.RequestURI) {
		return true
	}
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil && has(q) {
		return true
	}
	for k, vs := range r.Header {
		if has(k) {
			return true
		}
		for _, v := range vs {
			if has(v) {
				return true
			}
		}
	}
	if bytes.Contains(body, []byte(secret)) {
		return true
	}
	if b, err := url.QueryUnescape(string(body)); err == nil && has(b) {
		return true
	}
	return false
}

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
		if shapeOf(path) == shapeAPI {
			s.apiError(w, http.StatusServiceUnavailable, codeServiceUnavailable, msgUnavailable)
		} else {
			s.oapiError(w, path, dingtalk.ErrcodeSystemBusy, msgSystemBusy)
		}
	case kindThrottle:
		switch shapeOf(path) {
		case shapeAPI:
			s.apiError(w, http.StatusForbidden, dingtalk.CodeQPSLimitAppAPI, msgThrottle)
		case shapeTopAPI:
			s.gateway88(w, dingtalk.ErrcodeQPSAppAPI, msgThrottle)
		default:
			s.oapiError(w, path, dingtalk.ErrcodeQPSAppAPI, msgThrottle)
		}
	case kindErrcode:
		s.oapiError(w, path, f.code, f.msg)
	case kindGateway88:
		s.gateway88(w, f.code, subMsg(f.code))
	case kindQPS90002:
		s.gateway88(w, dingtalk.ErrcodeQPSAPI, qps90002Msg(path, f.end))
	case kindAPIError:
		s.apiError(w, f.code, f.apiCode, f.msg)
	case kindStatus:
		writeHTML(w, f.code, gatewayPage(f.code))
	case kindTooMany:
		s.apiError(w, http.StatusTooManyRequests, dingtalk.CodeSystemBusy, msgTooMany)
	case kindTokenInvalid:
		s.tokenInvalid(w, path)
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

// normal answers r as DingTalk would with no fault: token endpoints, the
// robot webhook, then auth and the path's handler.
func (s *Server) normal(w http.ResponseWriter, r *http.Request, body []byte) {
	path := r.URL.Path
	switch path {
	case dingtalk.PathGetToken:
		s.getToken(w, r)
		return
	case dingtalk.PathOAuth2Token:
		s.oauth2Token(w, body)
		return
	case dingtalk.PathRobotSend:
		s.robotSend(w, r, body)
		return
	}
	if !s.auth(w, r) {
		return
	}
	h, send := lookupRoute(path)
	if h == nil {
		if shapeOf(path) == shapeAPI {
			s.apiError(w, http.StatusNotFound, codeNotFound, msgNotFound)
		} else {
			s.oapiError(w, path, errcodeNotFound, msgNotFound)
		}
		return
	}
	h(s, w, r, body, func() { s.execute(path, body, send) })
}

// auth checks the app token in the path's placement and answers the error
// itself when it is missing or not valid.
func (s *Server) auth(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	var tok string
	if shapeOf(path) == shapeAPI {
		tok = r.Header.Get(dingtalk.HeaderAccessToken)
	} else {
		tok = r.URL.Query().Get(dingtalk.QueryAccessToken)
	}
	if tok == "" {
		switch shapeOf(path) {
		case shapeAPI:
			s.apiError(w, http.StatusBadRequest, dingtalk.CodeMissingToken, msgMissingHeader)
		case shapeTopAPI:
			s.gateway88(w, dingtalk.ErrcodeTokenBlank, msgTokenBlank)
		default:
			s.oapiError(w, path, dingtalk.ErrcodeTokenMissing, msgTokenMissing)
		}
		return false
	}
	if !s.validToken(tok) {
		s.tokenInvalid(w, path)
		return false
	}
	return true
}

func (s *Server) tokenInvalid(w http.ResponseWriter, path string) {
	if path == dingtalk.PathRobotSend {
		s.oapiError(w, path, dingtalk.ErrcodeRobotNoToken, msgRobotNoToken)
		return
	}
	switch shapeOf(path) {
	case shapeAPI:
		s.apiError(w, http.StatusBadRequest, dingtalk.CodeInvalidAuthentication, msgTokenInvalid)
	case shapeTopAPI:
		s.gateway88(w, dingtalk.ErrcodeTokenInvalid, msgTokenInvalid)
	default:
		s.oapiError(w, path, dingtalk.ErrcodeTokenInvalid, msgTokenInvalid)
	}
}

func (s *Server) validToken(tok string) bool {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && now.Before(exp)
}

// issueToken returns the current token and its remaining lifetime, or issues
// a new one when there is none or it has expired.
func (s *Server) issueToken() (string, time.Duration) {
	now := s.opts.Now()
	tok := s.randomHex(16)
	s.mu.Lock()
	defer s.mu.Unlock()
	if exp, ok := s.tokens[s.current]; ok && now.Before(exp) {
		return s.current, exp.Sub(now)
	}
	for t, exp := range s.tokens {
		if !now.Before(exp) {
			delete(s.tokens, t)
		}
	}
	s.tokens[tok] = now.Add(s.opts.TokenTTL)
	s.issued = append(s.issued, tok)
	s.current = tok
	return tok, s.opts.TokenTTL
}

// seconds rounds d up, so a token with half a second left is not reported as
// lasting 0 s (which clients read as "no lifetime given").
func seconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

func (s *Server) getToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	key, secret := q.Get("appkey"), q.Get("appsecret")
	if key == "" {
		s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadParameter, msgNoAppKey)
		return
	}
	if key != s.opts.AppKey || secret != s.opts.AppSecret {
		s.oapiError(w, r.URL.Path, dingtalk.ErrcodeBadAppKey, msgBadAppKey)
		return
	}
	tok, ttl := s.issueToken()
	writeJSON(w, http.StatusOK, map[string]any{
		"errcode":      dingtalk.ErrcodeOK,
		"errmsg":       msgOK,
		"access_token": tok,
		"expires_in":   seconds(ttl),
	})
}

func (s *Server) oauth2Token(w http.ResponseWriter, body []byte) {
	var req struct {
		AppKey    string `json:"appKey"`
		AppSecret string `json:"appSecret"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.AppKey == "" || req.AppSecret == "" {
		s.apiError(w, http.StatusBadRequest, dingtalk.CodeInvalidParameter, "缺少参数 appKey 或 appSecret")
		return
	}
	if req.AppKey != s.opts.AppKey || req.AppSecret != s.opts.AppSecret {
		s.apiError(w, http.StatusBadRequest, dingtalk.CodeInvalidClient, msgInvalidClient)
		return
	}
	tok, ttl := s.issueToken()
	s.apiJSON(w, map[string]any{"accessToken": tok, "expireIn": seconds(ttl)})
}

// robotSend is the custom robot webhook: its own token, msgUuid idempotency.
func (s *Server) robotSend(w http.ResponseWriter, r *http.Request, body []byte) {
	path := r.URL.Path
	if r.URL.Query().Get(dingtalk.QueryAccessToken) != s.opts.RobotToken {
		s.oapiError(w, path, dingtalk.ErrcodeRobotNoToken, msgRobotNoToken)
		return
	}
	var msg struct {
		MsgUUID string `json:"msgUuid"`
	}
	_ = json.Unmarshal(body, &msg) // a body that is not JSON has no msgUuid
	s.mu.Lock()
	replay := false
	if msg.MsgUUID != "" {
		_, replay = s.robotIDs[msg.MsgUUID]
		s.robotIDs[msg.MsgUUID] = struct{}{}
	}
	if !replay {
		s.executeLocked(path, body, true)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"errcode": dingtalk.ErrcodeOK, "errmsg": msgOK})
}

// execute counts one execution of path; a send whose body was executed before
// on the same path is also a duplicate.
func (s *Server) execute(path string, body []byte, send bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.executeLocked(path, body, send)
}

func (s *Server) executeLocked(path string, body []byte, send bool) {
	s.c.execs[path]++
	if !send {
		return
	}
	sum := sha256.Sum256(body)
	seen := s.seen[path]
	if seen == nil {
		seen = make(map[[sha256.Size]byte]struct{})
		s.seen[path] = seen
	}
	if _, dup := seen[sum]; dup {
		s.c.duplicates++
	} else if len(seen) < maxSeenBodies {
		seen[sum] = struct{}{}
	}
}

// Response writers.

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

// oapiOK answers an oapi success: errcode 0, errmsg "ok", fields, and a
// request_id on topapi paths.
func (s *Server) oapiOK(w http.ResponseWriter, path string, fields map[string]any) {
	m := map[string]any{"errcode": dingtalk.ErrcodeOK, "errmsg": msgOK}
	for k, v := range fields {
		m[k] = v
	}
	if shapeOf(path) == shapeTopAPI {
		m["request_id"] = s.topRequestID()
	}
	writeJSON(w, http.StatusOK, m)
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

func (s *Server) apiJSON(w http.ResponseWriter, v any) {
	w.Header().Set("x-acs-request-id", s.apiRequestID())
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) apiError(w http.ResponseWriter, status int, code, msg string) {
	id := s.apiRequestID()
	w.Header().Set("x-acs-request-id", id)
	writeJSON(w, status, map[string]any{"code": code, "message": msg, "requestid": id})
}

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

// discardWriter swallows the answer of a request executed by ResetAfterExec.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

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
