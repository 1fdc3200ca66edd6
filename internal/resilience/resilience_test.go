package resilience

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Only: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Errorf("unknown scenario: err = %v", err)
	}
	var buf bytes.Buffer
	if err := PrintTable(&buf, []Row{{Scenario: Throttle, Mode: bench.Proxy, Calls: 10, OK: 10, UpstreamAttempts: 10, HasAfter: true, AfterAttempts: 5}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"success", "dup sends", "attempts/call", "throttled/100", "after warm-up", "p50", "p99", "100.0%", "dingproxy"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	for _, s := range Scenarios {
		if Describe(s, 1) == s {
			t.Errorf("scenario %s has no description", s)
		}
	}
}

// The targets table and Check read the rows as issue 14 words its targets.
func TestTargets(t *testing.T) {
	rows := []Row{
		{Scenario: Unknown, Mode: bench.Direct, Calls: 100, OK: 50, UpstreamAttempts: 100, Throttled: 50},
		{Scenario: Unknown, Mode: bench.Proxy, Calls: 100, OK: 100, UpstreamAttempts: 102, Throttled: 2, HasAfter: true, AfterAttempts: 70, AfterThrottled: 1},
		{Scenario: Fleet, Mode: bench.Proxy, Calls: 400, OK: 400, UpstreamAttempts: 410, Throttled: 10, Limit: 20, Accepted: 15, HasAccepted: true, Shares: []float64{0.25, 0.3, 0.25, 0.2}},
		{Scenario: Robot, Mode: bench.Proxy, Calls: 40, Deliver: 20, Delivered: 20, DeliveredAtOnce: 20, Paced: 20, PacedAtOnce: 20},
		{Scenario: Robots, Mode: bench.Proxy, Calls: 50, Deliver: 50, Delivered: 50, DeliveredAtOnce: 49},
	}
	missed := map[string]bool{}
	for _, v := range Check(rows) {
		if !v.OK {
			missed[v.Scenario+": "+v.Figure] = true
		}
	}
	want := map[string]bool{
		Unknown + ": the same after the first 3 s":            true, // 1.4 per 100
		Fleet + ": accepted per second after 3 s / the limit": true, // 0.75
		Robots + ": 5 robots x 10: delivered at once":         true, // 49 of 50
	}
	for k := range want {
		if !missed[k] {
			t.Errorf("%s: not missed", k)
		}
	}
	for k := range missed {
		if !want[k] {
			t.Errorf("%s: missed", k)
		}
	}
	var buf bytes.Buffer
	if err := PrintTargets(&buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"0.75 (15.0/s)", "20.0%", "20 of 20", "49 of 50", "MISSED", "met", "50.0"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("targets table lacks %q:\n%s", s, buf.String())
		}
	}
	buf.Reset()
	PrintTargets(&buf, rows[:0])
	if buf.Len() != 0 {
		t.Errorf("targets table for no rows: %q", buf.String())
	}
}
