package breaker_test

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// TestJudge: the breaker's rules (README, "Circuit breaker"), as the
// verdict on a loop's report.
func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		rep  call.Report
		want breaker.Verdict
	}{
		{call.Report{Outcome: call.Success}, breaker.Success},
		{call.Report{Outcome: call.ServerError, Reason: "http_5xx"}, breaker.Failure},
		{call.Report{Outcome: call.AfterSend, Reason: call.ReasonReset}, breaker.Failure},
		{call.Report{Outcome: call.NotSent, Reason: call.ReasonDialError}, breaker.Failure},
		{call.Report{Outcome: call.NotSent, Reason: call.ReasonPaced}, breaker.Ignore},
		{call.Report{Outcome: call.NotSent, Reason: call.ReasonTokenUnavailable}, breaker.Ignore},
		{call.Report{Outcome: call.NotSent, Reason: call.ReasonClosed}, breaker.Ignore},
		{call.Report{Outcome: call.NotSent, Reason: dingtalk.ReasonQuota}, breaker.Ignore},
		{call.Report{Outcome: call.Canceled, Reason: call.ReasonTimeout}, breaker.Failure},
		{call.Report{Outcome: call.Canceled, Reason: call.ReasonCanceled}, breaker.Ignore},
		{call.Report{Outcome: call.Business}, breaker.Ignore},
		{call.Report{Outcome: call.Throttled}, breaker.Ignore},
		{call.Report{Outcome: call.TokenInvalid}, breaker.Ignore},
	} {
		if got := breaker.Judge(tc.rep); got != tc.want {
			t.Errorf("Judge(%s/%s) = %v, want %v", tc.rep.Outcome, tc.rep.Reason, got, tc.want)
		}
	}
}

// TestLayer: one call is one sample, an open route is an *OpenError
// without calling the rest of the path, and an IP-ban answer bans every
// route and comes back as an ip-ban *OpenError inside a *call.Error that
// counts the attempt.
func TestLayer(t *testing.T) {
	set := breaker.NewSet(breaker.Settings{FailureRatio: 0.5, MinRequests: 2, Window: time.Minute, OpenTimeout: time.Minute, HalfOpenRequests: 1}, nil, nil)
	calls := 0
	failing := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		calls++
		return call.Fail(call.Report{Attempts: 3, Outcome: call.ServerError}, errors.New("503"))
	})
	h := breaker.Layer(set, nil)(failing)
	req, _ := http.NewRequest(http.MethodGet, "http://x/department/list", nil)
	f := &call.Facts{Route: "/department/list"}
	for range 2 {
		h.Do(req, f)
	}
	_, _, err := h.Do(req, f)
	var open *breaker.OpenError
	if !errors.As(err, &open) || open.Kind != breaker.KindCircuitOpen || calls != 2 {
		t.Fatalf("after 2 failed calls: err %v, %d loop calls; want circuit-open without a third", err, calls)
	}

	banned := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("<html>"))},
			call.Report{Attempts: 1, Outcome: call.IPBan, Reason: dingtalk.ReasonIPBan, Result: dingtalk.Result{Class: dingtalk.IPBan, Reason: dingtalk.ReasonIPBan, Wait: 2 * time.Minute}}, nil
	})
	h = breaker.Layer(set, nil)(banned)
	_, _, err = h.Do(req, &call.Facts{Route: "/topapi/v2/user/get"})
	var ce *call.Error
	if !errors.As(err, &open) || open.Kind != breaker.KindIPBan || !errors.As(err, &ce) || ce.Report.Attempts != 1 {
		t.Fatalf("IP-ban answer: err %v, want an ip-ban OpenError in a call.Error of 1 attempt", err)
	}
	if d := set.Banned(); d < time.Minute || d > 2*time.Minute {
		t.Errorf("banned for %v, want the answer's 2 minutes", d)
	}
}

