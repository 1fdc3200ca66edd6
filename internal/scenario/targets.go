package scenario

import (
	"fmt"
	"strconv"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
)

// Target is a figure of a scenario's rows and the bound the judged client
// (Scenario.Judge) must keep.
type Target struct {
	Figure string // what is measured, in words
	Want   string // the bound, in words
	Value  func(Row) string
	// Met says whether a row keeps the bound; nil: the figure is shown
	// beside the targets, not judged.
	Met func(Row) bool
}

// num is a bound as the targets table shows it: 5, 1.3.
func num(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

// secs is a duration in seconds as the targets table shows it: "3 s".
func secs(d time.Duration) string { return num(d.Seconds()) + " s" }

// ms is a duration in whole milliseconds: "100 ms".
func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

// atMost is a figure v of the row, shown with format, that must stay at
// or under bound.
func atMost(figure string, v func(Row) float64, format string, bound float64) Target {
	return Target{Figure: figure, Want: "<= " + num(bound),
		Value: func(r Row) string { return fmt.Sprintf(format, v(r)) },
		Met:   func(r Row) bool { return v(r) <= bound }}
}

// atLeastCount is a count c of the row that must reach want (of the
// row's calls).
func atLeastCount(figure string, c func(Row) int, want func(Row) int, wantText string) Target {
	return Target{Figure: figure, Want: wantText,
		Value: func(r Row) string { return fmt.Sprint(c(r)) },
		Met:   func(r Row) bool { return c(r) >= want(r) }}
}

// ofAll is a count of the row out of a count it must equal: "20 of 20".
func ofAll(figure string, c, of func(Row) int, want int) Target {
	return Target{Figure: figure, Want: fmt.Sprintf("%d of %d", want, want),
		Value: func(r Row) string { return fmt.Sprintf("%d of %d", c(r), of(r)) },
		Met:   func(r Row) bool { return c(r) == of(r) }}
}

// succeeded is the share of calls that succeeded, at least least.
func succeeded(least float64) Target {
	return Target{Figure: "calls that succeeded", Want: ">= " + num(100*least) + "%",
		Value: func(r Row) string { return fmt.Sprintf("%.1f%%", 100*r.Success()) },
		Met:   func(r Row) bool { return r.Success() >= least }}
}

// acceptedValue shows the accepted rate after the warm-up.
func acceptedValue(r Row) string {
	if !r.HasAccepted {
		return "-"
	}
	return fmt.Sprintf("%.2f (%.1f/s)", r.AcceptedOfLimit(), r.Accepted)
}

// optional shows v(r) when has(r), else "-".
func optional(has func(Row) bool, v func(Row) string) func(Row) string {
	return func(r Row) string {
		if !has(r) {
			return "-"
		}
		return v(r)
	}
}

// Verdict is a target checked on the judged client's row.
type Verdict struct {
	Target
	Scenario string
	Row      Row
	OK       bool
}

// Check checks the targets of the table's scenarios that rows hold, on
// each scenario's judged client; a target that is only shown has no
// verdict.
func Check(rows []Row) []Verdict {
	var out []Verdict
	for _, s := range All {
		for _, t := range s.Targets {
			for _, r := range rows {
				if t.Met != nil && r.Scenario == s.Name && r.Mode == s.judge() {
					out = append(out, Verdict{Target: t, Scenario: s.Name, Row: r, OK: t.Met(r)})
				}
			}
		}
	}
	return out
}

// Judged is the client whose row the named scenario's targets judge.
func Judged(name string) bench.Mode {
	s, _ := Find(name)
	return s.judge()
}
