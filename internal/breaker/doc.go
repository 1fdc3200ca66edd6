// Package breaker keeps one circuit breaker per route (sony/gobreaker's
// two-step breaker, with a rolling window), bounded in number: configured
// routes and observed paths up to a cap each get their own, everything beyond
// shares one overflow breaker. It also holds the proxy-wide breaker that
// DingTalk's egress-IP ban opens for every route at once.
//
// It counts what it is told and decides whether a call may go: it does not
// know HTTP, DingTalk's answers or fallbacks. The proxy maps a request's
// final outcome to a Verdict and an open breaker to a fallback answer.
package breaker
