package loadtest_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/loadtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The table has its header and a line per rate. (A real run is checked by
// make soak: loadtest_soak_test.go.)
func TestPrintTable(t *testing.T) {
	var buf bytes.Buffer
	ms := [3]time.Duration{time.Millisecond, 2 * time.Millisecond, 3500 * time.Microsecond}
	loadtest.PrintTable(&buf, []loadtest.Row{{Rate: 500, Calls: 5000, Late: 12, Direct: ms, Via: ms, Added: ms}, {Rate: 1000, Calls: 10000, Errors: 1}})
	for _, want := range []string{"rate/s", "pairs", "errors", "late", "direct p50/p99/p99.9 ms", "dingproxy p50/p99/p99.9 ms", "added p50/p99/p99.9 ms", "1.000 / 2.000 / 3.500", "10000"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Errorf("%d lines, want 3:\n%s", n, buf.String())
	}
}
