package deploy_test

import (
	"bufio"
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// rulesFile is the Prometheus rule file: the one source of the recording
// rules and the alerts. k8s/prometheusrule.yaml is written from it (make
// docs), and promtool checks and tests it (make rules).
var rulesFile = filepath.Join("prometheus", "dingproxy-rules.yaml")

// A rule file's groups, every field a rule file may have, so that a strict
// decode finds a misspelt key (an "anotations" would otherwise be dropped).
type ruleGroups struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Limit    int    `yaml:"limit,omitempty"`
	Rules    []rule `yaml:"rules"`
}

type rule struct {
	Record        string            `yaml:"record,omitempty"`
	Alert         string            `yaml:"alert,omitempty"`
	Expr          string            `yaml:"expr"`
	For           string            `yaml:"for,omitempty"`
	KeepFiringFor string            `yaml:"keep_firing_for,omitempty"`
	Labels        map[string]string `yaml:"labels,omitempty"`
	Annotations   map[string]string `yaml:"annotations,omitempty"`
}

func readRules(t *testing.T) []ruleGroup {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var rf ruleGroups
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s has no groups", rulesFile)
	}
	return rf.Groups
}

func allRules(groups []ruleGroup) []rule {
	var rs []rule
	for _, g := range groups {
		rs = append(rs, g.Rules...)
	}
	return rs
}

func alerts(groups []ruleGroup) []rule {
	var as []rule
	for _, r := range allRules(groups) {
		if r.Alert != "" {
			as = append(as, r)
		}
	}
	return as
}

// The PrometheusRule holds exactly the rule file's groups, and carries the
// ServiceMonitor's labels, so that a Prometheus that selects the one by
// them selects the other too.
func TestPrometheusRuleIsTheRuleFile(t *testing.T) {
	ms := readManifests(t)
	var pr struct {
		Spec ruleGroups `yaml:"spec"`
	}
	ph := only(t, ms, "PrometheusRule", &pr)
	if ph.APIVersion != "monitoring.coreos.com/v1" {
		t.Errorf("PrometheusRule apiVersion = %q, want monitoring.coreos.com/v1", ph.APIVersion)
	}
	file := readRules(t)
	if len(file) != len(pr.Spec.Groups) {
		t.Errorf("k8s/prometheusrule.yaml has %d groups, %s %d (make docs writes it)", len(pr.Spec.Groups), rulesFile, len(file))
	}
	for i := range min(len(file), len(pr.Spec.Groups)) {
		fg, pg := file[i], pr.Spec.Groups[i]
		if fg.Name != pg.Name || fg.Interval != pg.Interval || fg.Limit != pg.Limit || len(fg.Rules) != len(pg.Rules) {
			t.Errorf("group %d: k8s/prometheusrule.yaml has %q (interval %q, limit %d, %d rules), %s %q (interval %q, limit %d, %d rules) (make docs writes it)",
				i, pg.Name, pg.Interval, pg.Limit, len(pg.Rules), rulesFile, fg.Name, fg.Interval, fg.Limit, len(fg.Rules))
			continue
		}
		for j := range fg.Rules {
			if d := cmp.Diff(fg.Rules[j], pg.Rules[j]); d != "" {
				t.Errorf("group %s, rule %d: k8s/prometheusrule.yaml differs from %s (make docs writes it) (-file +PrometheusRule):\n%s", fg.Name, j, rulesFile, d)
			}
		}
	}
	var sm struct{}
	mh := only(t, ms, "ServiceMonitor", &sm)
	if len(mh.Metadata.Labels) == 0 {
		t.Fatal("the ServiceMonitor has no labels")
	}
	for k, v := range mh.Metadata.Labels {
		if got, ok := ph.Metadata.Labels[k]; !ok || got != v {
			t.Errorf("the PrometheusRule lacks the ServiceMonitor's label %s: %q (it has %v)", k, v, ph.Metadata.Labels)
		}
	}
}

// The rules query metrics and labels dingproxy exports (alone, or in shared
// mode for the fleet's), so that none of them silently never fires; the
// series they read from recording rules are recorded in the file.
func TestRulesUseRealMetrics(t *testing.T) {
	groups := readRules(t)
	labels := exportedLabels(t, true)
	// A recorded series has the labels of what it reads (a superset, for
	// aggregations that drop some): recording rules may read earlier ones.
	recorded := regexp.MustCompile(`^dingproxy:[a-z0-9_]+:[a-z0-9_]+$`)
	var exprs []string
	for _, r := range allRules(groups) {
		exprs = append(exprs, r.Expr)
		if r.Record == "" {
			continue
		}
		if !recorded.MatchString(r.Record) {
			t.Errorf("recording rule %q: want a name dingproxy:<what>:<how>", r.Record)
		}
		if _, ok := labels[r.Record]; ok {
			t.Errorf("%s is recorded twice, or is an exported metric's name", r.Record)
		}
		ls := map[string]bool{}
		for _, ref := range metricRef.FindAllString(r.Expr, -1) {
			if _, ok := labels[ref]; !ok {
				t.Errorf("recording rule %s reads %s, which is neither exported nor recorded before it", r.Record, ref)
			}
			maps.Copy(ls, labels[ref])
		}
		labels[r.Record] = ls
	}
	// pod: the label Kubernetes discovery adds, which the aggregations drop.
	if seen := checkExprs(t, rulesFile, exprs, labels, "pod"); seen < 30 {
		t.Errorf("only %d metric references found in %d expressions: is the rule file parsed?", seen, len(exprs))
	}
}

