package dingtalktest

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Auth and tokens: the app token check in front of every route, and the two
// token endpoints that issue it.

// auth checks the app token in the path's placement and answers the error
// itself when it is missing or not valid.
func (s *Server) auth(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	tok := requestToken(r)
	if tok == "" {
		s.answerError(w, path, errTokenMissing)
		return false
	}
	if !s.validToken(tok) {
		s.tokenInvalid(w, path)
		return false
	}
	return true
}

// requestToken is the access token r carries where its path's host reads
// it: the header on the api host, the query on oapi.
func requestToken(r *http.Request) string {
	if shapeOf(r.URL.Path) == shapeAPI {
		return r.Header.Get(dingtalk.HeaderAccessToken)
	}
	return r.URL.Query().Get(dingtalk.QueryAccessToken)
}

// tokenInvalid answers path's token-invalid error; the robot webhook, whose
// token is its own, words it its own way.
func (s *Server) tokenInvalid(w http.ResponseWriter, path string) {
	if path == dingtalk.PathRobotSend {
		s.oapiError(w, path, dingtalk.ErrcodeRobotNoToken, msgRobotNoToken)
		return
	}
	s.answerError(w, path, errTokenInvalid)
}

func (s *Server) validToken(tok string) bool {
	if tok != "" && tok == s.opts.ForeignToken {
		return true
	}
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

// getToken is oapi's /gettoken: appkey and appsecret in the query.
func (s *Server) getToken(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	q := r.URL.Query()
	key, secret := q.Get("appkey"), q.Get("appsecret")
	if key == "" {
		s.oapiError(w, path, dingtalk.ErrcodeBadParameter, msgNoAppKey)
		return
	}
	if key != s.opts.AppKey || secret != s.opts.AppSecret {
		s.oapiError(w, path, dingtalk.ErrcodeBadAppKey, msgBadAppKey)
		return
	}
	tok, ttl := s.issueToken()
	s.answerOK(w, path, map[string]any{"access_token": tok, "expires_in": seconds(ttl)})
}

// oauth2Token is api's /v1.0/oauth2/accessToken: appKey and appSecret in a
// JSON body.
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
	s.answerOK(w, dingtalk.PathOAuth2Token, map[string]any{"accessToken": tok, "expireIn": seconds(ttl)})
}
