package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The Prometheus rule file is the one source of dingproxy's recording rules
// and alerts. docgen writes two things from it: the PrometheusRule for the
// Prometheus Operator, and the table of alerts in docs/metrics.md.
const (
	rulesFile    = "deploy/prometheus/dingproxy-rules.yaml"
	operatorFile = "deploy/k8s/prometheusrule.yaml"
)

// ruleFile is a Prometheus rule file, as far as docgen reads it.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// readRules returns the rule file's text and what it says.
func readRules(root string) ([]byte, *ruleFile, error) {
	src, err := os.ReadFile(filepath.Join(root, rulesFile))
	if err != nil {
		return nil, nil, err
	}
	var rf ruleFile
	if err := yaml.Unmarshal(src, &rf); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", rulesFile, err)
	}
	return src, &rf, nil
}

// operatorHeader comes before the rule file's groups in the PrometheusRule.
// Its labels are the ServiceMonitor's (a test in deploy/ checks it), so a
// Prometheus that selects the one selects the other.
const operatorHeader = `# Written by make docs (go run ./tools/docgen) from
# deploy/prometheus/dingproxy-rules.yaml: edit that file, not this one.
#
# dingproxy's recording rules and alerts for the Prometheus Operator (needs
# its CRDs). Your Prometheus resource's ruleSelector must match this object's
# labels, as its serviceMonitorSelector matches servicemonitor.yaml's: with
# kube-prometheus-stack that usually means adding ` + "`release: <helm release>`" + `
# to both. Its ruleNamespaceSelector must take this object's namespace.
# Without the operator, list deploy/prometheus/dingproxy-rules.yaml under
# rule_files instead.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: dingproxy
  labels:
    app.kubernetes.io/name: dingproxy
spec:
`

// prometheusRule is the rule file as a PrometheusRule: the header, then the
// file from its groups key on (its own header comment left out), indented
// under spec, comments and all.
func prometheusRule(src []byte) ([]byte, error) {
	lines := strings.SplitAfter(string(src), "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimRight(l, "\n") == "groups:" {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("%s: no line \"groups:\" at the top level", rulesFile)
	}
	var b bytes.Buffer
	b.WriteString(operatorHeader)
	for _, l := range lines[start:] {
		if strings.TrimSpace(l) != "" {
			b.WriteString("  ")
		}
		b.WriteString(l)
	}
	return b.Bytes(), nil
}

// alertTable lists the alerts in the rule file's order: each names its
// runbook in the README (linked from docs/), its severity, its for: and its
// description.
func alertTable(rf *ruleFile) string {
	var b strings.Builder
	b.WriteString("| alert | severity | for | what it means |\n")
	b.WriteString("| --- | --- | --- | --- |\n")
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			wait := r.For
			if wait == "" {
				wait = "0"
			}
			fmt.Fprintf(&b, "| [%s](../README.md#%s) | %s | %s | %s |\n",
				r.Alert, strings.ToLower(r.Alert), r.Labels["severity"], wait, cell(r.Annotations["description"]))
		}
	}
	return b.String()
}