// runbookBase is where an alert's runbook_url points, before its anchor:
// the README on the repository's main branch, at the module's address.
func runbookBase(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	module, ok := strings.CutPrefix(first, "module ")
	if !ok || !strings.HasPrefix(module, "github.com/") {
		t.Fatalf("go.mod starts %q: want module github.com/...", first)
	}
	return "https://" + strings.TrimSpace(module) + "/blob/main/README.md#"
}

// runbooks are the alert names of the README's runbooks, in order, each
// with its text: a "#### <alert>" heading under "### Runbooks".
func runbooks(t *testing.T) ([]string, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	text := map[string]string{}
	in, current := false, ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "### Runbooks":
			in = true
		case in && (strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ")):
			in, current = false, ""
		case in && strings.HasPrefix(line, "#### "):
			current = strings.TrimPrefix(line, "#### ")
			names = append(names, current)
		case current != "":
			text[current] += line + "\n"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names, text
}

// Every alert says how bad it is and what it means, and links to its
// runbook in the README, which says what it means, what to check first and
// what to do; the README has no runbook for an alert the file lacks, and
// keeps them in the file's order.
func TestAlertsHaveRunbooks(t *testing.T) {
	base := runbookBase(t)
	names, text := runbooks(t)
	var want []string
	seen := map[string]bool{}
	name := regexp.MustCompile(`^Dingproxy[A-Z][A-Za-z0-9]+$`)
	for _, a := range alerts(readRules(t)) {
		want = append(want, a.Alert)
		if seen[a.Alert] {
			t.Errorf("alert %s is defined twice", a.Alert)
		}
		seen[a.Alert] = true
		if !name.MatchString(a.Alert) {
			t.Errorf("alert %q: want a name Dingproxy<Something>", a.Alert)
		}
		if s := a.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("alert %s: severity %q, want critical or warning", a.Alert, s)
		}
		for _, k := range []string{"summary", "description"} {
			if strings.TrimSpace(a.Annotations[k]) == "" {
				t.Errorf("alert %s has no %s annotation", a.Alert, k)
			}
		}
		if strings.Contains(a.Annotations["description"], "{{") {
			t.Errorf("alert %s: the description is the meaning docs/metrics.md shows, without templates; put the values in the summary", a.Alert)
		}
		if got, want := a.Annotations["runbook_url"], base+strings.ToLower(a.Alert); got != want {
			t.Errorf("alert %s: runbook_url %q, want %q", a.Alert, got, want)
		}
		body, ok := text[a.Alert]
		if !ok {
			t.Errorf("README.md has no runbook for %s: a heading \"#### %s\" under \"### Runbooks\"", a.Alert, a.Alert)
			continue
		}
		for _, part := range []string{"**Means** (" + a.Labels["severity"] + ").", "**Check first.**", "**Do.**"} {
			if !strings.Contains(body, part) {
				t.Errorf("README.md, runbook %s: no %q", a.Alert, part)
			}
		}
	}
	if !slices.Equal(names, want) {
		t.Errorf("README.md's runbooks are\n  %v\nwant one per alert, in the rule file's order:\n  %v", names, want)
	}
}

