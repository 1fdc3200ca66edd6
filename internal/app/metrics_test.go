package app_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/metrics"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestMetricsFollowTraffic drives each kind of outcome through the proxy and
// reads the registry the admin port serves.
func TestMetricsFollowTraffic(t *testing.T) {
	const configured = dingtalktest.PathAsyncSend
	s := newStack(t, nil, breakerSettings(2, time.Minute), func(c *config.Config) {
		c.Routes = []config.Route{{Path: configured}}
	})
	m := s.app.Metrics()

	// A configured route is on the dashboards before its first call.
	if n := testutil.CollectAndCount(m.Requests); n != 2 {
		t.Errorf("requests series at start = %d, want 2 (the configured route and max_inflight refusals, at 0)", n)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues(configured, "200")); got != 0 {
		t.Errorf("configured route's requests at start = %v", got)
	}
	if got := testutil.ToFloat64(m.PacingRate.WithLabelValues(configured)); got != 1e5 {
		t.Errorf("configured route's pacing rate = %v, want pacing.per_api_qps", got)
	}

	// One retried read: busy, then success.
	read := dingtalktest.PathUserGet
	s.fake.Script(read, dingtalktest.SystemBusy())
	if resp, body := s.do(http.MethodPost, read, []byte(`{"userid":"u1"}`)); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Fatalf("read: %d %s", resp.StatusCode, body)
	}
	// Requests are counted once the handler returns, which may be just
	// after the client has read the answer.
	eventually(t, "requests 200", func() float64 { return testutil.ToFloat64(m.Requests.WithLabelValues(read, "200")) }, 1)
	eventually(t, "inflight", func() float64 { return testutil.ToFloat64(m.Inflight) }, 0)
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"attempts system_busy", testutil.ToFloat64(m.Attempts.WithLabelValues(read, dingtalk.ReasonSystemBusy)), 1},
		{"attempts success", testutil.ToFloat64(m.Attempts.WithLabelValues(read, dingtalk.ReasonSuccess)), 1},
		{"retries system_busy", testutil.ToFloat64(m.Retries.WithLabelValues(read, dingtalk.ReasonSystemBusy)), 1},
		{"token refreshes success", testutil.ToFloat64(m.TokenRefreshes.WithLabelValues(metrics.ResultSuccess)), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.RequestDuration, "dingproxy_request_duration_seconds"); n != 2 {
		t.Errorf("duration series = %d, want 2", n)
	}

	// An outage opens the read's breaker: state 2, a transition, fallbacks.
	s.fake.SetChaos(dingtalktest.Chaos{Paths: []string{read}, Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(503), P: 1}}})
	waitFor(t, "the breaker to open", func() bool {
		resp, _ := s.do(http.MethodPost, read, []byte(`{"userid":"u1"}`))
		return resp.Header.Get("X-Dingproxy-Fallback") != ""
	})
	if got := testutil.ToFloat64(m.BreakerState.WithLabelValues(read)); got != 2 {
		t.Errorf("breaker_state = %v, want 2 (open)", got)
	}
	if got := testutil.ToFloat64(m.BreakerTransits.WithLabelValues(read, "open")); got != 1 {
		t.Errorf("transitions to open = %v, want 1", got)
	}
	eventually(t, "circuit-open fallbacks", func() float64 { return testutil.ToFloat64(m.Fallbacks.WithLabelValues(read, "circuit-open")) }, 1)
	if got := testutil.ToFloat64(m.Requests.WithLabelValues(read, "503")); got < 2 {
		t.Errorf("requests answered 503 = %v, want the failures and the fallback", got)
	}

	// A body too large to buffer is counted as unreplayable.
	big := make([]byte, config.Default().Retry.MaxBodyBytes+1)
	s.do(http.MethodPost, dingtalktest.PathEcho, big)
	eventually(t, "unreplayable", func() float64 {
		return testutil.ToFloat64(m.Unreplayable.WithLabelValues(dingtalktest.PathEcho, metrics.UnreplayableTooLarge))
	}, 1)

	// A rejected request has a route of its own.
	conn, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("absolute-form request: %v %v", resp, err)
	}
	eventually(t, "rejected requests", func() float64 { return testutil.ToFloat64(m.Requests.WithLabelValues(proxy.RouteRejected, "400")) }, 1)
	if problems, err := testutil.GatherAndLint(m.Registry); err != nil || len(problems) > 0 {
		t.Errorf("lint after traffic: %v %v", problems, err)
	}
}

