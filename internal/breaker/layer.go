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
}

// Layer is the breaker in the request path, above the attempt loop: a call
// on an open route (or under an IP ban) is not made, and each call's final
// outcome after the loop counts once for its route (Judge). It answers
// nothing itself: an open breaker is an *OpenError, which the proxy turns
// into a fallback. An IP-ban answer opens every route for the ban's length
// and becomes an *OpenError of kind ip-ban.
func Layer(g Guard, log *zap.Logger) call.Layer {
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
			call.Bookkeep(log, "breaker", func() { done(Judge(rep)) })
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