// The alerts cover what dingproxy's documentation promised, and more: each
// one named here is in the file and reads what it is about.
func TestAlertsCoverTheMetrics(t *testing.T) {
	want := map[string]string{ // alert: what its expression must read
		"DingproxyTokenExpiring":                "dingproxy_token_expiry_timestamp_seconds",
		"DingproxyTokenRefreshFailing":          `dingproxy_token_refreshes_total{result="failure"}`,
		"DingproxyBreakerOpen":                  "dingproxy_breaker_state",
		"DingproxyIPBanned":                     `dingproxy_fallbacks_total{kind="ip-ban"}`,
		"DingproxyErrorRateHigh":                `dingproxy_requests_total{code=~"5.."}`,
		"DingproxyRetryBudgetExhausted":         "dingproxy_retry_budget_exhausted_total",
		"DingproxyConfigReloadFailed":           "dingproxy_config_last_reload_successful",
		"DingproxyFleetRedisDown":               "dingproxy_fleet_redis_up",
		"DingproxyQuotaNearlySpent":             "dingproxy_quota_used / dingproxy_quota_limit",
		"DingproxyQuotaStopped":                 `dingproxy_quota_stops{scope=~"organisation|budget"}`,
		"DingproxyQuotaPathStopped":             `dingproxy_quota_stops{scope="path"}`,
		"DingproxyDeadSends":                    `dingproxy_outbox_messages{state="dead"}`,
		"DingproxyOutboxNotDraining":            "dingproxy_outbox_oldest_seconds",
		"DingproxyRetryShareAboveBaseline":      "dingproxy:route_retry_share:rate5m_stddev1d",
		"DingproxyLatencyAboveBaseline":         "dingproxy:route_request_duration_seconds:p99_5m_stddev1d",
		"DingproxyUpstreamLatencyAboveBaseline": "dingproxy:upstream_attempt_duration_seconds:p99_5m_stddev1d",
	}
	records := map[string]string{ // recorded series: what its expression must read
		"dingproxy:route_retry_share:rate5m":                          "dingproxy:route_retries:rate5m / (dingproxy:route_requests:rate5m > 0)",
		"dingproxy:route_retry_share:rate5m_avg1d":                    "avg_over_time(dingproxy:route_retry_share:rate5m[1d])",
		"dingproxy:route_retry_share:rate5m_stddev1d":                 "stddev_over_time(dingproxy:route_retry_share:rate5m[1d])",
		"dingproxy:route_request_duration_seconds:p99_5m":             "histogram_quantile(0.99, sum without (instance, pod) (rate(dingproxy_request_duration_seconds_bucket[5m])))",
		"dingproxy:route_request_duration_seconds:p99_5m_avg1d":       "avg_over_time(dingproxy:route_request_duration_seconds:p99_5m[1d])",
		"dingproxy:route_request_duration_seconds:p99_5m_stddev1d":    "stddev_over_time(dingproxy:route_request_duration_seconds:p99_5m[1d])",
		"dingproxy:upstream_attempt_duration_seconds:p99_5m":          "histogram_quantile(0.99, sum without (instance, pod) (rate(dingproxy_upstream_attempt_duration_seconds_bucket[5m])))",
		"dingproxy:upstream_attempt_duration_seconds:p99_5m_avg1d":    "avg_over_time(dingproxy:upstream_attempt_duration_seconds:p99_5m[1d])",
		"dingproxy:upstream_attempt_duration_seconds:p99_5m_stddev1d": "stddev_over_time(dingproxy:upstream_attempt_duration_seconds:p99_5m[1d])",
	}
	have := map[string]string{}
	for _, r := range allRules(readRules(t)) {
		have[r.Alert+r.Record] = strings.Join(strings.Fields(r.Expr), " ")
	}
	for _, m := range []map[string]string{want, records} {
		for name, part := range m {
			expr, ok := have[name]
			if !ok {
				t.Errorf("%s has no rule %s", rulesFile, name)
			} else if !strings.Contains(expr, part) {
				t.Errorf("%s: the expression %q does not read %q", name, expr, part)
			}
		}
	}
}

// promtoolTests is a unit test file of promtool test rules, as far as this
// test reads it.
type promtoolTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// Every alert has a unit test that shows it firing and one that shows it
// not firing, each test file loads the rule file, and no test names an
// alert the file lacks (promtool would pass a misspelt alertname that is
// expected not to fire).
func TestEveryAlertIsUnitTested(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("prometheus", "tests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no prometheus/tests/*.yaml (%v)", err)
	}
	known := map[string]bool{}
	for _, a := range alerts(readRules(t)) {
		known[a.Alert] = true
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var pt promtoolTests
		if err := yaml.Unmarshal(b, &pt); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if want := []string{"../dingproxy-rules.yaml"}; !slices.Equal(pt.RuleFiles, want) {
			t.Errorf("%s: rule_files %v, want %v", f, pt.RuleFiles, want)
		}
		for _, tc := range pt.Tests {
			for _, a := range tc.AlertRuleTest {
				if !known[a.Alertname] {
					t.Errorf("%s, test %q: alertname %q is not an alert of %s", f, tc.Name, a.Alertname, rulesFile)
				}
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
	}
	for a := range known {
		if !fires[a] {
			t.Errorf("no unit test in prometheus/tests shows %s firing", a)
		}
		if !quiet[a] {
			t.Errorf("no unit test in prometheus/tests shows %s not firing", a)
		}
	}
}

// The documentation names only alerts the rule file has, and holds no
// alerting rule of its own: the expressions live in the file, and the
// README and docs/ link to it, so that they cannot drift apart.
func TestDocsNameTheRuleFilesAlerts(t *testing.T) {
	known := map[string]bool{}
	for _, a := range alerts(readRules(t)) {
		known[a.Alert] = true
	}
	docs, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`\bDingproxy[A-Z][A-Za-z0-9]+`)
	alertRule := regexp.MustCompile(`^\s*(?:- )?alert:\s`)
	named := 0
	for _, f := range append([]string{filepath.Join("..", "README.md"), filepath.Join("k8s", "README.md")}, docs...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, n := range name.FindAllString(line, -1) {
				named++
				if !known[n] {
					t.Errorf("%s:%d names %s, which is not an alert of %s", f, i+1, n, rulesFile)
				}
			}
			if alertRule.MatchString(line) {
				t.Errorf("%s:%d holds an alerting rule: the rules live in %s; link to it", f, i+1, rulesFile)
			}
		}
	}
	if named < len(known) {
		t.Errorf("the documentation names %d alerts in all, fewer than the %d of the rule file: are the files read?", named, len(known))
	}
}
