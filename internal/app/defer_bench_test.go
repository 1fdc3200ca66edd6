package app_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// BenchmarkDeferred measures the deferral path as BenchmarkProxy measures
// the proxy: the client, dingproxy and the fake DingTalk in one process on
// loopback. Each case runs two ways in the same run, so that they compare
// as a ratio:
//
//   - via=dingproxy: a work notice through dingproxy without defer,
//     executed by the fake (the plain proxy's baseline);
//   - via=dingproxy-deferred: the same work notice on a route with defer
//     while pacing has no turn for it (pacing.per_api_qps 0.001: the first
//     call takes the only turn for a quarter of an hour), so every call is
//     kept (on disk, fsync'd, before its answer) and answered at once;
//   - via=dingproxy-robot-deferred: a robot alert whose robot's minute
//     is spent (20 alerts sent before the loop), every one kept per robot.
//
// serial is one client; parallel is 32 clients per core (a burst of
// alerts), where kept sends share fsyncs (group commit). Each row reports
// sends/s (the calls answered a second) besides ns/op, B/op, allocs/op and
// cpu-ns/op. Compare with
//
//	go test -run '^$' -bench '^BenchmarkDeferred$' -benchmem -count 6 ./internal/app > new.txt
//	benchstat -col /via -row /mode new.txt
//
// The fsync cost per send is the outbox's BenchmarkPut (commits/send).
func BenchmarkDeferred(b *testing.B) {
	notice := []byte(`{"agent_id":1,"userid_list":"manager4220","msg":{"msgtype":"text","text":{"content":"disk full on host-7"}}}`)
	alert := []byte(`{"msgtype":"text","text":{"content":"alert: disk full on host-7"}}`)
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	big := func(c *config.Config) { c.Outbox.MaxBytes = 8 << 30 } // a quarter for the one queue: past any run's sends

	type via struct {
		name     string
		path     string
		body     []byte
		deferred bool
		stack    func(b *testing.B) *stack
	}
	vias := []via{
		{"dingproxy", dingtalktest.PathAsyncSend, notice, false, func(b *testing.B) *stack { return newBenchStack(b) }},
		{"dingproxy-deferred", dingtalktest.PathAsyncSend, notice, true, func(b *testing.B) *stack {
			s := newStackTB(b, zap.NewNop(), deferOn(b, dingtalktest.PathAsyncSend, time.Hour, false), big,
				func(c *config.Config) { c.Pacing.PerAPIQPS = 0.001 })
			// The first notice takes pacing's only turn; it is delivered.
			if resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice); resp.StatusCode != 200 || resp.Header.Get("X-Dingproxy-Deferred") != "" {
				b.Fatalf("warm-up: %d %s", resp.StatusCode, body)
			}
			return s
		}},
		{"dingproxy-robot-deferred", robot, alert, true, func(b *testing.B) *stack {
			s := newStackTB(b, zap.NewNop(), deferOn(b, dingtalk.PathRobotSend, time.Hour, false), big)
			for range dingtalk.RobotPerMinute { // the robot's minute, spent
				if resp, body := s.do(http.MethodPost, robot, alert); resp.StatusCode != 200 || resp.Header.Get("X-Dingproxy-Deferred") != "" {
					b.Fatalf("warm-up: %d %s", resp.StatusCode, body)
				}
			}
			return s
		}},
	}
	for _, v := range vias {
		b.Run("mode=serial/via="+v.name, func(b *testing.B) {
			s := v.stack(b)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			kept0 := queued(s)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if !deferredSend(b, client, s.proxy.URL+v.path, v.body, v.deferred) {
					b.FailNow()
				}
			}
			reportSends(b)
			checkKept(b, s, v.deferred, kept0)
		})
		b.Run("mode=parallel/via="+v.name, func(b *testing.B) {
			s := v.stack(b)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			defer client.CloseIdleConnections()
			kept0 := queued(s)
			b.ReportAllocs()
			b.SetParallelism(32)
			defer reportCPU(b)()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if !deferredSend(b, client, s.proxy.URL+v.path, v.body, v.deferred) {
						return
					}
				}
			})
			b.StopTimer()
			reportSends(b)
			checkKept(b, s, v.deferred, kept0)
		})
	}
}

// deferredSend posts body to u and says whether it was answered 200, and
// deferred exactly when deferred says it must be.
func deferredSend(b *testing.B, client *http.Client, u string, body []byte, deferred bool) bool {
	resp, err := client.Post(u, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Error(err)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id := resp.Header.Get("X-Dingproxy-Deferred")
	if resp.StatusCode != http.StatusOK || (id != "") != deferred {
		b.Errorf("status %d, deferred %q; want 200, deferred %v", resp.StatusCode, id, deferred)
		return false
	}
	return true
}

// reportSends reports the calls answered a second.
func reportSends(b *testing.B) {
	if el := b.Elapsed(); el > 0 && b.N > 0 {
		b.ReportMetric(float64(b.N)/el.Seconds(), "sends/s")
	}
}

// queued is what the outbox holds queued, 0 without one.
func queued(s *stack) int {
	if s.app.Outbox() == nil {
		return 0
	}
	n := 0
	for _, r := range s.app.Outbox().Stats().Routes {
		n += r.Queued
	}
	return n
}

// checkKept fails b unless every deferred answer of the run is a send
// queued in the outbox (none delivered meanwhile: pacing has no turn).
func checkKept(b *testing.B, s *stack, deferred bool, before int) {
	if !deferred {
		return
	}
	if n := queued(s) - before; n != b.N {
		b.Fatalf("%d sends answered deferred, %d queued", b.N, n)
	}
}
