package resilience

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Only: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Errorf("unknown scenario: err = %v", err)
	}
	var buf bytes.Buffer
	if err := PrintTable(&buf, []Row{{Scenario: Throttle, Mode: bench.Proxy, Calls: 10, OK: 10, UpstreamAttempts: 10, HasAfter1s: true, After1sAttempts: 5}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"success", "dup sends", "attempts/call", "throttled/100", "after 1 s", "p50", "p99", "100.0%", "dingproxy"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	for _, s := range Scenarios {
		if Describe(s, 1) == s {
			t.Errorf("scenario %s has no description", s)
		}
	}
}
