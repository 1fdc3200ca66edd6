package quota

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

var (
	// routeAnswer is a 90020 without figures (the api host's
	// ApiCountLimitForOrg has none): it stops its route.
	routeAnswer = dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonQuota, Errcode: dingtalk.ErrcodeMonthlyQuota, QuotaUsed: -1, QuotaLimit: -1}
	// orgAnswer says the organisation's usage is past its quota: it stops
	// every metered route.
	orgAnswer = dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonQuota, Errcode: dingtalk.ErrcodeMonthlyQuota, QuotaUsed: 5001, QuotaLimit: 5000}
	okAnswer  = dingtalk.Result{Class: dingtalk.Success, Reason: dingtalk.ReasonSuccess}
)

const route = "/attendance/list"

// The bubble's clock starts at 2000-01-01 00:00 UTC: 08:00 on 1 January in
// China. Its month turns at 2000-01-31 16:00 UTC (00:00 on 1 February in
// China), eight hours before it does in UTC.
var chinaTurn = time.Date(2000, 1, 31, 16, 0, 0, 0, time.UTC)

// A 90020 stops the route until the month turns in China time, not UTC; an
// hourly probe goes through meanwhile; other routes and unmetered calls are
// never stopped.
func TestStoppedUntilTheMonthTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(Settings{}, nil)
		if err := m.Admit(route, true); err != nil {
			t.Fatal(err)
		}
		m.Sent(route, true)
		m.Answered(route, routeAnswer)
		var qe *Error
		if err := m.Admit(route, true); !errors.As(err, &qe) || qe.Budget || qe.RetryAfter != ProbeEvery {
			t.Fatalf("Admit after 90020 = %v, want a quota Error with the probe an hour away", err)
		}
		if err := m.Admit("/topapi/processinstance/get", true); err != nil {
			t.Errorf("another route: %v, want admitted (it never answered 90020)", err)
		}
		// DingTalk's 90020 on the route stops it, whatever the list says
		// of it; a route the list calls free that DingTalk never refused
		// goes.
		if err := m.Admit(route, false); !errors.As(err, &qe) {
			t.Errorf("a call the list calls free on the stopped route: %v, want refused", err)
		}
		if err := m.Admit("/topapi/v2/user/get", false); err != nil {
			t.Errorf("an unmetered call on another route: %v", err)
		}
		if st := m.State(); st.Used != -1 || st.Limit != -1 || st.Stopped != 1 || st.Organisation || st.Month != "2000-01" {
			t.Errorf("State = %+v, want no figures, 1 route stopped, the organisation not, month 2000-01", st)
		}

		// One probe an hour, and only one.
		time.Sleep(ProbeEvery)
		if err := m.Admit(route, true); err != nil {
			t.Fatalf("the hour's probe: %v", err)
		}
		if err := m.Admit(route, true); err == nil {
			t.Fatal("a second call went while the probe was out")
		}
		m.Answered(route, routeAnswer) // still spent
		if err := m.Admit(route, true); err == nil {
			t.Fatal("admitted after the probe met 90020 again")
		}

		// The month turns at midnight in China: 16:00 UTC on 31 January.
		time.Sleep(time.Until(chinaTurn.Add(-time.Second)))
		m.Admit(route, true) // the hour's probe
		if err := m.Admit(route, true); err == nil {
			t.Fatal("admitted a second before the month turned in China")
		}
		m.Answered(route, routeAnswer)
		time.Sleep(time.Second)
		if err := m.Admit(route, true); err != nil {
			t.Errorf("at 00:00 China time on 1 February: %v, want a new month", err)
		}
		if st := m.State(); st.Month != "2000-02" || st.Stopped != 0 || st.Used != -1 || st.Sent != 0 {
			t.Errorf("State after the turn = %+v, want month 2000-02, nothing stopped, usage unknown, 0 sent", st)
		}
	})
}

// A probe that gets through resumes the route (a quota bought mid-month).
func TestProbeResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := &testObserver{}
		m := New(Settings{}, o)
		m.Answered(route, routeAnswer)
		time.Sleep(ProbeEvery)
		if err := m.Admit(route, true); err != nil {
			t.Fatal(err)
		}
		m.Answered(route, okAnswer)
		for range 3 {
			if err := m.Admit(route, true); err != nil {
				t.Fatalf("after a successful probe: %v", err)
			}
		}
		if len(o.stops) != 2 || !o.stops[0] || o.stops[1] {
			t.Errorf("the observer heard %v, want stopped then resumed", o.stops)
		}
	})
}

