package token

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// maxAnswer bounds how much of a token endpoint's answer is read.
const maxAnswer = 64 << 10

// NewOAuth2Fetcher fetches with POST {apiBase}/v1.0/oauth2/accessToken.
func NewOAuth2Fetcher(rt http.RoundTripper, apiBase, appKey, appSecret string) Fetcher {
	endpoint := strings.TrimRight(apiBase, "/") + dingtalk.PathOAuth2Token
	return FetcherFunc(func(ctx context.Context) (string, time.Duration, error) {
		body, err := json.Marshal(struct {
			AppKey    string `json:"appKey"`
			AppSecret string `json:"appSecret"`
		}{appKey, appSecret})
		if err != nil {
			return "", 0, fmt.Errorf("token: fetch: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
		if err != nil {
			return "", 0, fmt.Errorf("token: fetch: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		status, data, err := send(rt, req)
		if err != nil {
			return "", 0, err
		}
		var ans struct {
			AccessToken string          `json:"accessToken"`
			ExpireIn    json.Number     `json:"expireIn"`
			Code        string          `json:"code"`
			Message     string          `json:"message"`
			RequestID   json.RawMessage `json:"requestid"`
		}
		if err := json.Unmarshal(data, &ans); err != nil {
			return "", 0, fmt.Errorf("token: fetch: HTTP %d, answer is not JSON", status)
		}
		if status != http.StatusOK || ans.AccessToken == "" {
			return "", 0, fmt.Errorf("token: fetch: HTTP %d %s: %s", status, ans.Code, ans.Message)
		}
		return ans.AccessToken, lifetime(ans.ExpireIn), nil
	})
}

// NewGetTokenFetcher fetches with GET {oapiBase}/gettoken?appkey=&appsecret=.
func NewGetTokenFetcher(rt http.RoundTripper, oapiBase, appKey, appSecret string) Fetcher {
	q := url.Values{"appkey": {appKey}, "appsecret": {appSecret}}
	endpoint := strings.TrimRight(oapiBase, "/") + dingtalk.PathGetToken + "?" + q.Encode()
	return FetcherFunc(func(ctx context.Context) (string, time.Duration, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
		if err != nil {
			return "", 0, fmt.Errorf("token: fetch: %w", Redact(err))
		}
		status, data, err := send(rt, req)
		if err != nil {
			return "", 0, err
		}
		var ans struct {
			Errcode     json.Number `json:"errcode"`
			Errmsg      string      `json:"errmsg"`
			AccessToken string      `json:"access_token"`
			ExpiresIn   json.Number `json:"expires_in"`
		}
		if err := json.Unmarshal(data, &ans); err != nil {
			return "", 0, fmt.Errorf("token: fetch: HTTP %d, answer is not JSON", status)
		}
		if ans.Errcode.String() != "0" && ans.Errcode.String() != "" || ans.AccessToken == "" {
			return "", 0, fmt.Errorf("token: fetch: HTTP %d errcode %s: %s", status, ans.Errcode, ans.Errmsg)
		}
		return ans.AccessToken, lifetime(ans.ExpiresIn), nil
	})
}

// send makes the request and reads a bounded answer. Its errors never carry
// the request's query.
func send(rt http.RoundTripper, req *http.Request) (int, []byte, error) {
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, nil, fmt.Errorf("token: fetch %s %s: %w", req.Method, redactURL(req.URL), Redact(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, nil, fmt.Errorf("token: fetch: reading answer: %w", Redact(err))
	}
	return resp.StatusCode, data, nil
}

// lifetime reads a token lifetime in seconds; a missing or non-positive one
// counts as DingTalk's documented 7200 s.
func lifetime(n json.Number) time.Duration {
	s, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil || s <= 0 {
		s = dingtalk.DefaultTokenTTL
	}
	return time.Duration(s) * time.Second
}

// Redact returns err with the query of any *url.Error in it removed: see
// dingtalk.RedactError.
func Redact(err error) error { return dingtalk.RedactError(err) }

// redactURL prints u without its query or user info.
func redactURL(u *url.URL) string { return dingtalk.RedactURL(u) }
