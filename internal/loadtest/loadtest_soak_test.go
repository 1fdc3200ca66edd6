//go:build soak

package loadtest_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/loadtest"
)

// A short run at a low rate: every call is answered and measured, and the
// table prints, so the tool cannot rot.
func TestShortRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := loadtest.Run(ctx, loadtest.Options{Rates: []int{50}, Duration: 500 * time.Millisecond, Warmup: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows", len(rows))
	}
	r := rows[0]
	if r.Calls != 25 || r.Errors != 0 {
		t.Errorf("pairs %d errors %d, want 25 and 0", r.Calls, r.Errors)
	}
	if r.Added[0] < -r.Direct[0] || r.Added[0] > r.Via[0] {
		t.Errorf("added p50 %v outside what the paths allow (direct %v, via %v)", r.Added[0], r.Direct[0], r.Via[0])
	}
	for i := range r.Direct {
		if r.Direct[i] <= 0 || r.Via[i] <= 0 {
			t.Errorf("percentile %d: direct %v via %v", i, r.Direct[i], r.Via[i])
		}
		if i > 0 && (r.Via[i] < r.Via[i-1] || r.Direct[i] < r.Direct[i-1]) {
			t.Errorf("percentiles not ordered: %v %v", r.Direct, r.Via)
		}
	}
	var buf bytes.Buffer
	loadtest.PrintTable(&buf, rows)
	if !strings.Contains(buf.String(), "added p50/p99/p99.9") || strings.Count(buf.String(), "\n") != 2 {
		t.Errorf("table:\n%s", buf.String())
	}
}
