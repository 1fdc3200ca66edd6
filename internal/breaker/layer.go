package breaker

import (
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// Guard is what the breaker layer asks: the local Set, or the fleet's set
// decorating it (openings and bans met by other proxies, failures counted
// across the fleet).
type Guard interface {
	// Allow asks whether a call on route may go: an *OpenError if not;
	// else done takes the call's verdict and reports whether it opened the
	// route.
	Allow(route string) (done func(Verdict) (opened bool), err error)
	// Check says whether route is open now, taking no call's place.
	Check(route string) error
	// Ban opens every route until until: DingTalk banned the egress IP.
	Ban(until time.Time) bool
	// Settings are the breakers' settings in force; the layer reads the
	// default slow-call limit from them on every call, so that a reload
	// applies it to the calls that end from then on.
	Settings() Settings
}

// Layer is the breaker in the request path, above the attempt loop: a call
// on an open route (or under an IP ban) is not made, and each call's final
// outcome after the loop counts once for its route (Judge), as a failure
// when the call was slow (JudgeCall). It answers nothing itself: an open
// breaker is an *OpenError, which the proxy turns into a fallback, and a
// slow call's answer goes back to its client as it came. An IP-ban answer
// opens every route for the ban's length and becomes an *OpenError of kind
// ip-ban.
func Layer(g Guard, log *zap.Logger) call.Layer {
	if log == nil {
		log = zap.NewNop()
	}
	return func(next call.Handler) call.Handler {
		return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
			done := ignore
			var err error
			if f.Route == call.OverflowRoute {
				// APIs without a route of their own share no breaker: only
				// the IP ban stops them.
				err = g.Check(f.Route)
			} else {
				done, err = g.Allow(f.Route)
			}
			if err != nil {
				return call.Fail(call.Refused(call.ReasonClosed), err)
			}
			resp, rep, err := next.Do(req, f)
			if rep.Outcome == call.IPBan {
				until := dingtalk.Penalty(rep.Result, time.Now())
				call.Bookkeep(log, "breaker", func() {
					done(Ignore)
					g.Ban(until)
				})
				if resp != nil {
					resp.Body.Close()
				}
				// The ban answer came from an attempt: the report says how many.
				return call.Fail(rep, Open(f.Route, KindIPBan, time.Until(until)))
			}
			call.Bookkeep(log, "breaker", func() {
				limit := SlowLimit(f, g.Settings().SlowCall)
				v := JudgeCall(rep, f, limit)
				done(v)
				if v == Failure && Judge(rep) != Failure {
					if ce := log.Check(zap.DebugLevel, "slow call counted as a failure"); ce != nil {
						ce.Write(zap.String("route", f.Route), zap.Stringer("outcome", rep.Outcome),
							zap.Duration("took", rep.Took), zap.Duration("slow_call", limit))
					}
				}
			})
			return resp, rep, err
		})
	}
}

// ignore is the verdict taker of a call no breaker judges.
func ignore(Verdict) bool { return false }

// Gate is g as a gate of the attempt loop: a call whose route opened while
// it waited is not sent, nor retried.
func Gate(g Guard) call.Gate { return gate{g} }

type gate struct{ g Guard }

func (x gate) Closed(f *call.Facts) error { return x.g.Check(f.Route) }

// Judge is how a call's final outcome counts for its breaker: network
// errors, timeouts, 5xx and "system busy" fail it; business errors,
// throttling (pacing's business), token trouble, refusals and clients that
// went away do not count.
func Judge(rep call.Report) Verdict {
	switch rep.Outcome {
	case call.Success:
		return Success
	case call.ServerError, call.AfterSend:
		return Failure
	case call.NotSent:
		switch rep.Reason {
		case call.ReasonTokenUnavailable, call.ReasonPaced, call.ReasonClosed, dingtalk.ReasonQuota:
			return Ignore // a layer refused it: DingTalk was not tried
		}
		return Failure
	case call.Canceled:
		if rep.Reason == call.ReasonTimeout {
			return Failure
		}
	}
	return Ignore
}

// SlowLimit is the slow-call limit of a call on f's route: the route's own
// (routes[].slow_call), even 0, when it has one; else def
// (breaker.slow_call). 0 is off.
func SlowLimit(f *call.Facts, def time.Duration) time.Duration {
	if f.Policy != nil && f.Policy.SlowCall != nil {
		return *f.Policy.SlowCall
	}
	return def
}

// Slow says whether a call counts as slow under limit (0: off): DingTalk
// answered its last attempt, the one whose answer goes back to the client,
// and took longer than limit to. That attempt's time (Report.Took) runs
// from its handing to the transport, after every wait of the proxy's own
// (its turn in pacing, the backoff before it, the token), to its answer's
// headers and inspected body: what dingproxy_upstream_attempt_duration_seconds
// records for it. Earlier attempts do not count, as their outcomes do not:
// a call is one sample, judged by the answer it came to.
//
// Whatever DingTalk answered counts (a success, a business error, a
// throttle): a caller waits as long for a slow "no permission" as for a
// slow success, and an API whose answers are mostly business errors would
// otherwise never open however slow it grew. A call without an answer is
// judged by its outcome alone (a timeout or a reset fails already; a client
// that went away is not DingTalk's doing), and so is a call whose body
// streamed from the client: its attempt's time holds the client's upload.
func Slow(rep call.Report, f *call.Facts, limit time.Duration) bool {
	if limit <= 0 || rep.Attempts == 0 || rep.Took <= limit {
		return false
	}
	if f.Body == nil && !f.Replayable {
		return false // streamed: the client's pace, not DingTalk's
	}
	switch rep.Outcome {
	case call.Success, call.Business, call.Throttled, call.TokenInvalid, call.ServerError:
		return true
	}
	return false
}

// JudgeCall is how a call counts for its breaker under the slow-call limit
// limit: a failure when it was slow (Slow), else Judge's verdict on its
// outcome.
func JudgeCall(rep call.Report, f *call.Facts, limit time.Duration) Verdict {
	if Slow(rep, f, limit) {
		return Failure
	}
	return Judge(rep)
}
