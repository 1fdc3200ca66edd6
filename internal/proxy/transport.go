package proxy

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// transport is ReverseProxy's Transport: it runs the request its facts
// describe through the breaker layer and the attempt loop, and readies
// DingTalk's answer for the client: X-Dingproxy-* headers of DingTalk's own
// dropped (those names are the proxy's: an upstream's would reach the client
// as the proxy's word, and the fallback metric as a label),
// X-Dingproxy-Attempts set from the loop's report, and a good answer kept
// for stale fallbacks. Failures go back as the layers' typed errors, which
// errorHandler maps to answers.
type transport struct {
	px   *Proxy
	next breaker.Loop
}

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := retry.FactsFrom(req.Context())
	if f == nil {
		ep := dingtalk.Describe(req.URL.Path)
		f = &retry.Facts{API: ep.Route, Route: ep.Route, Upstream: ep.Upstream, TokenEndpoint: ep.TokenEndpoint}
	}
	var resp *http.Response
	var rep retry.Report
	var err error
	ttl := t.px.cacheTTL(req, f)
	if ttl > 0 {
		resp, rep, err = t.throughCache(req, f, ttl, func() (*http.Response, retry.Report, error) { return t.next.Do(req, f) })
		if err == nil && resp.Header.Get(HeaderCache) == CacheHit {
			return resp, nil // the cache's own headers, set; nothing was sent
		}
	} else {
		resp, rep, err = t.next.Do(req, f)
	}
	if err != nil {
		return nil, err
	}
	for k := range resp.Header {
		if len(k) >= len(headerPrefix) && strings.EqualFold(k[:len(headerPrefix)], headerPrefix) {
			delete(resp.Header, k)
		}
	}
	if ttl > 0 {
		resp.Header.Set(HeaderCache, CacheMiss) // sent: the cache's word, not DingTalk's
	}
	resp.Header.Set(HeaderAttempts, strconv.Itoa(rep.Attempts))
	if rep.Outcome == retry.Success {
		retry.Bookkeep(t.px.log, "stale", func() { t.px.keepForStale(req, f, resp) })
	}
	return resp, nil
}

// headerPrefix starts the names of dingproxy's own headers.
const headerPrefix = "X-Dingproxy-"
