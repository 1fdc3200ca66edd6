package resilience

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
)

// Target is one of issue 14's or 15's targets: a figure of a scenario's
// row, and the bound dingproxy (or, in issue 15's scenarios, dingproxy
// shared) must keep.
type Target struct {
	Scenario string
	Figure   string // what is measured, in words
	Want     string // the bound, in words
	Value    func(Row) string
	Met      func(Row) bool
}

// judged is the client whose row a scenario's targets judge.
func judged(scenario string) bench.Mode {
	if slices.Contains(FleetScenarios, scenario) {
		return ProxyShared
	}
	return bench.Proxy
}

// Targets are issue 14's targets on pacing and issue 15's on the fleet, in
// table order.
var Targets = []Target{
	{Unknown, "throttled per 100 upstream attempts", "<= 5",
		func(r Row) string { return fmt.Sprintf("%.1f", r.ThrottledPer100()) },
		func(r Row) bool { return r.ThrottledPer100() <= 5 }},
	{Unknown, "the same after the first 3 s", "<= 1",
		func(r Row) string { return after(r) },
		func(r Row) bool { return r.HasAfter && r.ThrottledPer100After() <= 1 }},
	{Unknown, "upstream attempts per call", "<= 1.3",
		func(r Row) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) },
		func(r Row) bool { return r.AttemptsPerCall() <= 1.3 }},
	{Fleet, "throttled per 100 upstream attempts", "<= 10",
		func(r Row) string { return fmt.Sprintf("%.1f", r.ThrottledPer100()) },
		func(r Row) bool { return r.ThrottledPer100() <= 10 }},
	{Fleet, "accepted per second after 3 s / the limit", "0.85 - 1.15", acceptedValue,
		func(r Row) bool { a := r.AcceptedOfLimit(); return r.HasAccepted && a >= 0.85 && a <= 1.15 }},
	{Fleet, "least replica's share of the successes", ">= 15%",
		func(r Row) string { return fmt.Sprintf("%.1f%%", 100*r.LeastShare()) },
		func(r Row) bool { return r.LeastShare() >= 0.15 }},
	{Robot, "sends into DingTalk's robot throttle", "0",
		func(r Row) string { return fmt.Sprint(r.RobotThrottled) },
		func(r Row) bool { return r.RobotThrottled == 0 }},
	{Robot, "first 20 delivered at once (< 1 s)", "20 of 20",
		func(r Row) string { return fmt.Sprintf("%d of %d", r.DeliveredAtOnce, min(r.Deliver, r.Calls)) },
		func(r Row) bool { return r.DeliveredAtOnce == min(r.Deliver, r.Calls) }},
	{Robot, "the rest answered 429 paced at once", "20 of 20",
		func(r Row) string { return fmt.Sprintf("%d of %d", r.PacedAtOnce, max(r.Calls-r.Deliver, 0)) },
		func(r Row) bool { return r.PacedAtOnce == max(r.Calls-r.Deliver, 0) }},
	{Robots, "5 robots x 10: delivered at once", "50 of 50",
		func(r Row) string { return fmt.Sprintf("%d of %d", r.DeliveredAtOnce, r.Calls) },
		func(r Row) bool { return r.DeliveredAtOnce == r.Calls }},

	// Issue 15: the fleet shared through Redis.
	{SharedThrottle, "throttled per 100 upstream attempts", "<= 1",
		func(r Row) string { return fmt.Sprintf("%.1f", r.ThrottledPer100()) },
		func(r Row) bool { return r.ThrottledPer100() <= 1 }},
	{SharedThrottle, "accepted per second after 3 s / the limit", "(shown)", acceptedValue,
		func(Row) bool { return true }},
	{SharedTokens, "token fetches (one revocation)", "2",
		func(r Row) string { return fmt.Sprint(r.TokenFetches) },
		func(r Row) bool { return r.TokenFetches == 2 }},
	{SharedTokens, "calls that succeeded", ">= 99%", successValue, success99},
	{SharedOutage, "upstream attempts per call", "<= alone / 2",
		func(r Row) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) },
		func(r Row) bool { return r.Alone != nil && r.AttemptsPerCall() <= r.Alone.AttemptsPerCall()/2 }},
	{SharedBan, "calls reaching DingTalk once it banned the IP", "1",
		func(r Row) string {
			if !r.HasBan {
				return "-"
			}
			return fmt.Sprint(r.BanCalls)
		},
		func(r Row) bool { return r.HasBan && r.BanCalls <= 1 }},
	{RedisKilled, "calls that succeeded", ">= 99%", successValue, success99},
	{RedisKilled, "p99", "<= alone + 100 ms",
		func(r Row) string { return bench.Dur(r.P99) },
		func(r Row) bool { return r.Alone != nil && r.P99 <= r.Alone.P99+100*time.Millisecond }},
	{RedisKilled, "every proxy sharing again after Redis is back", "<= 5 s",
		func(r Row) string {
			if !r.HasShareAgain {
				return "-"
			}
			return bench.Dur(r.ShareAgain)
		},
		func(r Row) bool { return r.HasShareAgain && r.ShareAgain <= 5*time.Second }},

	// Issue 16: the monthly quota and the read cache.
	{Quota, "calls DingTalk answered 90020 (2 APIs)", "<= 2 + in flight",
		func(r Row) string { return fmt.Sprint(r.QuotaRejected) },
		func(r Row) bool { return r.QuotaRejected <= 2+4 }},
	{Quota, "calls past the quota answered quota, their p99", "< 100 ms",
		func(r Row) string {
			if r.QuotaAnswered == 0 {
				return "-"
			}
			return fmt.Sprintf("%d, %s", r.QuotaAnswered, bench.Dur(r.QuotaP99))
		},
		func(r Row) bool {
			return r.QuotaAnswered+r.QuotaRejected == r.Calls-QuotaMonthly && r.QuotaP99 < 100*time.Millisecond
		}},
	{Cache, "reads DingTalk saw of 100 identical", "<= 2",
		func(r Row) string { return fmt.Sprint(r.UpstreamAttempts) },
		func(r Row) bool { return r.UpstreamAttempts <= 2 }},
	{Cache, "answers marked hit", ">= 98",
		func(r Row) string { return fmt.Sprint(r.CacheHits) },
		func(r Row) bool { return r.CacheHits >= r.Calls-2 }},
}