// monthly_budget caps this app's metered calls: a warning at 80 %, the
// quota answer at 100 % until the month turns; unmetered calls go on.
func TestBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := &testObserver{}
		m := New(Settings{Budget: 10, Location: time.UTC}, o)
		for i := range 10 {
			if err := m.Admit(route, true); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			m.Sent(route, true)
		}
		if len(o.warned) != 1 || o.warned[0] != 8 {
			t.Errorf("warnings at %v, want one at 8 (80 %% of 10)", o.warned)
		}
		var qe *Error
		if err := m.Admit("/other", true); !errors.As(err, &qe) || !qe.Budget {
			t.Fatalf("the 11th call: %v, want the budget's refusal", err)
		}
		if want := time.Until(time.Date(2000, 2, 1, 0, 0, 0, 0, time.UTC)); qe.RetryAfter != want {
			t.Errorf("RetryAfter = %v, want until the month turns (%v)", qe.RetryAfter, want)
		}
		if err := m.Admit(route, false); err != nil {
			t.Errorf("an unmetered call past the budget: %v", err)
		}
		if err := m.Refused(route, true); err == nil {
			t.Error("Refused = nil past the budget")
		}
		time.Sleep(time.Until(time.Date(2000, 2, 1, 0, 0, 0, 0, time.UTC)))
		if err := m.Admit(route, true); err != nil {
			t.Errorf("in the new month: %v", err)
		}
	})
}

// Retries count: every attempt sent is metered.
func TestEveryAttemptCounts(t *testing.T) {
	m := New(Settings{}, nil)
	for range 3 {
		m.Sent(route, true)
	}
	m.Sent("/gettoken", false)
	if st := m.State(); st.Sent != 3 {
		t.Errorf("Sent = %d, want 3", st.Sent)
	}
}

// The observer may ask the meter: it is told of the routes the month's
// turn resumes once the meter's lock is released (it used to be told under
// it, and the proxy's handler, which reads State, hung every metered call).
func TestMonthTurnTellsObserverUnlocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := &testObserver{}
		m := New(Settings{}, o)
		o.m = m // it asks the meter, as the metrics do
		m.Answered(route, routeAnswer)
		time.Sleep(time.Until(chinaTurn))
		if err := m.Admit(route, true); err != nil {
			t.Fatalf("in the new month: %v", err)
		}
		if len(o.resumed) != 1 || o.resumed[0] != route {
			t.Errorf("the observer heard %v resumed, want [%s]", o.resumed, route)
		}
	})
}

// testObserver records what a meter tells; with m set it asks the meter
// back, as the proxy's metrics do.
type testObserver struct {
	m       *Meter
	stops   []bool
	resumed []string
	warned  []int64
	sent    int
}

func (o *testObserver) QuotaWarned(sent, _ int64) { o.warned = append(o.warned, sent) }
func (o *testObserver) QuotaSent(string)          { o.sent++ }
func (o *testObserver) QuotaStopped(route string, stopped bool, _ State) {
	if o.m != nil {
		_ = o.m.State()
	}
	o.stops = append(o.stops, stopped)
	if !stopped {
		o.resumed = append(o.resumed, route)
	}
}

// The overflow route holds APIs of every kind: a 90020 there teaches the
// organisation's figures and stops nothing.
func TestOverflowNotStopped(t *testing.T) {
	m := New(Settings{}, nil)
	below := dingtalk.Result{Class: dingtalk.Business, Reason: dingtalk.ReasonQuota, Errcode: dingtalk.ErrcodeMonthlyQuota, QuotaUsed: 4990, QuotaLimit: 5000}
	if m.Answered(call.OverflowRoute, below) {
		t.Error("the overflow route was stopped")
	}
	if err := m.Admit(call.OverflowRoute, true); err != nil {
		t.Errorf("a call on the overflow route after a 90020 there: %v", err)
	}
	if st := m.State(); st.Stopped != 0 || st.Used != 4990 || st.Organisation {
		t.Errorf("state %+v, want nothing stopped and the figures learned", st)
	}
	// The organisation's stop is the organisation's, wherever DingTalk
	// says it.
	m.Answered(call.OverflowRoute, orgAnswer)
	if err := m.Admit(route, true); err == nil {
		t.Error("a metered call went after the overflow route's 90020 said the organisation's quota is spent")
	}
}

