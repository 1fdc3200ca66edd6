// Package breaker keeps one circuit breaker per route (sony/gobreaker's
// two-step breaker, with a rolling window of ten buckets), and the
// proxy-wide breaker that DingTalk's egress-IP ban opens for every route at
// once. Route names come bounded from the proxy's route table: configured
// routes and APIs up to breaker.max_routes each have their own, everything
// beyond shares one overflow route.
//
// Set counts what it is told and decides whether a call may go; its rule
// (Settings.Trips) is the fleet's too. Layer is the breaker in the request
// path, around the attempt loop: it asks a Guard (the Set, or the fleet's
// decoration of it), runs the loop, and judges the loop's Report (Judge) as
// one sample of the route, so one client call is one sample however many
// attempts it took. A call DingTalk answered more slowly than the route's
// slow-call limit (Slow) is a failure whatever it answered: the verdict
// changes, never the answer. It answers nothing itself: an open breaker is
// an *OpenError, which the proxy turns into a fallback.
package breaker
