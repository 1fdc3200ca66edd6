package breaker_test

import (
	"errors"
	"io"
	"net/http"
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