// A 90020 whose message says the organisation's usage is at its quota
// stops every metered route, the list's and those DingTalk refused, with
// one probe an hour for them all; calls the list calls free on routes
// DingTalk never refused go on; the probe getting through lifts every stop.
func TestOrganisationStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := &testObserver{}
		m := New(Settings{}, o)
		const free = "/topapi/v2/user/get" // the list calls it free
		if !m.Answered(free, orgAnswer) {
			t.Fatal("the 90020 did not stop its own route")
		}
		var qe *Error
		for _, r := range []string{route, "/topapi/processinstance/get"} {
			if err := m.Admit(r, true); !errors.As(err, &qe) || !qe.Organisation || qe.RetryAfter != ProbeEvery {
				t.Errorf("a metered call on %s: %v, want the organisation's refusal, next probe in an hour", r, err)
			}
		}
		if err := m.Admit(free, false); !errors.As(err, &qe) {
			t.Errorf("the route DingTalk refused, which the list calls free: %v, want refused", err)
		}
		if err := m.Admit("/topapi/v2/department/get", false); err != nil {
			t.Errorf("a route the list calls free that DingTalk never refused: %v", err)
		}
		if st := m.State(); !st.Organisation || st.Stopped != 1 || st.Used != 5001 || st.Limit != 5000 {
			t.Errorf("State = %+v, want the organisation stopped, 1 route, 5001 of 5000", st)
		}
		if !m.IsStopped(Organisation) {
			t.Error("IsStopped(Organisation) = false")
		}

		// One probe an hour for the organisation, not one per route.
		time.Sleep(ProbeEvery)
		if err := m.Admit(route, true); err != nil {
			t.Fatalf("the hour's probe: %v", err)
		}
		if err := m.Refused(route, true); err != nil {
			t.Errorf("the probe's own retry: %v", err)
		}
		for _, r := range []string{route, "/topapi/processinstance/get", free} {
			if err := m.Admit(r, true); err == nil {
				t.Errorf("a second call on %s went while the organisation's probe was out", r)
			}
		}
		m.Answered(route, orgAnswer) // still spent
		if err := m.Admit("/topapi/processinstance/get", true); err == nil {
			t.Fatal("admitted after the probe met 90020 again")
		}

		// A success on a route other than the probe's (a call in flight)
		// lifts nothing; the probe's success lifts every stop.
		m.Answered("/topapi/processinstance/get", okAnswer)
		if !m.IsStopped(Organisation) {
			t.Fatal("a call in flight's success lifted the organisation's stop")
		}
		time.Sleep(ProbeEvery)
		if err := m.Admit("/topapi/processinstance/get", true); err != nil {
			t.Fatalf("the next hour's probe: %v", err)
		}
		m.Answered("/topapi/processinstance/get", okAnswer)
		if st := m.State(); st.Organisation || st.Stopped != 0 {
			t.Errorf("State after the probe got through = %+v, want nothing stopped", st)
		}
		for _, r := range []string{route, free} {
			if err := m.Admit(r, true); err != nil {
				t.Errorf("%s after the probe got through: %v", r, err)
			}
		}
		if len(o.resumed) != 3 || o.resumed[0] != Organisation {
			t.Errorf("the observer heard %v resumed, want the organisation and the two routes that met 90020", o.resumed)
		}
	})
}

// In the fleet one proxy probes for the organisation each hour: a probe
// the claim refuses is refused here, and the next goes an hour later.
func TestOrganisationProbeClaimed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(Settings{}, nil)
		claims := 0
		m.ClaimProbe(func() bool { claims++; return false })
		m.Answered(route, orgAnswer)
		time.Sleep(ProbeEvery)
		var qe *Error
		if err := m.Admit(route, true); !errors.As(err, &qe) || !qe.Organisation {
			t.Fatalf("the probe another proxy holds: %v, want refused", err)
		}
		if err := m.Admit(route, true); err == nil || claims != 1 {
			t.Fatalf("a second call: %v after %d claims, want refused without asking again", err, claims)
		}
		m.ClaimProbe(func() bool { claims++; return true })
		time.Sleep(ProbeEvery)
		if err := m.Admit(route, true); err != nil || claims != 2 {
			t.Errorf("the next hour's probe: %v after %d claims", err, claims)
		}
	})
}
