package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

var (
	metricRef = regexp.MustCompile(`\b(?:dingproxy|go|process)_[a-z0-9_]+`)
	byClause  = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// matcher is one label matcher inside a selector's braces.
	matcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
	braces  = regexp.MustCompile(`\{[^}]*\}`)
)

// exportedLabels are the label names of every family (and a histogram's
// _bucket, _sum and _count) in the registry of an App built as the binary
// builds it, from a configuration with a plain route, a cached route and
// a route with defer (whose outbox opens in a temporary directory) that
// has kept a send, so that every vector has a series: the outbox's gauges
// have series only for the routes it holds sends of. The shared mode's
// families (metrics.Reference marks them) count too when shared is true.
func exportedLabels(t *testing.T, shared bool) map[string]map[string]bool {
	t.Helper()
	cfg := config.Default()
	cfg.Routes = []config.Route{
		{Path: "/topapi/v2/user/get"},
		{Path: "/topapi/v2/department/listsub", Cache: time.Minute},
		{Path: "/robot/send", Defer: &config.Defer{MaxAge: 10 * time.Minute, Merge: true}},
	}
	cfg.Outbox.Dir = filepath.Join(t.TempDir(), "outbox")
	a, err := app.New(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Outbox().Put(context.Background(), &outbox.Send{
		Queue: "/robot/send", Route: "/robot/send", Method: "POST", Path: "/robot/send",
		Body: []byte(`{"msgtype":"text","text":{"content":"alert"}}`), Due: time.Now().Add(10 * time.Minute),
	}); err != nil {
		t.Fatal(err)
	}
	fams, err := a.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]map[string]bool{} // family (and its _bucket/_sum/_count) -> label names
	for _, f := range fams {
		names := map[string]bool{}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				names[l.GetName()] = true
			}
		}
		labels[f.GetName()] = names
		if f.GetType() == dto.MetricType_HISTOGRAM {
			withLE := map[string]bool{"le": true}
			for k := range names {
				withLE[k] = true
			}
			labels[f.GetName()+"_bucket"] = withLE
			labels[f.GetName()+"_sum"] = names
			labels[f.GetName()+"_count"] = names
		}
	}
	if shared {
		ref, err := metrics.Reference()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range ref {
			if _, ok := labels[f.Name]; !ok && f.Shared {
				labels[f.Name] = map[string]bool{}
				for _, l := range f.Labels {
					labels[f.Name][l] = true
				}
			}
		}
	}
	return labels
}

// checkExprs fails t for every metric name of exprs that dingproxy does not
// export, and every label they group by or match on that none of the
// expression's metrics has. It returns how many metric references it read.
func checkExprs(t *testing.T, where string, exprs []string, labels map[string]map[string]bool) int {
	t.Helper()
	seen := 0
	for _, e := range exprs {
		refs := metricRef.FindAllString(e, -1)
		have := map[string]bool{"instance": true, "job": true} // added by the scrape
		for _, r := range refs {
			seen++
			ls, ok := labels[r]
			if !ok {
				t.Errorf("%s queries %s, which dingproxy does not export (expr %q)", where, r, e)
				continue
			}
			for k := range ls {
				have[k] = true
			}
		}
		var used []string
		for _, m := range byClause.FindAllStringSubmatch(e, -1) {
			used = append(used, strings.Split(m[1], ",")...)
		}
		for _, b := range braces.FindAllString(e, -1) {
			for _, m := range matcher.FindAllStringSubmatch(b, -1) {
				used = append(used, m[1])
			}
		}
		for _, l := range used {
			if l = strings.TrimSpace(l); l != "" && l != "__name__" && !have[l] {
				t.Errorf("%s uses label %q, which none of %v has (expr %q)", where, l, refs, e)
			}
		}
	}
	return seen
}

// TestDashboardMetricsExist checks every metric name the Grafana dashboard
// queries, and every label it groups by or matches on, against the
// registry of an App built as the binary builds it: a renamed metric would
// leave a panel silently empty.
func TestDashboardMetricsExist(t *testing.T) {
	exprs := dashboardExprs(t)
	if seen := checkExprs(t, "the dashboard", exprs, exportedLabels(t, false)); seen < 10 {
		t.Errorf("only %d metric references found in %d queries: is the dashboard parsed?", seen, len(exprs))
	}
}

// alertExprs returns the expressions of the promql block under "What to
// alert on" in docs/metrics.md, one per line, comments left out.
func alertExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	section, block := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = line == "## What to alert on"
		case section && strings.HasPrefix(line, "```"):
			block = !block && strings.TrimPrefix(line, "```") == "promql"
		case section && block:
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				exprs = append(exprs, l)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return exprs
}

// TestAlertsUseRealMetrics: every alert docs/metrics.md recommends queries
// metrics and labels dingproxy exports (alone, or in shared mode for the
// fleet's), so none of them silently never fires; the deferred sends' two
// alerts are among them.
func TestAlertsUseRealMetrics(t *testing.T) {
	exprs := alertExprs(t)
	if len(exprs) < 10 {
		t.Fatalf("only %d alert expressions read from docs/metrics.md: is the section parsed?", len(exprs))
	}
	checkExprs(t, "docs/metrics.md", exprs, exportedLabels(t, true))
	for _, want := range []string{
		`sum by (route) (dingproxy_outbox_messages{state="dead"}) > 0`,
		`max by (route) (dingproxy_outbox_oldest_seconds) > 600`,
	} {
		found := false
		for _, e := range exprs {
			found = found || e == want
		}
		if !found {
			t.Errorf("docs/metrics.md does not recommend the alert %q", want)
		}
	}
}