// eventually waits until get returns want, or fails t at a deadline.
func eventually(t *testing.T, what string, get func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := get()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s = %v, want %v", what, got, want)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// TestThrottleLowersPacingRateGauge: a throttle answer lowers the route's
// pacing rate, and the gauge says so.
func TestThrottleLowersPacingRateGauge(t *testing.T) {
	s := newStack(t, nil)
	p := s.app.Loop().Policy()
	p.MaxAttempts = 1
	s.app.Loop().SetPolicy(p)
	path := dingtalktest.PathDeptList
	s.fake.Script(path, dingtalktest.Throttle())
	s.do(http.MethodGet, path, nil)
	if got := testutil.ToFloat64(s.app.Metrics().PacingRate.WithLabelValues(path)); got <= 0 || got >= 1e5 {
		t.Errorf("pacing rate after a throttle = %v, want below the configured 1e5", got)
	}
	if got := testutil.ToFloat64(s.app.Metrics().Attempts.WithLabelValues(path, dingtalk.ReasonRateLimited)); got != 1 {
		t.Errorf("rate_limited attempts = %v, want 1", got)
	}
}

// reloadYAML is the stack's configuration as a file, with maxAttempts.
func reloadYAML(s *stack, maxAttempts int, extra string) string {
	return `upstreams:
  oapi: ` + s.fake.URL() + `
  api: ` + s.fake.URL() + `
app:
  key: ` + dingtalktest.DefaultAppKey + `
  secret: ` + dingtalktest.DefaultAppSecret + `
retry:
  max_attempts: ` + strconv.Itoa(maxAttempts) + `
  per_try_timeout: 5s
  timeout: 10s
  backoff: {base: 1ms, max: 5ms}
pacing: {per_api_qps: 100000, global_qps: 1000000}
` + extra
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dingproxy.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// attemptsOnBusy scripts one "system busy" on a catalogue read and returns
// how many attempts the proxy made for it.
func attemptsOnBusy(t *testing.T, s *stack) string {
	t.Helper()
	s.fake.Script(dingtalktest.PathUserGet, dingtalktest.SystemBusy())
	resp, _ := s.do(http.MethodPost, dingtalktest.PathUserGet, []byte(`{"userid":"u1"}`))
	return resp.Header.Get("X-Dingproxy-Attempts")
}

// TestReloadValidTakesEffectOnNextRequest: a valid file replaces the retry
// policy for the very next call, and the reload is counted.
func TestReloadValidTakesEffectOnNextRequest(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := newStack(t, zap.New(core))
	if got := attemptsOnBusy(t, s); got != "2" {
		t.Fatalf("before reload: %s attempts, want 2", got)
	}
	if err := s.app.Reload(writeFile(t, reloadYAML(s, 1, "log: {level: debug}\n"))); err != nil {
		t.Fatalf("valid reload refused: %v", err)
	}
	if got := attemptsOnBusy(t, s); got != "1" {
		t.Errorf("after reload to max_attempts 1: %s attempts", got)
	}
	m := s.app.Metrics()
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues(metrics.ResultSuccess)); got != 1 {
		t.Errorf("successful reloads = %v", got)
	}
	if got := testutil.ToFloat64(m.ReloadSuccessful); got != 1 {
		t.Errorf("last reload successful = %v", got)
	}
	if s.app.Config().Retry.MaxAttempts != 1 {
		t.Errorf("Config() after reload: max_attempts %d", s.app.Config().Retry.MaxAttempts)
	}
	if logs.FilterMessage("configuration reloaded").Len() != 1 {
		t.Errorf("no \"configuration reloaded\" log line")
	}
}

// TestReloadInvalidRefusedOldPolicyServes: a file that does not validate
// changes nothing, is logged with the key at fault, and is counted.
func TestReloadInvalidRefusedOldPolicyServes(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := newStack(t, zap.New(core))
	before := s.app.Config()
	err := s.app.Reload(writeFile(t, reloadYAML(s, 0, "breaker: {failure_ratio: 2}\n")))
	if err == nil {
		t.Fatal("an invalid file was accepted")
	}
	for _, key := range []string{"retry.max_attempts", "breaker.failure_ratio"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
	if strings.Contains(err.Error(), dingtalktest.DefaultAppSecret) {
		t.Errorf("the error shows the secret")
	}
	if got := attemptsOnBusy(t, s); got != "2" {
		t.Errorf("after a refused reload: %s attempts, want the old policy's 2", got)
	}
	if s.app.Config() != before {
		t.Errorf("Config() changed after a refused reload")
	}
	m := s.app.Metrics()
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues(metrics.ResultFailure)); got != 1 {
		t.Errorf("failed reloads = %v", got)
	}
	if got := testutil.ToFloat64(m.ReloadSuccessful); got != 0 {
		t.Errorf("last reload successful = %v, want 0", got)
	}
	if logs.FilterMessage("configuration reload refused: the running configuration stays").Len() != 1 {
		t.Errorf("no log line for the refused reload")
	}
	// A missing file is refused the same way.
	if err := s.app.Reload(filepath.Join(t.TempDir(), "gone.yaml")); err == nil {
		t.Errorf("a missing file was accepted")
	}
	if got := attemptsOnBusy(t, s); got != "2" {
		t.Errorf("after a missing file: %s attempts, want 2", got)
	}
}

// TestReloadRestartOnlySettingsKept: credentials and upstreams cannot change
// live; a reload says so and keeps them.
func TestReloadRestartOnlySettingsKept(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := newStack(t, zap.New(core))
	// server's connection limits are restart-only; its body limits are live.
	server := "server: {max_header_bytes: 8192, idle_timeout: 1s, body_read_timeout: 7s, max_request_body_bytes: 2000000}\n"
	yaml := strings.Replace(reloadYAML(s, 3, server), "secret: "+dingtalktest.DefaultAppSecret, "secret: other-secret", 1)
	yaml = strings.Replace(yaml, "oapi: "+s.fake.URL(), "oapi: http://127.0.0.1:1", 1)
	if err := s.app.Reload(writeFile(t, yaml)); err != nil {
		t.Fatal(err)
	}
	cfg := s.app.Config()
	if cfg.Upstreams.OAPI != s.fake.URL() || cfg.App.Secret.Reveal() != dingtalktest.DefaultAppSecret {
		t.Errorf("restart-only settings changed live: %s", cfg.Upstreams.OAPI)
	}
	if def := config.Default().Server; cfg.Server.MaxHeaderBytes != def.MaxHeaderBytes || cfg.Server.IdleTimeout != def.IdleTimeout {
		t.Errorf("restart-only server settings changed live: %+v", cfg.Server)
	}
	if cfg.Retry.MaxAttempts != 3 || cfg.Server.BodyReadTimeout != 7*time.Second || cfg.Server.MaxRequestBodyBytes != 2000000 {
		t.Errorf("the live settings in the same file were not applied: max_attempts %d, server %+v", cfg.Retry.MaxAttempts, cfg.Server)
	}
	warn := logs.FilterMessageSnippet("change only with a restart").All()
	if len(warn) != 1 {
		t.Fatalf("restart-only warning lines = %d, want 1", len(warn))
	}
	got := warn[0].ContextMap()["restart_required"]
	if fmt.Sprint(got) != "[server.idle_timeout server.max_header_bytes upstreams.oapi app.secret]" {
		t.Errorf("restart_required = %v", got)
	}
	if resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("after reload: %d %s", resp.StatusCode, body)
	}
}

// TestReloadChangesLogLevel: log.level applies live to the logger main built.
func TestReloadChangesLogLevel(t *testing.T) {
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	cfg := config.Default()
	a, err := app.New(&cfg, nil, app.WithLevel(level))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	next := cfg
	next.Log.Level = "debug"
	if err := a.Apply(&next); err != nil {
		t.Fatal(err)
	}
	if level.Level() != zap.DebugLevel {
		t.Errorf("level after reload = %v, want debug", level.Level())
	}
}
