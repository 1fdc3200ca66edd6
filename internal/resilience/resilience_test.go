package resilience

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

func TestMain(m *testing.M) {
	scenario.ChildMain() // a dingproxy process of a scenario, when one is asked for
	goleak.VerifyTestMain(m)
}

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
	if len(Scenarios) != 21 || Scenarios[0] != scenario.Transient || Scenarios[15] != scenario.Cache || Scenarios[18] != scenario.Refused {
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

// The deferred group's rows: their own table, and targets that read what
// DingTalk delivered message by message, judged on dingproxy deferring.
func TestDeferredTargets(t *testing.T) {
	o := Options{Groups: []scenario.Group{scenario.GroupDeferred}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	want := []string{scenario.AlertBurst, scenario.AlertBurstMerge, scenario.Refused, scenario.Killed, scenario.FleetKilled}
	if got := scenario.Names(o.chosen()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the deferred group: %v, want %v", got, want)
	}
	burst := func(m bench.Mode, delivered, twice, blocked int, last, p99 time.Duration) scenario.Row {
		return scenario.Row{Scenario: scenario.AlertBurst, Mode: m, Calls: 60, OK: 60, HasDeliveries: true, Messages: 60,
			MessagesDelivered: delivered, MessagesTwice: twice, RobotThrottled: blocked, LastArrival: last, P99: p99}
	}
	rows := []scenario.Row{
		{Scenario: scenario.Throttle, Mode: bench.Proxy, Calls: 10, OK: 10},
		burst(bench.Direct, 20, 0, 40, 2*time.Second, time.Millisecond),
		burst(scenario.ProxyDeferred, 60, 0, 0, 125*time.Second, 60*time.Millisecond), // p99 missed
		burst(scenario.ProxyDeferred, 60, 1, 0, 75*time.Second, 5*time.Millisecond),   // twice, late
		{Scenario: scenario.Refused, Mode: scenario.ProxyDeferred, Calls: 30, OK: 30, Kept: 30, HasDeliveries: true, Messages: 30,
			MessagesDelivered: 30, LastArrival: 40 * time.Second, RefusedUntil: 15 * time.Second},
		{Scenario: scenario.Refused, Mode: bench.Direct, Calls: 30, HasDeliveries: true, Messages: 30},
	}
	rows[3].Scenario = scenario.AlertBurstMerge
	var got []string
	for _, v := range scenario.Check(rows) {
		if v.Row.Mode != scenario.ProxyDeferred {
			t.Errorf("%s: judged %s", v.Scenario, v.Row.Mode)
		}
		if !v.OK {
			got = append(got, v.Scenario+": "+v.Figure)
		}
	}
	missed := []string{
		scenario.AlertBurst + ": p99 answer (a kept send: once on disk)",
		scenario.AlertBurstMerge + ": delivered; the last from the first alert",
		scenario.AlertBurstMerge + ": messages delivered twice",
	}
	if strings.Join(got, "\n") != strings.Join(missed, "\n") {
		t.Errorf("missed:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(missed, "\n"))
	}
	var buf bytes.Buffer
	if err := PrintTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), scenario.AlertBurst) || !strings.Contains(buf.String(), scenario.Throttle) {
		t.Errorf("the main table holds the deliveries' rows, or lacks the others:\n%s", buf.String())
	}
	buf.Reset()
	if err := PrintDeliveries(&buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"into limit/block", "last delivery", "125.0 s", "25.0 s", "60.0 ms", scenario.Refused} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("the deliveries table lacks %q:\n%s", s, buf.String())
		}
	}
	if strings.Contains(buf.String(), scenario.Throttle) {
		t.Errorf("the deliveries table holds a row that counts none:\n%s", buf.String())
	}
	buf.Reset()
	if err := PrintTargets(&buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"60 of 60, 125.0 s", "60 of 60, <= 180 s", "60 of 60, <= 70 s", "30 of 30, 25.0 s", "0 of 30", "MISSED"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("the targets table lacks %q:\n%s", s, buf.String())
		}
	}
	buf.Reset()
	PrintDeliveries(&buf, rows[:1])
	if buf.Len() != 0 {
		t.Errorf("a deliveries table for no deliveries: %q", buf.String())
	}
}

