package quota

import (
	"errors"
	"net/http"
	"testing"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// TestLayers: Count meters every metered attempt sent (not one that was
// not sent, not an unmetered one) and learns from DingTalk's answer; after
// a 90020, Admit refuses the route's next call at once and Gate closes.
func TestLayers(t *testing.T) {
	m := New(Settings{}, nil)
	answer := call.Report{Attempts: 1, Outcome: call.Success, Reason: dingtalk.ReasonSuccess, Result: okAnswer}
	sent := 0
	bottom := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		sent++
		return nil, answer, nil
	})
	h := Admit(m)(Count(m, nil)(bottom))
	f := &call.Facts{Route: route, Metered: true, AppCall: true}
	req := &http.Request{}
	h.Do(req, f)
	h.Do(req, &call.Facts{Route: "/gettoken"})
	answer = call.Report{Attempts: 1, Outcome: call.NotSent, Reason: call.ReasonDialError}
	h.Do(req, f)
	if st := m.State(); st.Sent != 1 {
		t.Errorf("metered %d, want 1 (an unmetered call and one not sent do not count)", st.Sent)
	}
	answer = call.Report{Attempts: 1, Outcome: call.Business, Reason: dingtalk.ReasonQuota, Result: routeAnswer}
	h.Do(req, f)
	before := sent
	_, rep, err := h.Do(req, f)
	var qe *Error
	if !errors.As(err, &qe) || rep.Attempts != 0 || rep.Reason != dingtalk.ReasonQuota || sent != before {
		t.Errorf("after a 90020: %+v, %v; want refused at once, nothing sent", rep, err)
	}
	if Gate(m).Closed(f) == nil {
		t.Error("the gate is open on a stopped route")
	}
	if Gate(m).Closed(&call.Facts{Route: route}) != nil {
		t.Error("the gate is closed to a call with a client's own token")
	}
}
