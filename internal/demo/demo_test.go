package demo

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The two tables keep their rows and a column per client. (What the demo
// shows, run for real, is checked by make soak: demo_soak_test.go.)
func TestTables(t *testing.T) {
	var buf bytes.Buffer
	PrintTable(&buf, []Result{
		{Mode: bench.Direct, Reads: 164, ReadsOK: 142, Sends: 76, SendsOK: 59, UpstreamAttempts: 254, P50: 13100 * time.Microsecond, P99: 438900 * time.Microsecond},
		{Mode: bench.Proxy, Reads: 164, ReadsOK: 163, Sends: 76, SendsOK: 58, UpstreamAttempts: 278, Throttled: 3},
	})
	for _, want := range []string{"direct", "dingproxy", "reads ok", "86.6% (142/164)", "99.4% (163/164)", "sends ok", "duplicate sends",
		"upstream attempts per call", "1.06", "throttle rejections per 100 attempts", "1.1", "p50 latency", "13.1 ms", "p99 latency", "438.9 ms"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != 8 {
		t.Errorf("%d lines, want a header and 7 rows:\n%s", n, buf.String())
	}
	buf.Reset()
	PrintOutageTable(&buf, []OutageResult{{Mode: bench.Direct, CallsDuring: 72, AttemptsDuring: 72}, {Mode: bench.Proxy, CallsDuring: 72, AttemptsDuring: 73, Fallbacks: 36, Recovery: 500 * time.Millisecond}, {Mode: bench.SDKRetry, Recovery: -1}})
	for _, want := range []string{"client calls during the outage", "answered by a fallback (whole run)", "1.01", "+0.5 s", "none"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("outage table lacks %q:\n%s", want, buf.String())
		}
	}
}
