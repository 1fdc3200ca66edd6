package resilience

import (
	"fmt"
	"io"
	"slices"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

// PrintTable writes rows as one table, a line per scenario and client;
// the rows that count deliveries are PrintDeliveries'.
func PrintTable(w io.Writer, rows []scenario.Row) error {
	t := bench.Table{Pad: 2, Widths: []int{15, 18}}
	t.Row("scenario", "client", "calls", "success", "dup sends", "attempts/call", "throttled/100", "after warm-up", "fallbacks", "p50", "p99")
	prev := ""
	n := 0
	for _, r := range rows {
		if r.HasDeliveries {
			continue
		}
		n++
		name := r.Scenario
		if name == prev {
			name = ""
		}
		prev = r.Scenario
		after := "-"
		if r.HasAfter {
			after = fmt.Sprintf("%.1f", r.ThrottledPer100After())
		}
		t.Row(name, string(r.Mode), fmt.Sprint(r.Calls), bench.Pct(r.OK, r.Calls), fmt.Sprint(r.Duplicates),
			fmt.Sprintf("%.2f", r.AttemptsPerCall()), fmt.Sprintf("%.1f", r.ThrottledPer100()), after,
			fmt.Sprint(r.Fallbacks), bench.Dur(r.P50), bench.Dur(r.P99))
	}
	if n == 0 {
		return nil
	}
	return t.Print(w)
}

// PrintDeliveries writes the rows that count what DingTalk delivered,
// message by message (the deferred group), as one table. It writes
// nothing when rows hold none.
func PrintDeliveries(w io.Writer, rows []scenario.Row) error {
	t := bench.Table{Pad: 2, Widths: []int{17, 22}}
	t.Row("scenario", "client", "messages", "answered ok", "kept", "delivered", "twice", "unknown", "into limit/block", "last delivery", "p50", "p99")
	prev, n := "", 0
	for _, r := range rows {
		if !r.HasDeliveries {
			continue
		}
		n++
		name := r.Scenario
		if name == prev {
			name = ""
		}
		prev = r.Scenario
		last := "-"
		if r.MessagesDelivered > 0 {
			last = bench.Dur(r.LastDelivery())
		}
		unknown := "-"
		if r.HasStates {
			unknown = fmt.Sprint(r.Unknown)
		}
		t.Row(name, string(r.Mode), fmt.Sprint(r.Messages), fmt.Sprint(r.OK), fmt.Sprint(r.Kept), fmt.Sprint(r.MessagesDelivered),
			fmt.Sprint(r.MessagesTwice), unknown, fmt.Sprint(r.RobotThrottled), last, bench.Dur(r.P50), bench.Dur(r.P99))
	}
	if n == 0 {
		return nil
	}
	return t.Print(w)
}

// PrintTargets writes the targets of the scenarios in rows as one table: a
// line per figure, a column per client, the bound and whether the judged
// client kept it ("-" for a figure only shown). It writes nothing when
// rows hold no scenario with targets.
func PrintTargets(w io.Writer, rows []scenario.Row) error {
	var modes []bench.Mode
	for _, r := range rows {
		if !slices.Contains(modes, r.Mode) && r.Mode != scenario.ProxyTuned {
			modes = append(modes, r.Mode)
		}
	}
	t := bench.Table{Pad: 2, Widths: []int{17, 46}}
	head := []string{"targets", "figure"}
	for _, m := range modes {
		head = append(head, string(m))
	}
	t.Row(append(head, "target", "verdict")...)
	lines := 0
	for _, sc := range scenario.All {
		first := true
		for _, tg := range sc.Targets {
			cells := []string{"", tg.Figure}
			if first {
				cells[0] = sc.Name
			}
			verdict, seen := "-", false
			for _, m := range modes {
				cell := "-"
				for _, r := range rows {
					if r.Scenario != sc.Name || r.Mode != m {
						continue
					}
					cell, seen = tg.Value(r), true
					if m == scenario.Judged(sc.Name) && tg.Met != nil {
						verdict = "MISSED"
						if tg.Met(r) {
							verdict = "met"
						}
					}
				}
				cells = append(cells, cell)
			}
			if !seen {
				continue
			}
			first = false
			lines++
			t.Row(append(cells, tg.Want, verdict)...)
		}
	}
	if lines == 0 {
		return nil
	}
	return t.Print(w)
}