// The kill scenarios' rows: the unknown sends in the deliveries table
// (read from dingproxy's processes only), and targets that allow one
// unknown send, never a lost one, within the bound plus the restart, or
// from the kill.
func TestKillTargets(t *testing.T) {
	kill := func(m bench.Mode, delivered, unknown int, last, restart time.Duration) scenario.Row {
		r := scenario.Row{Scenario: scenario.Killed, Mode: m, Calls: 60, OK: 60, HasDeliveries: true, Messages: 60,
			MessagesDelivered: delivered, LastArrival: last}
		if m == scenario.ProxyDeferred {
			r.Kept, r.HasKill, r.KilledAt, r.Restart, r.HasStates, r.Unknown = 40, true, 9*time.Second, restart, true, unknown
		}
		return r
	}
	fleet := func(delivered, unknown int, holder bool, last time.Duration) scenario.Row {
		return scenario.Row{Scenario: scenario.FleetKilled, Mode: scenario.ProxyFleetDeferred, Calls: 30, OK: 30, Kept: 30,
			HasDeliveries: true, Messages: 30, MessagesDelivered: delivered, LastArrival: last, RefusedUntil: 15 * time.Second,
			HasKill: true, KilledAt: 9 * time.Second, KilledHolder: holder, KilledRefused: true, HasStates: true, Unknown: unknown}
	}
	cases := []struct {
		name   string
		row    scenario.Row
		missed []string
	}{
		{"one unknown, within the bound plus the restart", kill(scenario.ProxyDeferred, 59, 1, 180*time.Second+100*time.Millisecond, 200*time.Millisecond), nil},
		{"one lost, not unknown", kill(scenario.ProxyDeferred, 59, 0, 150*time.Second, 200*time.Millisecond),
			[]string{"delivered; the last from the first alert"}},
		{"two unknown, late", kill(scenario.ProxyDeferred, 58, 2, 181*time.Second, 200*time.Millisecond),
			[]string{"delivered; the last from the first alert", "kept sends unknown (on the wire at the kill)"}},
		{"fleet: every one within 60 s of the kill", fleet(30, 0, true, 68*time.Second), nil},
		{"fleet: late, and not the holder killed", fleet(30, 0, false, 70*time.Second),
			[]string{"killed: the lease holder, DingTalk refusing", "delivered; the last from the kill"}},
	}
	for _, c := range cases {
		var got []string
		for _, v := range scenario.Check([]scenario.Row{c.row}) {
			if !v.OK {
				got = append(got, v.Figure)
			}
		}
		if strings.Join(got, "\n") != strings.Join(c.missed, "\n") {
			t.Errorf("%s: missed %q, want %q", c.name, got, c.missed)
		}
	}
	rows := []scenario.Row{kill(bench.Direct, 20, 0, 2*time.Second, 0), kill(scenario.ProxyDeferred, 59, 1, 150*time.Second, 250*time.Millisecond),
		fleet(30, 0, true, 20*time.Second)}
	var buf bytes.Buffer
	if err := PrintDeliveries(&buf, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "unknown") {
		t.Fatalf("the deliveries table:\n%s", buf.String())
	}
	// The plain client's unknown is not read ("-"), dingproxy's is.
	for i, want := range []string{"20  0  -  0", "59  0  1  0", "30  0  0  0"} {
		if !strings.Contains(strings.Join(strings.Fields(lines[i+1]), "  "), want) {
			t.Errorf("line %d lacks %q:\n%s", i+1, want, buf.String())
		}
	}
	buf.Reset()
	if err := PrintTargets(&buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"59 of 60 (1 unknown), 150.0 s", ">= 59 of 60, the rest unknown; <= 180 s + restart", "250.0 ms",
		"30 of 30, 11.0 s", ">= 29 of 30, the rest unknown; <= 60 s", string(scenario.ProxyFleetDeferred)} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("the targets table lacks %q:\n%s", s, buf.String())
		}
	}
}
