package proxy

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/dingproxy/dingproxy/internal/call"
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
