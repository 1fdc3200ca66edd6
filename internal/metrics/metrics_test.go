package metrics_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/dingproxy/dingproxy/internal/metrics"
)

// spec is the public metric table (docs/metrics.md): name, type, and the labels it must have at
// least. These names are public: dashboards and alerts depend on them.
type metricDef struct {
	name   string
	typ    dto.MetricType
	labels []string
}

var spec = []metricDef{
	{"dingproxy_requests_total", dto.MetricType_COUNTER, []string{"route", "code"}},
	{"dingproxy_upstream_attempts_total", dto.MetricType_COUNTER, []string{"route", "result"}},
	{"dingproxy_retries_total", dto.MetricType_COUNTER, []string{"route", "reason"}},
	{"dingproxy_retry_budget_exhausted_total", dto.MetricType_COUNTER, []string{"route"}},
	{"dingproxy_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"route"}},
	{"dingproxy_breaker_state", dto.MetricType_GAUGE, []string{"route"}},
	{"dingproxy_fallbacks_total", dto.MetricType_COUNTER, []string{"route", "kind"}},
	{"dingproxy_token_refreshes_total", dto.MetricType_COUNTER, []string{"result"}},
	{"dingproxy_quota_calls_total", dto.MetricType_COUNTER, []string{"route"}},
	{"dingproxy_quota_used", dto.MetricType_GAUGE, nil},
	{"dingproxy_quota_limit", dto.MetricType_GAUGE, nil},
	{"dingproxy_cache_requests_total", dto.MetricType_COUNTER, []string{"route", "result"}},
}

// extra are the operator metrics beyond the public table.
var extra = []metricDef{
	{"dingproxy_upstream_attempt_duration_seconds", dto.MetricType_HISTOGRAM, []string{"route", "upstream"}},
	{"dingproxy_breaker_transitions_total", dto.MetricType_COUNTER, []string{"route", "to"}},
	{"dingproxy_pacing_rate", dto.MetricType_GAUGE, []string{"route"}},
	{"dingproxy_unreplayable_requests_total", dto.MetricType_COUNTER, []string{"route", "reason"}},
	{"dingproxy_inflight_requests", dto.MetricType_GAUGE, nil},
	{"dingproxy_token_expiry_timestamp_seconds", dto.MetricType_GAUGE, nil},
	{"dingproxy_config_reloads_total", dto.MetricType_COUNTER, []string{"result"}},
	{"dingproxy_config_last_reload_successful", dto.MetricType_GAUGE, nil},
	{"dingproxy_config_last_reload_success_timestamp_seconds", dto.MetricType_GAUGE, nil},
	{"dingproxy_build_info", dto.MetricType_GAUGE, []string{"version", "goversion"}},
	{"dingproxy_quota_stops", dto.MetricType_GAUGE, []string{"scope"}},
}

func gather(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func labelNames(m *dto.Metric) []string {
	var out []string
	for _, l := range m.GetLabel() {
		out = append(out, l.GetName())
	}
	slices.Sort(out)
	return out
}

// TestNamesTypesAndLabels gathers a registry whose configured route has
// been initialised, as at start, and checks every family against the table.
func TestNamesTypesAndLabels(t *testing.T) {
	m := metrics.New("v1.2.3")
	m.InitRoute("/topapi/message/corpconversation/asyncsend_v2", 20)
	m.InitCache("/topapi/v2/department/listsub")
	fams := gather(t, m)
	for _, want := range append(spec, extra...) {
		f, ok := fams[want.name]
		if !ok {
			t.Errorf("%s: not in the registry at start", want.name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s: type %v, want %v", want.name, f.GetType(), want.typ)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s: no help text", want.name)
		}
		wantLabels := slices.Sorted(slices.Values(want.labels))
		for _, s := range f.GetMetric() {
			if got := labelNames(s); !slices.Equal(got, wantLabels) {
				t.Errorf("%s: labels %v, want %v", want.name, got, wantLabels)
			}
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "dingproxy_") && !slices.ContainsFunc(append(spec, extra...), func(e metricDef) bool { return e.name == name }) {
			t.Errorf("%s: registered but in neither table of this test (document it)", name)
		}
	}
	for _, std := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[std]; !ok {
			t.Errorf("%s: Go or process collector missing", std)
		}
	}
	if b := fams["dingproxy_build_info"].GetMetric()[0]; b.GetGauge().GetValue() != 1 || b.GetLabel()[1].GetValue() != "v1.2.3" {
		t.Errorf("build_info = %v", b)
	}
}

// TestConfiguredRouteSeriesStartAtZero: alerts on rate() need the series
// before the first call.
func TestConfiguredRouteSeriesStartAtZero(t *testing.T) {
	const route = "/topapi/v2/user/get"
	m := metrics.New("dev")
	m.InitRoute(route, 20)
	if got := testutil.ToFloat64(m.Requests.WithLabelValues(route, "200")); got != 0 {
		t.Errorf("requests at start = %v", got)
	}
	if got := testutil.ToFloat64(m.BreakerState.WithLabelValues(route)); got != 0 {
		t.Errorf("breaker state at start = %v, want 0 (closed)", got)
	}
	if got := testutil.ToFloat64(m.PacingRate.WithLabelValues(route)); got != 20 {
		t.Errorf("pacing rate at start = %v, want the configured 20", got)
	}
	for _, r := range metrics.RetryReasons {
		if got := testutil.ToFloat64(m.Retries.WithLabelValues(route, r)); got != 0 {
			t.Errorf("retries{reason=%s} at start = %v", r, got)
		}
	}
	if n := testutil.CollectAndCount(m.Retries); n != len(metrics.RetryReasons) {
		t.Errorf("retry series at start = %d, want %d", n, len(metrics.RetryReasons))
	}
	if n := testutil.CollectAndCount(m.Fallbacks); n != len(metrics.FallbackKinds) {
		t.Errorf("fallback series at start = %d, want %d", n, len(metrics.FallbackKinds))
	}
}

// TestLint runs Prometheus' own linter over every family, after traffic of
// every kind has been recorded.
func TestLint(t *testing.T) {
	m := metrics.New("dev")
	m.InitRoute("/gettoken", 20)
	m.Requests.WithLabelValues("/x", metrics.Code(502)).Inc()
	m.RequestDuration.WithLabelValues("/x").Observe(0.2)
	m.AttemptDuration.WithLabelValues("/x", "oapi").Observe(0.01)
	m.Reloaded(false)
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestReloadedRecordsResultAndTime(t *testing.T) {
	m := metrics.New("dev")
	before := testutil.ToFloat64(m.ReloadSuccessTime)
	if before == 0 {
		t.Fatal("last successful load time is 0 at start: the startup load counts")
	}
	m.Reloaded(false)
	if got := testutil.ToFloat64(m.ReloadSuccessful); got != 0 {
		t.Errorf("last reload successful after a refusal = %v", got)
	}
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues(metrics.ResultFailure)); got != 1 {
		t.Errorf("failed reloads = %v", got)
	}
	m.Reloaded(true)
	if got := testutil.ToFloat64(m.ReloadSuccessful); got != 1 {
		t.Errorf("last reload successful after success = %v", got)
	}
	if got := testutil.ToFloat64(m.ReloadSuccessTime); got < before {
		t.Errorf("success time went back: %v < %v", got, before)
	}
}

func TestCode(t *testing.T) {
	for _, c := range []struct {
		in   int
		want string
	}{{200, "200"}, {499, "499"}, {503, "503"}, {100, "100"}, {599, "599"}, {600, "600"}, {42, "42"}} {
		if got := metrics.Code(c.in); got != c.want {
			t.Errorf("Code(%d) = %q, want %q", c.in, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = metrics.Code(200) }); n != 0 {
		t.Errorf("Code(200) allocates %v times", n)
	}
}

func TestTokenExpiryGauge(t *testing.T) {
	m := metrics.New("dev")
	read := func() float64 {
		for _, f := range gatherSlice(t, m) {
			if f.GetName() == "dingproxy_token_expiry_timestamp_seconds" {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no token expiry gauge")
		return 0
	}
	if got := read(); got != 0 {
		t.Errorf("expiry with no source = %v, want 0", got)
	}
	m.TokenExpiresAt(func() time.Time { return time.Time{} })
	if got := read(); got != 0 {
		t.Errorf("expiry with no token held = %v, want 0", got)
	}
	exp := time.Unix(1900000000, 0)
	m.TokenExpiresAt(func() time.Time { return exp })
	if got := read(); got != 1900000000 {
		t.Errorf("expiry = %v, want 1900000000", got)
	}
}

func gatherSlice(t *testing.T, m *metrics.Metrics) []*dto.MetricFamily {
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}
