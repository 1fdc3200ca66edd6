//go:build soak

package app_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestQuotaOrganisationStopTarget: an organisation with a quota of 50 whose
// DingTalk meters two reads the proxy's list calls free. 200 of them at
// 20/s (open loop) over the two paths: DingTalk answers 90020 at most once
// per path (plus calls already in flight), every later call is answered
// quota by the proxy at once (p99 under 100 ms), and a third metered path
// called afterwards gets quota without reaching DingTalk.
func TestQuotaOrganisationStopTarget(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{MonthlyQuota: 50, Metered: dingtalktest.MeterEverything})
	s := newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil)
	paths := []string{dingtalktest.PathUserGet, dingtalktest.PathDeptListSub}
	const calls, rate = 200, 20
	type result struct {
		quota, told bool // answered quota by the proxy; 90020 by DingTalk
		took        time.Duration
		at          time.Time
	}
	results := make([]result, calls)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range calls {
		<-tick.C
		wg.Go(func() {
			start := time.Now()
			resp, body := s.do(http.MethodPost, paths[i%2], fmt.Appendf(nil, `{"userid":"u%d","dept_id":%d}`, i, i))
			quota := resp.Header.Get(proxy.HeaderFallback) == proxy.KindQuota
			results[i] = result{quota, !quota && errcodeOf(t, body) == 90020, time.Since(start), start}
		})
	}
	wg.Wait()
	rejected := fake.QuotaRejected(paths[0]) + fake.QuotaRejected(paths[1])
	// Calls in flight when DingTalk's 90020 came back: those the proxy did
	// not answer itself, started before the answer and still going.
	var took []time.Duration
	inflight := 0
	for i, r := range results {
		if r.quota {
			took = append(took, r.took)
		}
		if !r.told {
			continue
		}
		for j, o := range results {
			if j != i && !o.quota && o.at.Before(r.at.Add(r.took)) && o.at.Add(o.took).After(r.at.Add(r.took)) {
				inflight++
			}
		}
	}
	if len(took) == 0 {
		t.Fatal("no call was answered quota by the proxy")
	}
	slices.Sort(took)
	p99 := took[len(took)*99/100]
	t.Logf("DingTalk answered 90020 %d times (%s %d, %s %d; %d calls in flight then); %d calls answered quota by the proxy, p50 %v, p99 %v",
		rejected, paths[0], fake.QuotaRejected(paths[0]), paths[1], fake.QuotaRejected(paths[1]), inflight, len(took), took[len(took)/2], p99)
	if rejected > 2+inflight {
		t.Errorf("DingTalk answered 90020 %d times, want at most twice plus calls in flight (%d)", rejected, inflight)
	}
	if want := calls - 50 - rejected; len(took) != want {
		t.Errorf("%d calls answered quota by the proxy, want every call past the quota DingTalk did not answer itself (%d)", len(took), want)
	}
	if p99 >= 100*time.Millisecond {
		t.Errorf("quota answers p99 %v, want under 100ms", p99)
	}
	resp, body := s.do(http.MethodPost, dingtalktest.PathAttendanceList, []byte(`{}`))
	if resp.Header.Get(proxy.HeaderFallback) != proxy.KindQuota || fake.Hits(dingtalktest.PathAttendanceList) != 0 {
		t.Errorf("a third metered path: %d %s, DingTalk saw %d; want quota, not sent", resp.StatusCode, body, fake.Hits(dingtalktest.PathAttendanceList))
	}
}
