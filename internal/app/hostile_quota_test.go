package app_test

import (
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"go.uber.org/zap"
)

// foreignToken is an access token of another organisation, whose monthly
// quota is spent: the fake answers every call with it 90020.
const foreignToken = "other-organisation-token"

// appCallsOK makes n calls of the app's own (the shared token injected) on
// a metered path through s and fails the test unless every one succeeds.
func appCallsOK(t *testing.T, s *stack, n int, what string) {
	t.Helper()
	for i := range n {
		resp, body := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{"offset":`+strconv.Itoa(i)+`}`))
		if resp.StatusCode != http.StatusOK || errcodeOf(t, body) != 0 || resp.Header.Get(proxy.HeaderFallback) != "" {
			t.Fatalf("%s: the app's own call %d: %d %q %s, want DingTalk's success", what, i, resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), body)
		}
	}
}

// A client's own token is that client's business: another organisation's
// 90020 comes back to that client as DingTalk said it, and stops nothing
// for the app, alone or in a fleet; nor does it spend the app's month.
func TestForeignQuotaStopsNothing(t *testing.T) {
	srv := redistest.Start(t)
	for _, mode := range []string{"alone", "shared"} {
		t.Run(mode, func(t *testing.T) {
			fake := dingtalktest.NewServer(t, dingtalktest.Options{ForeignToken: foreignToken})
			var fl []*stack
			if mode == "shared" {
				fl = fleetOf(t, 2, fake, srv.URL())
			} else {
				fl = []*stack{newStackOn(t, fake, zap.NewNop(), nil)}
			}
			for i := range 3 {
				resp, body := fl[0].do(http.MethodPost, dingtalktest.PathAttendanceList+"?access_token="+url.QueryEscape(foreignToken), []byte(`{"offset":`+strconv.Itoa(i)+`}`))
				if errcodeOf(t, body) != dingtalk.ErrcodeMonthlyQuota || resp.Header.Get(proxy.HeaderFallback) != "" {
					t.Fatalf("the other organisation's call: %d %q %s, want its own 90020 from DingTalk", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), body)
				}
			}
			for _, s := range fl {
				appCallsOK(t, s, 10, mode)
				if st := s.app.QuotaState(); st.Stopped != 0 || st.Used >= 0 {
					t.Errorf("%s: quota state %+v, want nothing stopped or learned from another organisation", mode, st)
				}
			}
			if st := fl[0].app.QuotaState(); st.Sent != 10 {
				t.Errorf("%s: the month counts %d calls, want the app's own 10", mode, st.Sent)
			}
		})
	}
}

// quota.monthly_budget is the app's: calls that DingTalk refused before
// executing (a bogus token of the client's, an API it does not know) do not
// spend it, so they cannot leave the app without calls for the month.
func TestRefusedCallsSpendNoBudget(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.Quota.MonthlyBudget = 40 })
	for i := range 40 {
		resp, body := s.do(http.MethodPost, dingtalktest.PathAttendanceList+"?access_token=BogusToken"+strconv.Itoa(i), []byte(`{}`))
		if errcodeOf(t, body) != dingtalk.ErrcodeTokenInvalid || resp.Header.Get(proxy.HeaderFallback) != "" {
			t.Fatalf("a bogus token: %d %s, want DingTalk's 40014", resp.StatusCode, body)
		}
	}
	for i := range 40 {
		resp, _ := s.do(http.MethodPost, "/topapi/unknown/api"+strconv.Itoa(i), []byte(`{}`))
		if resp.Header.Get(proxy.HeaderFallback) != "" {
			t.Fatalf("an unknown API: %d %q, want DingTalk's answer", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback))
		}
	}
	if st := s.app.QuotaState(); st.Sent != 0 {
		t.Errorf("the month counts %d calls after refused ones, want 0", st.Sent)
	}
	appCallsOK(t, s, 32, "under the budget")
	if st := s.app.QuotaState(); st.Sent != 32 {
		t.Errorf("the month counts %d, want the app's own 32", st.Sent)
	}
}
