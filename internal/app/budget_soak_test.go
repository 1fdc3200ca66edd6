//go:build soak

package app_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// TestRetryBudgetUnderStress: with every call failing and the breaker kept
// out of the way, retries stay within retry.budget (20 % of recent calls
// plus 5 a second), so DingTalk sees about 1.2x the client's calls, not the
// 4x that max_attempts alone would allow.
func TestRetryBudgetUnderStress(t *testing.T) {
	if testing.Short() {
		t.Skip("5 s of load")
	}
	s := newStack(t, nil, func(c *config.Config) { c.Breaker.MinRequests = 1 << 30 })
	down := dingtalktest.PathUserGet
	s.fake.SetChaos(dingtalktest.Chaos{Paths: []string{down}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})
	const rate, calls = 100, 500
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range calls {
		time.Sleep(time.Until(begin.Add(time.Duration(i) * time.Second / rate))) // pacing the load
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.do(http.MethodPost, down, []byte(`{"userid":"u1"}`))
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	perCall := float64(s.fake.Hits(down)) / calls
	t.Logf("%d calls in %v, all failing: %d upstream attempts, %.2f per call", calls, elapsed.Round(time.Millisecond), s.fake.Hits(down), perCall)
	// 0.2 x 500 calls, plus 5 a second for as long as the calls ran (5 s
	// if the machine keeps up, when that is about 1.25 a call).
	b := config.Default().Retry.Budget
	if most := 1 + retry.MaxRetries(b.Ratio, b.MinPerSecond, calls, elapsed)/calls; perCall > most {
		t.Errorf("upstream attempts per call = %.2f, want at most %.2f (budget 0.2 + 5/s at 100 calls/s, over %v)", perCall, most, elapsed.Round(time.Millisecond))
	}
	// On a machine too slow to keep the 5 s schedule, calls run out of
	// retry.timeout before their retries: too few retries says nothing then.
	if elapsed < 10*time.Second && perCall < 1.1 {
		t.Errorf("upstream attempts per call = %.2f: the budget allowed almost no retries", perCall)
	}
}
