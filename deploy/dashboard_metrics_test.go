package deploy_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
)

var (
	metricRef = regexp.MustCompile(`\b(?:dingproxy|go|process)_[a-z0-9_]+`)
	byClause  = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// TestDashboardMetricsExist checks every metric name the Grafana dashboard
// queries, and every label it groups by, against the registry of an App
// built as the binary builds it: a renamed metric would leave a panel
// silently empty.
func TestDashboardMetricsExist(t *testing.T) {
	cfg := config.Default()
	cfg.Routes = []config.Route{{Path: "/topapi/v2/user/get"}, {Path: "/topapi/v2/department/listsub", Cache: time.Minute}}
	a, err := app.New(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
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
	exprs := dashboardExprs(t)
	seen := 0
	for _, e := range exprs {
		refs := metricRef.FindAllString(e, -1)
		have := map[string]bool{"instance": true, "job": true} // added by the scrape
		for _, r := range refs {
			seen++
			ls, ok := labels[r]
			if !ok {
				t.Errorf("dashboard queries %s, which dingproxy does not export (expr %q)", r, e)
				continue
			}
			for k := range ls {
				have[k] = true
			}
		}
		for _, m := range byClause.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !have[l] {
					t.Errorf("dashboard groups by %q, a label none of %v has (expr %q)", l, refs, e)
				}
			}
		}
	}
	if seen < 10 {
		t.Errorf("only %d metric references found in %d queries: is the dashboard parsed?", seen, len(exprs))
	}
}
