package resilience

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// PrintTable writes rows as one table, a line per scenario and client.
func PrintTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	line := func(cells ...string) {
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	line(fmt.Sprintf("%-10s", "scenario"), fmt.Sprintf("%-18s", "client"), "calls", "success", "dup sends", "attempts/call",
		"throttled/100", "after 1 s", "fallbacks", "p50", "p99")
	prev := ""
	for _, r := range rows {
		name := r.Scenario
		if name == prev {
			name = ""
		}
		prev = r.Scenario
		after := "-"
		if r.HasAfter1s {
			after = fmt.Sprintf("%.1f", r.ThrottledPer100After1s())
		}
		line(fmt.Sprintf("%-10s", name), fmt.Sprintf("%-18s", r.Mode),
			fmt.Sprint(r.Calls),
			fmt.Sprintf("%.1f%%", 100*r.Success()),
			fmt.Sprint(r.Duplicates),
			fmt.Sprintf("%.2f", r.AttemptsPerCall()),
			fmt.Sprintf("%.1f", r.ThrottledPer100()),
			after,
			fmt.Sprint(r.Fallbacks),
			dur(r.P50), dur(r.P99))
	}
	return tw.Flush()
}

func dur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}