func acceptedValue(r Row) string {
	if !r.HasAccepted {
		return "-"
	}
	return fmt.Sprintf("%.2f (%.1f/s)", r.AcceptedOfLimit(), r.Accepted)
}

func successValue(r Row) string { return fmt.Sprintf("%.1f%%", 100*r.Success()) }

func success99(r Row) bool { return r.Success() >= 0.99 }

func after(r Row) string {
	if !r.HasAfter {
		return "-"
	}
	return fmt.Sprintf("%.1f", r.ThrottledPer100After())
}

// Verdict is a target checked on dingproxy's row.
type Verdict struct {
	Target
	Row Row
	OK  bool
}

// Check checks the targets of the scenarios rows hold on dingproxy's rows.
func Check(rows []Row) []Verdict {
	var out []Verdict
	for _, t := range Targets {
		for _, r := range rows {
			if r.Scenario == t.Scenario && r.Mode == judged(t.Scenario) {
				out = append(out, Verdict{Target: t, Row: r, OK: t.Met(r)})
			}
		}
	}
	return out
}

// PrintTargets writes the targets of the scenarios in rows as one table: a
// line per figure, a column per client, the bound and whether dingproxy
// kept it. It writes nothing when rows hold no such scenario.
func PrintTargets(w io.Writer, rows []Row) error {
	var modes []bench.Mode
	for _, r := range rows {
		if !slices.Contains(modes, r.Mode) && r.Mode != ProxyTuned {
			modes = append(modes, r.Mode)
		}
	}
	t := bench.Table{Pad: 2, Widths: []int{15, 46}}
	head := []string{"targets", "figure"}
	for _, m := range modes {
		head = append(head, string(m))
	}
	t.Row(append(head, "target", "verdict")...)
	lines, prev := 0, ""
	for _, tg := range Targets {
		cells := []string{tg.Scenario, tg.Figure}
		if tg.Scenario == prev {
			cells[0] = ""
		}
		verdict, seen := "-", false
		for _, m := range modes {
			cell := "-"
			for _, r := range rows {
				if r.Scenario == tg.Scenario && r.Mode == m {
					cell, seen = tg.Value(r), true
					if m == judged(tg.Scenario) {
						verdict = "MISSED"
						if tg.Met(r) {
							verdict = "met"
						}
					}
				}
			}
			cells = append(cells, cell)
		}
		if !seen {
			continue
		}
		prev = tg.Scenario
		lines++
		t.Row(append(cells, tg.Want, verdict)...)
	}
	if lines == 0 {
		return nil
	}
	return t.Print(w)
}
