package breaker_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// TestJudge: the SPEC's breaker rules, as the verdict on a loop's report.
func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		rep  retry.Report
		want breaker.Verdict
	}{
		{retry.Report{Outcome: retry.Success}, breaker.Success},
		{retry.Report{Outcome: retry.ServerError, Reason: "http_5xx"}, breaker.Failure},
		{retry.Report{Outcome: retry.AfterSend, Reason: retry.ReasonReset}, breaker.Failure},
		{retry.Report{Outcome: retry.NotSent, Reason: retry.ReasonDialError}, breaker.Failure},
		{retry.Report{Outcome: retry.NotSent, Reason: retry.ReasonPaced}, breaker.Ignore},
		{retry.Report{Outcome: retry.NotSent, Reason: retry.ReasonTokenUnavailable}, breaker.Ignore},
		{retry.Report{Outcome: retry.Canceled, Reason: retry.ReasonTimeout}, breaker.Failure},
		{retry.Report{Outcome: retry.Canceled, Reason: retry.ReasonCanceled}, breaker.Ignore},
		{retry.Report{Outcome: retry.Business}, breaker.Ignore},
		{retry.Report{Outcome: retry.Throttled}, breaker.Ignore},
		{retry.Report{Outcome: retry.TokenInvalid}, breaker.Ignore},
	} {
		if got := breaker.Judge(tc.rep); got != tc.want {
			t.Errorf("Judge(%s/%s) = %v, want %v", tc.rep.Outcome, tc.rep.Reason, got, tc.want)
		}
	}
}

// loopFunc is a Loop that answers with a fixed report.
type loopFunc func() (*http.Response, retry.Report, error)

func (f loopFunc) Do(*http.Request, *retry.Facts) (*http.Response, retry.Report, error) { return f() }

// TestTransport: one call is one sample, an open route is an *OpenError
// without calling the loop, and an IP-ban answer bans every route and comes
// back as an ip-ban *OpenError inside a *retry.Error that counts the attempt.
func TestTransport(t *testing.T) {
	set := breaker.NewSet(breaker.Settings{FailureRatio: 0.5, MinRequests: 2, Window: time.Minute, OpenTimeout: time.Minute, HalfOpenRequests: 1, MaxRoutes: 8}, nil, nil)
	calls := 0
	failing := loopFunc(func() (*http.Response, retry.Report, error) {
		calls++
		return nil, retry.Report{Attempts: 3, Outcome: retry.ServerError}, errors.New("503")
	})
	tr := &breaker.Transport{Set: set, Next: failing}
	req, _ := http.NewRequest(http.MethodGet, "http://x/department/list", nil)
	f := &retry.Facts{Route: "/department/list"}
	for range 2 {
		tr.Do(req, f)
	}
	_, _, err := tr.Do(req, f)
	var open *breaker.OpenError
	if !errors.As(err, &open) || open.Kind != breaker.KindCircuitOpen || calls != 2 {
		t.Fatalf("after 2 failed calls: err %v, %d loop calls; want circuit-open without a third", err, calls)
	}

	banned := loopFunc(func() (*http.Response, retry.Report, error) {
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("<html>"))},
			retry.Report{Attempts: 1, Outcome: retry.IPBan, Result: dingtalk.Result{Wait: 2 * time.Minute}}, nil
	})
	tr = &breaker.Transport{Set: set, Next: banned}
	_, _, err = tr.Do(req, &retry.Facts{Route: "/topapi/v2/user/get"})
	var re *retry.Error
	if !errors.As(err, &open) || open.Kind != breaker.KindIPBan || !errors.As(err, &re) || re.Attempts != 1 {
		t.Fatalf("IP-ban answer: err %v, want an ip-ban OpenError in a retry.Error of 1 attempt", err)
	}
	if d := set.Banned(); d < time.Minute || d > 2*time.Minute {
		t.Errorf("banned for %v, want the answer's 2 minutes", d)
	}
}
