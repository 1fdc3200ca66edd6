package demo

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// PrintTable writes the results side by side.
func PrintTable(w io.Writer, rs []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	row := func(name string, f func(Result) string) {
		cells := []string{fmt.Sprintf("%-36s", name)}
		for _, r := range rs {
			cells = append(cells, f(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	row("", func(r Result) string { return string(r.Mode) })
	row("reads ok", func(r Result) string { return fmt.Sprintf("%.1f%% (%d/%d)", 100*r.ReadSuccess(), r.ReadsOK, r.Reads) })
	row("sends ok", func(r Result) string { return fmt.Sprintf("%.1f%% (%d/%d)", 100*r.SendSuccess(), r.SendsOK, r.Sends) })
	row("duplicate sends", func(r Result) string { return fmt.Sprint(r.DuplicateSends) })
	row("upstream attempts per call", func(r Result) string { return fmt.Sprintf("%.2f", r.AttemptsPerCall()) })
	row("throttle rejections per 100 attempts", func(r Result) string {
		return fmt.Sprintf("%.1f", 100*ratio(r.Throttled, r.UpstreamAttempts))
	})
	row("p50 latency", func(r Result) string { return ms(r.P50) })
	row("p99 latency", func(r Result) string { return ms(r.P99) })
	tw.Flush()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
