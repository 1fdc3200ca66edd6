package metrics

import (
	"fmt"
	"slices"
	"strings"
)

// FamilyInfo describes one of dingproxy's metric families for the reference
// documentation (docs/metrics.md, written by tools/docgen).
type FamilyInfo struct {
	// Name is the full metric name, e.g. "dingproxy_requests_total".
	Name string
	// Type is counter, gauge or histogram.
	Type string
	// Labels are the family's label names, sorted.
	Labels []string
	// Help is the family's help text, as /metrics serves it.
	Help string
	// Shared says the family exists in shared mode only (EnableFleet).
	Shared bool
}

// Reference lists dingproxy's own metric families (the dingproxy_ ones, not
// the Go and process collectors), sorted by name, read from a registry
// built as at start: New, a configured route with a cache and defer
// (InitRoute, InitCache, InitOutbox, OutboxFrom), then EnableFleet. A
// vector is listed once one of those gives it a series, as each of them
// does for every vector today (a test checks it against everything the
// registry describes).
func Reference() ([]FamilyInfo, error) {
	m := New("dev")
	const route = "/reference"
	m.InitRoute(route, 1)
	m.InitCache(route)
	m.InitOutbox(route)
	m.OutboxFrom(func() []OutboxRoute { return []OutboxRoute{{Route: route}} })
	fams, err := m.Registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("metrics: gathering a fresh registry: %w", err)
	}
	alone := make(map[string]bool, len(fams))
	for _, f := range fams {
		alone[f.GetName()] = true
	}
	m.EnableFleet([]string{"reference"})
	if fams, err = m.Registry.Gather(); err != nil {
		return nil, fmt.Errorf("metrics: gathering a fresh registry: %w", err)
	}
	var out []FamilyInfo
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), namespace+"_") {
			continue
		}
		fi := FamilyInfo{
			Name:   f.GetName(),
			Type:   strings.ToLower(f.GetType().String()),
			Help:   f.GetHelp(),
			Shared: !alone[f.GetName()],
		}
		seen := map[string]bool{}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if !seen[l.GetName()] {
					seen[l.GetName()] = true
					fi.Labels = append(fi.Labels, l.GetName())
				}
			}
		}
		slices.Sort(fi.Labels)
		out = append(out, fi)
	}
	slices.SortFunc(out, func(a, b FamilyInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
