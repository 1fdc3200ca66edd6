// Package proxy is dingproxy's HTTP front, the door of the request path:
// an http.Handler that refuses what must never be forwarded (CONNECT,
// absolute-form request lines, ambiguous paths, bodies past their limits),
// answers clients' own token calls from the shared cache, and decides each
// request's facts once (its upstream, API, route, token placement,
// idempotency and buffered body) before it hands the call, through an
// httputil.ReverseProxy, to the request path the app composed. It also
// holds the read cache's layer, and maps the layers' typed errors to the
// proxy's own answers (fallbacks, paced, quota, 502/503/504), each in the
// shape of the host the path belongs to, so any SDK can read it.
//
// It does not retry, classify answers, pace or fetch tokens itself: the
// layers of packages retry, pacing, breaker, quota and token do.
package proxy
