// Package breaker keeps one circuit breaker per route (sony/gobreaker's
// two-step breaker, with a rolling window), bounded in number: configured
// routes and observed paths up to a cap each get their own, everything beyond
// shares one overflow breaker. It also holds the proxy-wide breaker that
// DingTalk's egress-IP ban opens for every route at once.
//
// Set counts what it is told and decides whether a call may go. Transport is
// the breaker's layer around the attempt loop: it asks the Set, runs the
// loop, and judges the loop's Report (Judge) as one sample of the route, so
// one client call is one sample however many attempts it took. It answers
// nothing itself: an open breaker is an *OpenError, which the proxy turns
// into a fallback.
package breaker
