package metrics

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReferenceListsEveryCollector: every dingproxy_ family the registry
// describes, shared mode's included, is in Reference, so the generated
// documentation cannot leave a metric out (a vector that New, InitRoute,
// InitCache and EnableFleet give no series would be missing from a
// gathered registry).
func TestReferenceListsEveryCollector(t *testing.T) {
	t.Parallel()
	ref, err := Reference()
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, f := range ref {
		listed[f.Name] = true
	}
	m := New("dev")
	m.EnableFleet(nil)
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		m.Registry.Describe(ch)
		close(ch)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	described := 0
	for d := range ch {
		name := fqName.FindStringSubmatch(d.String())
		if name == nil {
			t.Fatalf("cannot read the name of %s", d)
		}
		if !strings.HasPrefix(name[1], "dingproxy_") {
			continue
		}
		described++
		if !listed[name[1]] {
			t.Errorf("%s is registered but not in Reference: give it a series in Reference", name[1])
		}
	}
	if described != len(ref) {
		t.Errorf("the registry describes %d dingproxy_ families, Reference lists %d", described, len(ref))
	}
}

func TestReferenceFamilies(t *testing.T) {
	t.Parallel()
	ref, err := Reference()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]FamilyInfo{}
	for _, f := range ref {
		if f.Help == "" {
			t.Errorf("%s: no help", f.Name)
		}
		byName[f.Name] = f
	}
	for _, want := range []FamilyInfo{
		{Name: "dingproxy_requests_total", Type: "counter", Labels: []string{"code", "route"}},
		{Name: "dingproxy_request_duration_seconds", Type: "histogram", Labels: []string{"route"}},
		{Name: "dingproxy_breaker_state", Type: "gauge", Labels: []string{"route"}},
		{Name: "dingproxy_quota_used", Type: "gauge"},
		{Name: "dingproxy_cache_requests_total", Type: "counter", Labels: []string{"result", "route"}},
		{Name: "dingproxy_fleet_errors_total", Type: "counter", Labels: []string{"op"}, Shared: true},
		{Name: "dingproxy_fleet_redis_up", Type: "gauge", Shared: true},
	} {
		got, ok := byName[want.Name]
		if !ok {
			t.Errorf("%s: not listed", want.Name)
			continue
		}
		if got.Type != want.Type || !slices.Equal(got.Labels, want.Labels) || got.Shared != want.Shared {
			t.Errorf("%s: %s %v shared=%v, want %s %v shared=%v", want.Name, got.Type, got.Labels, got.Shared, want.Type, want.Labels, want.Shared)
		}
	}
	if _, ok := byName["go_goroutines"]; ok {
		t.Error("the Go collector's families are listed")
	}
	if !slices.IsSortedFunc(ref, func(a, b FamilyInfo) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	}) {
		t.Error("not sorted by name")
	}
}