// TestSlow: which calls count as slow under a limit (README, "Slow
// calls"): the last attempt answered by DingTalk, whatever it answered,
// took longer than the limit; a call with no answer, or whose body
// streamed from the client, is judged by its outcome alone.
func TestSlow(t *testing.T) {
	const limit = 500 * time.Millisecond
	buffered := &call.Facts{Route: "/r", Body: []byte(`{}`), Replayable: true}
	bodiless := &call.Facts{Route: "/r", Replayable: true}
	streamed := &call.Facts{Route: "/r"}
	answered := func(o call.Outcome, took time.Duration) call.Report {
		return call.Report{Attempts: 1, Outcome: o, Took: took}
	}
	for _, tc := range []struct {
		name  string
		rep   call.Report
		f     *call.Facts
		limit time.Duration
		slow  bool
		want  breaker.Verdict
	}{
		{"fast success", answered(call.Success, limit), buffered, limit, false, breaker.Success},
		{"slow success", answered(call.Success, limit+time.Millisecond), buffered, limit, true, breaker.Failure},
		{"slow success, bodiless", answered(call.Success, 2*limit), bodiless, limit, true, breaker.Failure},
		{"slow success, limit off", answered(call.Success, time.Hour), buffered, 0, false, breaker.Success},
		{"slow business error", answered(call.Business, 2*limit), buffered, limit, true, breaker.Failure},
		{"fast business error", answered(call.Business, limit/2), buffered, limit, false, breaker.Ignore},
		{"slow throttle", answered(call.Throttled, 2*limit), buffered, limit, true, breaker.Failure},
		{"slow token error", answered(call.TokenInvalid, 2*limit), buffered, limit, true, breaker.Failure},
		{"slow 5xx", answered(call.ServerError, 2*limit), buffered, limit, true, breaker.Failure},
		{"slow success after 3 attempts", call.Report{Attempts: 3, Outcome: call.Success, Took: 2 * limit}, buffered, limit, true, breaker.Failure},
		{"fast last attempt after slow ones", call.Report{Attempts: 3, Outcome: call.Success, Took: limit / 2}, buffered, limit, false, breaker.Success},
		{"streamed body", answered(call.Success, 2*limit), streamed, limit, false, breaker.Success},
		{"client went away", call.Report{Attempts: 1, Outcome: call.Canceled, Reason: call.ReasonCanceled, Took: 2 * limit}, buffered, limit, false, breaker.Ignore},
		{"timed out", call.Report{Attempts: 1, Outcome: call.AfterSend, Reason: call.ReasonTimeout, Took: 2 * limit}, buffered, limit, false, breaker.Failure},
		// A retry refused before it went: the earlier attempt's time stays
		// in the report, but no answer goes back from it.
		{"refused retry", call.Report{Attempts: 1, Outcome: call.NotSent, Reason: call.ReasonClosed, Took: 2 * limit}, buffered, limit, false, breaker.Ignore},
		{"refused before any attempt", call.Refused(call.ReasonPaced), buffered, limit, false, breaker.Ignore},
	} {
		if got := breaker.Slow(tc.rep, tc.f, tc.limit); got != tc.slow {
			t.Errorf("%s: Slow = %v, want %v", tc.name, got, tc.slow)
		}
		if got := breaker.JudgeCall(tc.rep, tc.f, tc.limit); got != tc.want {
			t.Errorf("%s: JudgeCall = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSlowLimit: a route's own slow_call, 0 included, wins over the
// breaker's default; a route without one takes the default.
func TestSlowLimit(t *testing.T) {
	zero, own := time.Duration(0), 2*time.Second
	for _, tc := range []struct {
		name string
		p    *call.RoutePolicy
		want time.Duration
	}{
		{"no policy", nil, time.Second},
		{"policy without slow_call", &call.RoutePolicy{}, time.Second},
		{"slow_call 0", &call.RoutePolicy{SlowCall: &zero}, 0},
		{"own slow_call", &call.RoutePolicy{SlowCall: &own}, own},
	} {
		if got := breaker.SlowLimit(&call.Facts{Policy: tc.p}, time.Second); got != tc.want {
			t.Errorf("%s: SlowLimit = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestLayerSlowCalls: slow successful calls open the route while each
// answer goes back to its client as it came; a route whose own slow_call
// is 0 never opens on them; a new default applies from the next call.
func TestLayerSlowCalls(t *testing.T) {
	st := breaker.Settings{FailureRatio: 0.5, MinRequests: 3, Window: time.Minute, OpenTimeout: time.Minute, HalfOpenRequests: 1, SlowCall: 500 * time.Millisecond}
	set := breaker.NewSet(st, nil, nil)
	calls := 0
	slow := call.HandlerFunc(func(*http.Request, *call.Facts) (*http.Response, call.Report, error) {
		calls++
		resp := &http.Response{StatusCode: 200, Header: http.Header{"X-N": {strconv.Itoa(calls)}},
			Body: io.NopCloser(strings.NewReader(`{"errcode":0,"errmsg":"ok"}`))}
		return resp, call.Report{Attempts: 1, Outcome: call.Success, Reason: dingtalk.ReasonSuccess, Took: time.Second}, nil
	})
	h := breaker.Layer(set, nil)(slow)
	req, _ := http.NewRequest(http.MethodPost, "http://x/topapi/v2/user/get", nil)
	do := func(f *call.Facts) (*http.Response, error) {
		t.Helper()
		resp, _, err := h.Do(req, f)
		return resp, err
	}
	f := &call.Facts{Route: "/topapi/v2/user/get", Body: []byte(`{}`), Replayable: true}
	for i := range 3 {
		resp, err := do(f)
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-N") != strconv.Itoa(i+1) {
			t.Fatalf("slow call %d: %v, %v; want DingTalk's own answer", i+1, resp, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if string(body) != `{"errcode":0,"errmsg":"ok"}` {
			t.Fatalf("slow call %d: body %q, want DingTalk's", i+1, body)
		}
	}
	var open *breaker.OpenError
	if _, err := do(f); !errors.As(err, &open) || open.Kind != breaker.KindCircuitOpen || calls != 3 {
		t.Fatalf("after 3 slow calls: err %v, %d calls made; want circuit-open without a fourth", err, calls)
	}

	// A route with its own slow_call 0 under the same default: never open.
	zero := time.Duration(0)
	off := &call.Facts{Route: "/department/list", Replayable: true, Policy: &call.RoutePolicy{SlowCall: &zero}}
	for i := range 10 {
		if _, err := do(off); err != nil {
			t.Fatalf("call %d on a route with slow_call 0: %v, want DingTalk's answer", i+1, err)
		}
	}
	if got := set.State(off.Route); got != breaker.StateClosed {
		t.Errorf("route with slow_call 0 after 10 slow calls: %v, want closed", got)
	}

	// The default raised past the calls' time (a reload): another route's
	// slow calls are successes from the next call on.
	st.SlowCall = 2 * time.Second
	set.Update(st)
	other := &call.Facts{Route: "/attendance/list", Body: []byte(`{}`), Replayable: true}
	for i := range 10 {
		if _, err := do(other); err != nil {
			t.Fatalf("call %d after the limit was raised: %v", i+1, err)
		}
	}
	if fails, oks := set.Counts(other.Route); fails != 0 || oks != 10 {
		t.Errorf("after the limit was raised: %d failures, %d successes; want 0 and 10", fails, oks)
	}
	// And lowered again: they fail, and the route opens.
	st.SlowCall = 100 * time.Millisecond
	set.Update(st)
	for range 10 {
		if _, err := do(other); err != nil {
			break
		}
	}
	if got := set.State(other.Route); got != breaker.StateOpen {
		t.Errorf("after the limit was lowered: %v, want open", got)
	}
}
