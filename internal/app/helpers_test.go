package app_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stack is a client, dingproxy and the fake DingTalk, all on loopback.
type stack struct {
	t      testing.TB
	fake   *dingtalktest.Server
	app    *app.App
	proxy  *httptest.Server
	client *http.Client
}

type stackOpt func(*config.Config)

// newStack starts the fake, and dingproxy in front of it built from the
// default configuration with fast backoff, through the same wiring as the
// binary.
func newStack(t *testing.T, log *zap.Logger, opts ...stackOpt) *stack {
	t.Helper()
	if log == nil {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	return newStackTB(t, log, opts...)
}

func newStackTB(t testing.TB, log *zap.Logger, opts ...stackOpt) *stack {
	t.Helper()
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = fake.URL(), fake.URL()
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	cfg.Retry.Backoff.Base, cfg.Retry.Backoff.Max = time.Millisecond, 5*time.Millisecond
	cfg.Retry.PerTryTimeout, cfg.Retry.Timeout = 5*time.Second, 10*time.Second
	// Tests not about pacing send faster than DingTalk's 20 calls/s per API.
	cfg.Pacing.PerAPIQPS, cfg.Pacing.GlobalQPS = 1e5, 1e6
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	// Every stack logs at debug into a recorder as well, and is checked at
	// its end: no secret or token in any log line or metric, over the
	// whole end-to-end suite.
	// Benchmarks measure the default path: no debug logging.
	var recorded *observer.ObservedLogs
	if _, bench := t.(*testing.B); !bench {
		var rec zapcore.Core
		rec, recorded = observer.New(zapcore.DebugLevel)
		log = zap.New(zapcore.NewTee(log.Core(), rec))
	}
	a, err := app.New(&cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	// The 1 s throttle penalty is DingTalk's; tests shorten it to stay fast.
	p := a.RetryTransport().Policy()
	p.ThrottlePenalty = 5 * time.Millisecond
	a.RetryTransport().SetPolicy(p)
	a.Start()
	a.SetReady(true)
	// The server the binary runs: the same limits on clients.
	px := httptest.NewUnstartedServer(nil)
	px.Config = a.Server(nil)
	px.Start()
	s := &stack{t: t, fake: fake, app: a, proxy: px, client: px.Client()}
	t.Cleanup(func() {
		px.Close()
		a.Close()
		s.client.CloseIdleConnections()
		if recorded != nil {
			checkNoSecrets(t, fake, a, recorded)
		}
	})
	return s
}

// checkNoSecrets fails t if the app secret, the robot token or any token
// the fake issued appears in a log line (message or field) or in /metrics.
func checkNoSecrets(t testing.TB, fake *dingtalktest.Server, a *app.App, logs *observer.ObservedLogs) {
	t.Helper()
	secrets := append(fake.IssuedTokens(), dingtalktest.DefaultAppSecret, dingtalktest.DefaultRobotToken)
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatalf("encoding a log entry: %v", err)
		}
		line := buf.String()
		buf.Free()
		for _, sec := range secrets {
			if sec != "" && strings.Contains(line, sec) {
				t.Errorf("a secret or token reached a log line: %s", strings.ReplaceAll(line, sec, "<LEAKED>"))
			}
		}
	}
	rec := httptest.NewRecorder()
	a.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	for _, sec := range secrets {
		if sec != "" && strings.Contains(rec.Body.String(), sec) {
			t.Errorf("a secret or token reached /metrics")
		}
	}
}

// do sends a request through the proxy and returns the answer with its body read.
func (s *stack) do(method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	s.t.Helper()
	return s.doCtx(context.Background(), method, path, body, hdr...)
}

func (s *stack) doCtx(ctx context.Context, method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		r = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, s.proxy.URL+path, r)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
