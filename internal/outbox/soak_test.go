//go:build soak

package outbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestPutThroughputTarget: the store accepts at least 1,000 sends a second
// with real fsync on a real temporary directory, from 64 callers at once
// (group commit). A single caller's rate (one fsync per send) is logged.
func TestPutThroughputTarget(t *testing.T) {
	s, _ := newStore(t)
	const callers, each = 64, 100
	start := time.Now()
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.Put(context.Background(), robotSend(fmt.Sprint("robot:", c%8), i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	rate := callers * each / el.Seconds()
	perSend := time.Duration(s.commitNanos.Load() / s.committed.Load())
	t.Logf("%d callers: %.0f sends/s, %.1f sends per commit, %v of commit (write and fsync) per send",
		callers, rate, float64(s.committed.Load())/float64(s.commits.Load()), perSend)
	if rate < 1000 {
		t.Errorf("%.0f sends a second from %d callers, want at least 1,000", rate, callers)
	}

	serial := 300
	start = time.Now()
	for i := range serial {
		put(t, s, robotSend("robot:serial", i))
	}
	t.Logf("1 caller: %.0f sends/s (one fsync each)", float64(serial)/time.Since(start).Seconds())
}
