//go:build soak

package app_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"go.uber.org/zap"
)

// TestFleetBurstWithinTheLimitGoesAtOnce: a page that makes ten calls at
// once, through four proxies of one app, is answered at once in a fleet as
// alone: the fleet's pacing lets a burst within DingTalk's limit go (18 of
// a second's 20 at per_api_qps 20), as pacing alone does. Four proxies
// making ten calls each, twice the limit, are logged alone and shared for
// the record: alone they send them all at once (DingTalk would throttle
// half), shared they keep to the limit.
func TestFleetBurstWithinTheLimitGoesAtOnce(t *testing.T) {
	srv := redistest.Start(t)
	burst := func(t *testing.T, stacks []*stack, each int) (p50, worst time.Duration) {
		t.Helper()
		var mu sync.Mutex
		var took []time.Duration
		var wg sync.WaitGroup
		for i, s := range stacks {
			wg.Go(func() {
				for n := range each {
					start := time.Now()
					resp, _ := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(fmt.Sprintf(`{"userid":"u%d-%d"}`, i, n)))
					d := time.Since(start)
					if resp.StatusCode != http.StatusOK {
						t.Errorf("proxy %d call %d: %d", i, n, resp.StatusCode)
					}
					mu.Lock()
					took = append(took, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(took)
		return took[len(took)/2], took[len(took)-1]
	}
	for _, mode := range []string{"alone", "shared"} {
		t.Run(mode, func(t *testing.T) {
			fake := dingtalktest.NewServer(t, dingtalktest.Options{})
			fake.SetQPSLimit(20) // DingTalk's, per API per app
			var stacks []*stack
			if mode == "shared" {
				stacks = fleetOf(t, 4, fake, srv.URL())
			} else {
				for range 4 {
					stacks = append(stacks, newStackOn(t, fake, zap.NewNop(), nil))
				}
			}
			for _, s := range stacks { // tokens fetched, connections made
				s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
			}
			time.Sleep(1100 * time.Millisecond) // the warm-up's turns out of the window
			// Ten calls at once, spread over the four proxies.
			var wg sync.WaitGroup
			var mu sync.Mutex
			var took []time.Duration
			for i := range 10 {
				wg.Go(func() {
					start := time.Now()
					stacks[i%4].do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"page"}`))
					mu.Lock()
					took = append(took, time.Since(start))
					mu.Unlock()
				})
			}
			wg.Wait()
			slices.Sort(took)
			if worst := took[len(took)-1]; worst > 500*time.Millisecond {
				t.Errorf("%s: ten calls at once, the slowest took %v; want all at once (under the limit)", mode, worst)
			}
			t.Logf("%s: ten calls at once: p50 %v, slowest %v", mode, took[len(took)/2], took[len(took)-1])
			time.Sleep(1100 * time.Millisecond)
			p50, worst := burst(t, stacks, 10)
			t.Logf("%s: four proxies, ten back-to-back calls each (twice the limit): p50 %v, slowest %v; DingTalk throttled %d",
				mode, p50, worst, fake.Throttled())
		})
	}
}
