//go:build soak

package app_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestMaxInflight: beyond max_inflight a request is answered 503 at once,
// DingTalk-shaped with Retry-After, and counted; once calls finish, requests
// are served again. The limit changes on reload.
func TestMaxInflight(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.MaxInflight = 2 })
	// The two calls in flight last 3 s at the fake: longer than a VM pause
	// between their start and the third call's refusal.
	s.fake.Script(dingtalktest.PathDeptList, dingtalktest.Latency(3*time.Second), dingtalktest.Latency(3*time.Second))
	done := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := s.client.Get(s.proxy.URL + dingtalktest.PathDeptList)
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	m := s.app.Metrics()
	eventually(t, "two calls in flight", func() float64 { return testutil.ToFloat64(m.Inflight) }, 2)
	start := time.Now()
	resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || errcodeOf(t, body) != -1 || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("third call: HTTP %d %s Retry-After %q, want 503 errcode -1 Retry-After 1", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// Answered at once: a refusal that queued behind the calls in flight
	// would wait ~3 s for them to end.
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("the refused call took %v: it waited instead of being answered at once", waited)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues(proxy.RouteRejected, "503")); got != 1 {
		t.Errorf("refused requests counted = %v, want 1", got)
	}
	for range 2 {
		if code := <-done; code != http.StatusOK {
			t.Errorf("call in flight: HTTP %d", code)
		}
	}
	eventually(t, "no call in flight", func() float64 { return testutil.ToFloat64(m.Inflight) }, 0)
	if resp, _ := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("after the calls ended: HTTP %d", resp.StatusCode)
	}
	next := *s.app.Config()
	next.MaxInflight = 1000
	if err := s.app.Apply(&next); err != nil {
		t.Fatal(err)
	}
	if s.app.Config().MaxInflight != 1000 {
		t.Errorf("max_inflight not reloaded")
	}
}
