package bench

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Table is a table of text cells in columns, right-aligned, Pad spaces
// apart; a column with a Widths entry above 0 is left-aligned in that
// width instead.
type Table struct {
	Pad    int
	Widths []int
	rows   [][]string
}

// Row adds a row.
func (t *Table) Row(cells ...string) { t.rows = append(t.rows, cells) }

// Print writes the table, with no trailing blanks.
func (t *Table) Print(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, t.Pad, ' ', tabwriter.AlignRight)
	for _, row := range t.rows {
		cells := slices.Clone(row)
		for i, c := range cells {
			if i < len(t.Widths) && t.Widths[i] > 0 {
				cells[i] = fmt.Sprintf("%-*s", t.Widths[i], c)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	tw.Flush()
	for line := range strings.Lines(buf.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// Ratio is a/b, or 0 when b is 0.
func Ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Percentile is the p-quantile (0 < p <= 1) of sorted by nearest rank, or
// 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}

// Percentiles are the ps-quantiles of lat, which it leaves unsorted.
func Percentiles(lat []time.Duration, ps ...float64) []time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		out[i] = Percentile(s, p)
	}
	return out
}

// Pct is n of of as a percentage with one decimal: "99.5%".
func Pct(n, of int) string { return fmt.Sprintf("%.1f%%", 100*Ratio(n, of)) }

// Ms is d in milliseconds with prec decimals: "12.3 ms" for 1.
func Ms(d time.Duration, prec int) string {
	return fmt.Sprintf("%.*f ms", prec, float64(d)/float64(time.Millisecond))
}

// Dur is d in the unit that reads best: "812.3 ms", "1.52 s", "12.1 s".
func Dur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return Ms(d, 1)
}

// Across adds a row to a table with a column per client: name, then f of
// each of rs.
func Across[T any](t *Table, rs []T, name string, f func(T) string) {
	cells := []string{name}
	for _, r := range rs {
		cells = append(cells, f(r))
	}
	t.Row(cells...)
}
