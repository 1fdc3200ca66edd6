package deploy_test

import (
	"context"
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
	// metricRef is a metric name in a query: one of dingproxy's, Go's or
	// the process's, or a series a recording rule of dingproxy's writes
	// (level:metric:operations).
	metricRef = regexp.MustCompile(`\b(?:dingproxy|go|process)_[a-z0-9_]+|\bdingproxy:[a-z0-9_:]+`)
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
// expression's metrics has, nor the scrape adds (instance, job, and the
// labels of target). It returns how many metric references it read.
func checkExprs(t *testing.T, where string, exprs []string, labels map[string]map[string]bool, target ...string) int {
	t.Helper()
	seen := 0
	for _, e := range exprs {
		refs := metricRef.FindAllString(e, -1)
		have := map[string]bool{"instance": true, "job": true} // added by the scrape
		for _, l := range target {
			have[l] = true
		}
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
