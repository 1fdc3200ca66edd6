package proxy

import (
	"net/http"
	"strings"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// placement decides where the shared token goes: nowhere for calls that
// take no app token (robot webhooks, token calls), requests that bring a
// token of their own, and pass-through mode. An empty token, or the
// configured placeholder, is not a token of the client's own: it is
// replaced.
func (px *Proxy) placement(r *http.Request, ep dingtalk.Endpoint, pol *Policy) dingtalk.Placement {
	if px.opts.Tokens == nil || ep.NoAppToken {
		return dingtalk.PlaceNone
	}
	if ep.Upstream == dingtalk.API {
		if vals := r.Header.Values(dingtalk.HeaderAccessToken); len(vals) > 0 && !stands(vals, pol.TokenPlaceholder) {
			return dingtalk.PlaceNone
		}
		return dingtalk.PlaceHeader
	}
	if vals := dingtalk.QueryTokens(r.URL.RawQuery); len(vals) > 0 && !stands(vals, pol.TokenPlaceholder) {
		return dingtalk.PlaceNone
	}
	return dingtalk.PlaceQuery
}

// stands reports whether every value is only a stand-in for the shared
// token: empty, blank, or the configured placeholder ph.
func stands(vals []string, ph string) bool {
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v != "" && (ph == "" || v != ph) {
			return false
		}
	}
	return true
}
