package dingtalk

import (
	"net/url"
	"strings"
)

// QueryTokens is the access_token values in rawQuery, its names decoded
// (access%5Ftoken is access_token too). Pairs are split on "&" alone, as
// DingTalk splits them: a value with ";" is still a value (url.ParseQuery
// would drop the pair).
func QueryTokens(rawQuery string) []string {
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

// WithQueryToken is rawQuery with its access_token parameters (stand-ins
// for the shared token) replaced by tok, last; every other byte as it was.
func WithQueryToken(rawQuery, tok string) string {
	q := QueryAccessToken + "=" + url.QueryEscape(tok)
	if rest := withoutQueryToken(rawQuery); rest != "" {
		q = rest + "&" + q
	}
	return q
}

// withoutQueryToken is rawQuery without its access_token parameters.
func withoutQueryToken(rawQuery string) string {
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
	return strings.Contains(rawQuery, QueryAccessToken) || strings.Contains(rawQuery, "%")
}

// isTokenName reports whether a raw query name decodes to access_token.
func isTokenName(name string) bool {
	if name == QueryAccessToken {
		return true
	}
	n, err := url.QueryUnescape(name)
	return err == nil && n == QueryAccessToken
}
