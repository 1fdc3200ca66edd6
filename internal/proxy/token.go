package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// TokenError is returned by the injector when no token can be had.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "proxy: no access token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// placement decides where the shared token goes: nowhere for calls that
// take no app token (robot webhooks, token calls), requests that bring a
// token of their own, and pass-through mode. An empty token, or the
// configured placeholder, is not a token of the client's own: it is
// replaced.
func (px *Proxy) placement(r *http.Request, ep dingtalk.Endpoint) dingtalk.Placement {
	if px.opts.Tokens == nil || ep.NoAppToken {
		return dingtalk.PlaceNone
	}
	if ep.Upstream == dingtalk.API {
		if vals := r.Header.Values(dingtalk.HeaderAccessToken); len(vals) > 0 && !px.stands(vals) {
			return dingtalk.PlaceNone
		}
		return dingtalk.PlaceHeader
	}
	if vals := queryTokens(r.URL.RawQuery); len(vals) > 0 && !px.stands(vals) {
		return dingtalk.PlaceNone
	}
	return dingtalk.PlaceQuery
}

// stands reports whether every value is only a stand-in for the shared
// token: empty, blank, or the configured placeholder.
func (px *Proxy) stands(vals []string) bool {
	ph := px.policy.Load().TokenPlaceholder
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v != "" && (ph == "" || v != ph) {
			return false
		}
	}
	return true
}

// Injector returns the attempt loop's Prepare hook: it puts the shared token
// where the Call says, fresh from the cache on every attempt.
func Injector(src *token.Source) func(*http.Request, *retry.Facts) (string, error) {
	return func(req *http.Request, f *retry.Facts) (string, error) {
		if f.Inject == dingtalk.PlaceNone || src == nil {
			return "", nil
		}
		tok, err := src.Token(req.Context())
		if err != nil {
			return "", &TokenError{Err: err}
		}
		switch f.Inject {
		case dingtalk.PlaceHeader:
			req.Header.Set(dingtalk.HeaderAccessToken, tok) // replaces a stand-in
		case dingtalk.PlaceQuery:
			q := dingtalk.QueryAccessToken + "=" + url.QueryEscape(tok)
			if rest := withoutAccessToken(req.URL.RawQuery); rest != "" {
				q = rest + "&" + q
			}
			req.URL.RawQuery = q
		}
		return tok, nil
	}
}

// queryTokens is the access_token values in rawQuery, its names decoded
// (access%5Ftoken is access_token too). Pairs are split on "&" alone, as
// DingTalk splits them: a value with ";" is still a value (url.ParseQuery
// would drop the pair).
func queryTokens(rawQuery string) []string {
	if !mayNameToken(rawQuery) {
		return nil
	}
	var vals []string
	for part := range strings.SplitSeq(rawQuery, "&") {
		name, val, _ := strings.Cut(part, "=")
		if !isTokenName(name) {
			continue
		}
		if v, err := url.QueryUnescape(val); err == nil {
			val = v
		}
		vals = append(vals, val)
	}
	return vals
}

// withoutAccessToken is rawQuery without its access_token parameters (the
// stand-ins placement found), every other byte as it was.
func withoutAccessToken(rawQuery string) string {
	if !mayNameToken(rawQuery) {
		return rawQuery
	}
	var b strings.Builder
	for part := range strings.SplitSeq(rawQuery, "&") {
		name, _, _ := strings.Cut(part, "=")
		if isTokenName(name) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(part)
	}
	return b.String()
}

// mayNameToken is false when no parameter of rawQuery can be access_token.
func mayNameToken(rawQuery string) bool {
	return strings.Contains(rawQuery, dingtalk.QueryAccessToken) || strings.Contains(rawQuery, "%")
}

// isTokenName reports whether a raw query name decodes to access_token.
func isTokenName(name string) bool {
	if name == dingtalk.QueryAccessToken {
		return true
	}
	n, err := url.QueryUnescape(name)
	return err == nil && n == dingtalk.QueryAccessToken
}
