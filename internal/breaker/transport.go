package breaker

import (
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// Loop runs a request's attempts: the retry.Transport.
type Loop interface {
	Do(req *http.Request, f *retry.Facts) (*http.Response, retry.Report, error)
}

// Transport is the breaker layer around the attempt loop: a call on an open
// route (or under an IP ban) is not made, and each call's final outcome
// after the loop counts once for its route, as SPEC says. It answers nothing
// itself: an open breaker is an *OpenError, which the proxy turns into a
// fallback.
type Transport struct {
	Set  *Set
	Next Loop
	// Bookkeep runs the breaker's bookkeeping after a call was made, so
	// that a failure in it never replaces DingTalk's answer.
	Bookkeep func(what string, f func())
}

// Do runs req through the loop unless f's route is open. An IP-ban answer
// opens every route for the ban's length and becomes an *OpenError of kind
// ip-ban.
func (t *Transport) Do(req *http.Request, f *retry.Facts) (*http.Response, retry.Report, error) {
	done, err := t.Set.Allow(f.Route)
	if err != nil {
		return nil, retry.Report{}, err
	}
	resp, rep, err := t.Next.Do(req, f)
	if rep.Outcome == retry.IPBan {
		ban := rep.Result.Wait
		if ban <= 0 {
			ban = dingtalk.IPBanDuration * time.Second
		}
		t.bookkeep(func() {
			done(Ignore)
			t.Set.Ban(ban)
		})
		if resp != nil {
			resp.Body.Close()
		}
		// The ban answer came from an attempt: the error says how many.
		open := &OpenError{Route: f.Route, Kind: KindIPBan, RetryAfter: ban}
		return nil, rep, &retry.Error{Attempts: rep.Attempts, Outcome: rep.Outcome, Err: open, Report: rep}
	}
	t.bookkeep(func() { done(Judge(rep)) })
	return resp, rep, err
}

func (t *Transport) bookkeep(f func()) {
	if t.Bookkeep != nil {
		t.Bookkeep("breaker", f)
		return
	}
	f()
}

// Judge is how a call's final outcome counts for its breaker: network
// errors, timeouts, 5xx and "system busy" fail it; business errors,
// throttling (pacing's business), token trouble and clients that went away
// do not count.
func Judge(rep retry.Report) Verdict {
	switch rep.Outcome {
	case retry.Success:
		return Success
	case retry.ServerError, retry.AfterSend:
		return Failure
	case retry.NotSent:
		if rep.Reason == retry.ReasonTokenUnavailable || rep.Reason == retry.ReasonPaced || rep.Reason == retry.ReasonClosed || rep.Reason == dingtalk.ReasonQuota {
			return Ignore
		}
		return Failure
	case retry.Canceled:
		if rep.Reason == retry.ReasonTimeout {
			return Failure
		}
	}
	return Ignore
}
