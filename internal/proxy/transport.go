package proxy

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// transport is ReverseProxy's Transport: it runs the call its facts
// describe down the request path (Options.Path), and readies the answer for
// the client: X-Dingproxy-Attempts from the path's report, and a good
// answer kept for stale fallbacks. Failures go back as the layers' typed
// errors, which errorHandler maps to answers.
type transport struct {
	px *Proxy
}

// errNoFacts is a request that reached the transport without its facts:
// only the proxy's handler sends requests here, and it always decides them.
var errNoFacts = errors.New("proxy: a request reached the transport without its facts")

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := call.FactsFrom(req.Context())
	if f == nil {
		return nil, errNoFacts
	}
	resp, rep, err := t.px.opts.Path.Do(req, f)
	if rep.Attempts > 0 && f.Route != Overflow {
		t.px.settle(f.Route, rep.Result)
	}
	if err != nil {
		return nil, err
	}
	if resp.Header.Get(HeaderCache) == CacheHit {
		return resp, nil // the cache's own headers, set; nothing was sent
	}
	resp.Header.Set(HeaderAttempts, strconv.Itoa(rep.Attempts))
	if rep.Outcome == call.Success {
		call.Bookkeep(t.px.log, "stale", func() { t.px.keepForStale(req, f, resp) })
	}
	return resp, nil
}

// settle tells the route table how DingTalk answered a call on route; a
// route it gives back is told to the Routes observer.
func (px *Proxy) settle(route string, r dingtalk.Result) {
	if px.policy.Load().table.settle(route, r) && px.opts.Routes != nil {
		call.Bookkeep(px.log, "routes", func() { px.opts.Routes.RouteReleased(route) })
	}
}
