package demo

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The two tables keep their rows and a column per client. (What the demo
// shows, run for real, is checked by make soak: demo_soak_test.go.)
func TestTables(t *testing.T) {
	var buf bytes.Buffer
	PrintTable(&buf, []scenario.Row{
		{Mode: bench.Direct, Calls: 240, Reads: 164, ReadsOK: 142, Sends: 76, SendsOK: 59, UpstreamAttempts: 254, P50: 13100 * time.Microsecond, P99: 438900 * time.Microsecond},
		{Mode: bench.Proxy, Calls: 240, Reads: 164, ReadsOK: 163, Sends: 76, SendsOK: 58, UpstreamAttempts: 278, Throttled: 3},
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
	PrintOutageTable(&buf, []scenario.Row{
		{Mode: bench.Direct, Outage: true, CallsDuring: 72, AttemptsDuring: 72, Recovered: true},
		{Mode: bench.Proxy, Outage: true, CallsDuring: 72, AttemptsDuring: 73, Fallbacks: 36, Recovered: true, Recovery: 500 * time.Millisecond},
		{Mode: bench.SDKRetry, Outage: true, Recovered: true, Recovery: -1},
	})
	for _, want := range []string{"client calls during the outage", "answered by a fallback (whole run)", "1.01", "+0.5 s", "none"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("outage table lacks %q:\n%s", want, buf.String())
		}
	}
}

// The options change the demo's scenarios and nothing else; zero keeps
// the table's.
func TestOptions(t *testing.T) {
	def := scenario.Must(scenario.Demo)
	sc, err := Options{}.Scenario()
	if err != nil || sc.Calls != def.Calls || sc.Rate != def.Rate || scenario.ChaosSpec(sc.Faults.Chaos) != DefaultFaults || len(sc.Clients) != 3 {
		t.Errorf("defaults: %+v, %v", sc, err)
	}
	sc, err = Options{Calls: 500, Rate: 100, Faults: "system-busy=0.1", Modes: []bench.Mode{bench.Proxy}}.Scenario()
	if err != nil || sc.Calls != 500 || sc.Rate != 100 || scenario.ChaosSpec(sc.Faults.Chaos) != "system-busy=0.1" || len(sc.Clients) != 1 {
		t.Errorf("changed: %+v, %v", sc, err)
	}
	if !strings.Contains(sc.Describe(1), "500 ") || !strings.Contains(sc.Describe(1), "100/s") {
		t.Errorf("the description does not follow the options: %s", sc.Describe(1))
	}
	if def.Calls != scenario.Must(scenario.Demo).Calls || def.Faults.QPSLimit == 0 {
		t.Error("changing the options changed the table")
	}
	if _, err := (Options{Faults: "nope=1"}).Scenario(); err == nil {
		t.Error("a bad fault spec was taken")
	}
	def = scenario.Must(scenario.DemoOutage)
	out := OutageOptions{}.Scenario()
	if out.Faults.Outage.For != def.Faults.Outage.For || out.Duration != def.Duration || out.Tune != def.Tune {
		t.Errorf("outage defaults: %+v", out)
	}
	out = OutageOptions{Down: 2 * time.Second, After: 4 * time.Second, OpenTimeout: time.Second}.Scenario()
	if out.Faults.Outage.For != 2*time.Second || out.Duration != 6*time.Second || out.Tune.OpenTimeout != time.Second {
		t.Errorf("outage changed: %+v", out)
	}
	if scenario.Must(scenario.DemoOutage).Faults.Outage.For != def.Faults.Outage.For {
		t.Error("changing the outage's options changed the table")
	}
}
