package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// answerTokenCall answers a client's own token call made with the configured
// credentials from the shared cache, in DingTalk's own shape, so that SDKs
// that insist on fetching tokens neither reach DingTalk nor get a token that
// differs from the one injected. Calls with other credentials are forwarded.
func (px *Proxy) answerTokenCall(w http.ResponseWriter, r *http.Request, body []byte, up dingtalk.Upstream) bool {
	var oauth2 bool
	switch {
	case r.Method == http.MethodGet && r.URL.Path == dingtalk.PathGetToken:
		q := r.URL.Query()
		if !px.credentialsMatch(q.Get("appkey"), q.Get("appsecret")) {
			return false
		}
	case r.Method == http.MethodPost && r.URL.Path == dingtalk.PathOAuth2Token:
		var in struct {
			AppKey    string `json:"appKey"`
			AppSecret string `json:"appSecret"`
		}
		if json.Unmarshal(body, &in) != nil || !px.credentialsMatch(in.AppKey, in.AppSecret) {
			return false
		}
		oauth2 = true
	default:
		return false
	}
	w.Header().Set(HeaderAttempts, "0")
	tok, err := px.opts.Tokens.Token(r.Context())
	if err != nil {
		own{status: http.StatusServiceUnavailable, code: CodeTokenUnavailable, msg: "dingproxy: no access token available"}.write(w, up)
		return true
	}
	_, expires := px.opts.Tokens.Peek()
	left := int64(time.Until(expires) / time.Second)
	if left < 1 {
		left = 1
	}
	var out []byte
	if oauth2 {
		out, _ = json.Marshal(struct {
			AccessToken string `json:"accessToken"`
			ExpireIn    int64  `json:"expireIn"`
		}{tok, left})
	} else {
		out, _ = json.Marshal(struct {
			Errcode     int    `json:"errcode"`
			Errmsg      string `json:"errmsg"`
			AccessToken string `json:"access_token"`
			ExpiresIn   int64  `json:"expires_in"`
		}{0, "ok", tok, left})
	}
	w.Header().Set("Content-Type", "application/json;charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(out)
	return true
}

func (px *Proxy) credentialsMatch(key, secret string) bool {
	// With no secret configured nothing matches: two empty strings compare
	// equal, and the token must never go to a caller who showed none.
	if px.opts.AppKey == "" || px.opts.AppSecret == "" || key != px.opts.AppKey {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(secret), []byte(px.opts.AppSecret)) == 1
}
