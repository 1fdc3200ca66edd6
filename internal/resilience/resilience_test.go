package resilience

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Only: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Errorf("unknown scenario: err = %v", err)
	}
	if _, err := Run(context.Background(), Options{Only: []string{scenario.Demo}}); err == nil {
		t.Error("the benchmark ran the demo's scenario")
	}
	if _, err := Run(context.Background(), Options{Groups: []scenario.Group{scenario.GroupLoad}}); err == nil || !strings.Contains(err.Error(), "unknown group") {
		t.Errorf("the load group: err = %v", err)
	}
	// A group and a name: the group's scenarios and the one named, in
	// table order.
	o := Options{Only: []string{scenario.Cache}, Groups: []scenario.Group{scenario.GroupFleet}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	want := []string{scenario.SharedThrottle, scenario.SharedTokens, scenario.SharedOutage, scenario.SharedBan, scenario.RedisKilled, scenario.Cache}
	if got := scenario.Names(o.chosen()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("chosen %v, want %v", got, want)
	}
	if len(Scenarios) != 16 || Scenarios[0] != scenario.Transient || Scenarios[15] != scenario.Cache {
		t.Errorf("the benchmark's scenarios: %v", Scenarios)
	}
	var buf bytes.Buffer
	if err := PrintTable(&buf, []scenario.Row{{Scenario: scenario.Throttle, Mode: bench.Proxy, Calls: 10, OK: 10, UpstreamAttempts: 10, HasAfter: true, AfterAttempts: 5}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"success", "dup sends", "attempts/call", "throttled/100", "after warm-up", "p50", "p99", "100.0%", "dingproxy"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}

// The targets table and Check read the rows as the pacing scenarios' targets
// word them.
func TestTargets(t *testing.T) {
	rows := []scenario.Row{
		{Scenario: scenario.Unknown, Mode: bench.Direct, Calls: 100, OK: 50, UpstreamAttempts: 100, Throttled: 50},
		{Scenario: scenario.Unknown, Mode: bench.Proxy, Calls: 100, OK: 100, UpstreamAttempts: 102, Throttled: 2, HasAfter: true, AfterAttempts: 70, AfterThrottled: 1},
		{Scenario: scenario.Fleet, Mode: bench.Proxy, Calls: 400, OK: 400, UpstreamAttempts: 410, Throttled: 10, Limit: 20, Accepted: 15, HasAccepted: true, Shares: []float64{0.25, 0.3, 0.25, 0.2}},
		{Scenario: scenario.Robot, Mode: bench.Proxy, Calls: 40, Deliver: 20, Delivered: 20, DeliveredAtOnce: 20, Paced: 20, PacedAtOnce: 20},
		{Scenario: scenario.Robots, Mode: bench.Proxy, Calls: 50, Deliver: 50, Delivered: 50, DeliveredAtOnce: 49},
		{Scenario: scenario.SharedThrottle, Mode: scenario.ProxyShared, Calls: 400, OK: 400, UpstreamAttempts: 400, Limit: 20, Accepted: 18, HasAccepted: true},
	}
	missed := map[string]bool{}
	for _, v := range scenario.Check(rows) {
		if !v.OK {
			missed[v.Scenario+": "+v.Figure] = true
		}
		if v.Scenario == scenario.SharedThrottle && strings.HasPrefix(v.Figure, "accepted") {
			t.Errorf("a figure only shown was judged: %s", v.Figure)
		}
	}
	want := map[string]bool{
		scenario.Unknown + ": the same after the first 3 s":            true, // 1.4 per 100
		scenario.Fleet + ": accepted per second after 3 s / the limit": true, // 0.75
		scenario.Robots + ": 5 robots x 10: delivered at once":         true, // 49 of 50
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
	for _, s := range []string{"0.75 (15.0/s)", "20.0%", "20 of 20", "49 of 50", "MISSED", "met", "50.0", "0.90 (18.0/s)"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("targets table lacks %q:\n%s", s, buf.String())
		}
	}
	for line := range strings.Lines(buf.String()) {
		if strings.Contains(line, "(shown)") && !strings.HasSuffix(strings.TrimSpace(line), "-") {
			t.Errorf("a figure only shown has a verdict: %q", line)
		}
	}
	buf.Reset()
	PrintTargets(&buf, rows[:0])
	if buf.Len() != 0 {
		t.Errorf("targets table for no rows: %q", buf.String())
	}
}
