// Command docgen writes the parts of dingproxy's documentation that the code
// defines, so that they cannot drift from it: the configuration key table
// (from config.Reference: key, environment variable, type, default, live or
// restart), the metric table (from metrics.Reference: name, type, labels,
// help) and the alert table (from the Prometheus rule file,
// deploy/prometheus/dingproxy-rules.yaml). Each is written between a pair of
// marker comments in a Markdown file of README.md or docs/:
//
//	<!-- BEGIN GENERATED config-keys: make docs writes this table; do not edit it by hand -->
//	...
//	<!-- END GENERATED config-keys -->
//
// It also writes deploy/k8s/prometheusrule.yaml, the rule file as a
// PrometheusRule for the Prometheus Operator.
//
// Usage, from the repository's root (make docs):
//
//	go run ./tools/docgen           # rewrite the blocks in place
//	go run ./tools/docgen -check    # exit 1, naming the files, if a block is out of date
//
// The test in this directory runs the same check in make test.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/metrics"
)

// regenerate is the command a user runs to bring the generated files up to date.
const regenerate = "make docs (go run ./tools/docgen)"

func main() {
	root := flag.String("root", ".", "the repository's root `directory`")
	check := flag.Bool("check", false, "change nothing; exit 1 if a generated block is out of date")
	flag.Parse()
	if err := run(*root, *check, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
}

// run brings every file's blocks up to date, or with check only reports
// the files that are not.
func run(root string, check bool, stdout io.Writer) error {
	blocks, err := render(root)
	if err != nil {
		return err
	}
	paths, err := files(root)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	var stale []string
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out, names, err := rewrite(src, blocks)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, n := range names {
			used[n] = true
		}
		if bytes.Equal(out, src) {
			continue
		}
		rel, _ := filepath.Rel(root, p)
		if check {
			stale = append(stale, rel)
			continue
		}
		if err := os.WriteFile(p, out, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "docgen: wrote %s\n", rel)
	}
	stale, err = writeOperatorRules(root, check, stdout, stale)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(blocks)) {
		if !used[name] {
			return fmt.Errorf("no file of README.md or docs/ has the block %q: add its markers where the table belongs", name)
		}
	}
	if len(stale) > 0 {
		return fmt.Errorf("generated files out of date with the code or the rule file in %s: run %s and commit the result",
			strings.Join(stale, ", "), regenerate)
	}
	return nil
}

// writeOperatorRules brings the PrometheusRule up to date with the rule
// file, or with check adds it to stale when it is not.
func writeOperatorRules(root string, check bool, stdout io.Writer, stale []string) ([]string, error) {
	src, _, err := readRules(root)
	if err != nil {
		return stale, err
	}
	want, err := prometheusRule(src)
	if err != nil {
		return stale, err
	}
	p := filepath.Join(root, operatorFile)
	have, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return stale, err
	}
	if bytes.Equal(have, want) {
		return stale, nil
	}
	if check {
		return append(stale, operatorFile), nil
	}
	if err := os.WriteFile(p, want, 0o644); err != nil {
		return stale, err
	}
	fmt.Fprintf(stdout, "docgen: wrote %s\n", operatorFile)
	return stale, nil
}

// files are the Markdown files that may hold generated blocks.
func files(root string) ([]string, error) {
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	return append([]string{filepath.Join(root, "README.md")}, docs...), nil
}

// render returns each block's content by name, reading the rule file under
// root.
func render(root string) (map[string]string, error) {
	fams, err := metrics.Reference()
	if err != nil {
		return nil, err
	}
	_, rules, err := readRules(root)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		"config-keys": configTable(config.Reference()),
		"metrics":     metricTable(fams),
		"alerts":      alertTable(rules),
	}, nil
}

const (
	beginPrefix = "<!-- BEGIN GENERATED "
	endPrefix   = "<!-- END GENERATED "
	beginSuffix = ": make docs writes this table; do not edit it by hand -->"
)

// rewrite replaces the content of every block in src with blocks[name],
// and returns the names it found. A marker it cannot pair, or a name it
// does not know, is an error.
func rewrite(src []byte, blocks map[string]string) ([]byte, []string, error) {
	lines := strings.SplitAfter(string(src), "\n")
	var out strings.Builder
	var names []string
	for i := 0; i < len(lines); i++ {
		line := strings.TrimRight(lines[i], "\n")
		if strings.HasPrefix(line, endPrefix) {
			return nil, nil, fmt.Errorf("line %d: an END marker without its BEGIN", i+1)
		}
		if !strings.HasPrefix(line, beginPrefix) {
			out.WriteString(lines[i])
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(line, beginPrefix), ":")
		name = strings.TrimSpace(strings.TrimSuffix(name, "-->"))
		content, ok := blocks[name]
		if !ok {
			return nil, nil, fmt.Errorf("line %d: unknown generated block %q", i+1, name)
		}
		end := endPrefix + name + " -->"
		j := i + 1
		for j < len(lines) && strings.TrimRight(lines[j], "\n") != end {
			if strings.HasPrefix(lines[j], beginPrefix) {
				return nil, nil, fmt.Errorf("line %d: a BEGIN marker inside block %q", j+1, name)
			}
			j++
		}
		if j == len(lines) {
			return nil, nil, fmt.Errorf("line %d: block %q has no %q line", i+1, name, end)
		}
		names = append(names, name)
		out.WriteString(beginPrefix + name + beginSuffix + "\n")
		out.WriteString(content)
		out.WriteString(end + "\n")
		i = j
	}
	return []byte(out.String()), names, nil
}

// configTable is the configuration reference: one row per key.
func configTable(keys []config.KeyInfo) string {
	var b strings.Builder
	b.WriteString("| key | environment variable | type | default | on reload |\n")
	b.WriteString("| --- | --- | --- | --- | --- |\n")
	for _, k := range keys {
		reload := "live"
		if k.Restart {
			reload = "restart"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s | %s |\n", k.Key, k.Env, k.Type, code(k.Default), reload)
	}
	return b.String()
}

// vocabularies are label values the code lists, shown with the family's
// help: family name, then label, then the values.
var vocabularies = map[string]map[string][]string{
	"dingproxy_fleet_errors_total":        {"op": fleet.Ops},
	"dingproxy_breaker_transitions_total": {"to": metrics.BreakerStates},
}

// metricTable is the metric reference: one row per family.
func metricTable(fams []metrics.FamilyInfo) string {
	var b strings.Builder
	b.WriteString("| metric | type | labels | meaning |\n")
	b.WriteString("| --- | --- | --- | --- |\n")
	for _, f := range fams {
		labels := make([]string, len(f.Labels))
		for i, l := range f.Labels {
			labels[i] = "`" + l + "`"
		}
		meaning := f.Help
		if f.Shared {
			meaning = "Shared mode only (`fleet.redis_url` set). " + meaning
		}
		vocab := vocabularies[f.Name]
		for _, l := range slices.Sorted(maps.Keys(vocab)) {
			vals := make([]string, len(vocab[l]))
			for i, v := range vocab[l] {
				vals[i] = "`" + v + "`"
			}
			meaning += " `" + l + "`: " + strings.Join(vals, ", ") + "."
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", f.Name, f.Type, strings.Join(labels, ", "), cell(meaning))
	}
	return b.String()
}

// code is s as a code span in a table cell.
func code(s string) string {
	return "`" + strings.ReplaceAll(s, "|", `\|`) + "`"
}

// cell escapes what would end a table cell.
func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
}
