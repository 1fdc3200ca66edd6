package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

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
	return newStackHooked(t, log, nil, opts...)
}

// newStackHooked is newStackTB with hook called on the App after New and
// before it starts or serves anything.
func newStackHooked(t testing.TB, log *zap.Logger, hook func(*app.App), opts ...stackOpt) *stack {
	t.Helper()
	return newStackOn(t, nil, log, hook, opts...)
}

// newStackOn is newStackHooked on fake (a new one when nil): the fake whose
// issued tokens the leak checks look for, and which opts may put behind a
// tap of the test's own by pointing the upstreams elsewhere.
func newStackOn(t testing.TB, fake *dingtalktest.Server, log *zap.Logger, hook func(*app.App), opts ...stackOpt) *stack {
	t.Helper()
	if fake == nil {
		fake = dingtalktest.NewServer(t, dingtalktest.Options{})
	}
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
	// Every stack logs at debug into a leak checker as well, which looks
	// at each line as it is written (a token cannot be logged before it is
	// issued) and keeps only leaks: no secret or token in any log line or
	// metric, over the whole end-to-end suite, in constant memory.
	// Benchmarks measure the default path: no debug logging.
	var leaks *leakCore
	if _, bench := t.(*testing.B); !bench {
		leaks = newLeakCore(func() []string {
			return append(fake.IssuedTokens(), dingtalktest.DefaultAppSecret, dingtalktest.DefaultRobotToken)
		})
		log = zap.New(zapcore.NewTee(log.Core(), leaks))
	}
	a, err := app.New(&cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		hook(a)
	}
	a.Start()
	a.SetReady(true)
	// The server the binary runs: the same limits on clients.
	px := httptest.NewUnstartedServer(nil)
	px.Config = a.Server(nil)
	px.Listener = a.Listener(px.Listener)
	px.Start()
	s := &stack{t: t, fake: fake, app: a, proxy: px, client: px.Client()}
	t.Cleanup(func() {
		px.Close()
		a.Close()
		s.client.CloseIdleConnections()
		if leaks != nil {
			checkNoSecrets(t, fake, a, leaks)
		}
	})
	return s
}

// checkNoSecrets fails t if the app secret, the robot token or any token
// the fake issued reached a log line (message or field) or /metrics.
func checkNoSecrets(t testing.TB, fake *dingtalktest.Server, a *app.App, leaks *leakCore) {
	t.Helper()
	for _, line := range leaks.found() {
		t.Errorf("a secret or token reached a log line: %s", line)
	}
	if n := leaks.lines.Load(); n == 0 {
		t.Errorf("the leak checker saw no log line at debug")
	}
	secrets := append(fake.IssuedTokens(), dingtalktest.DefaultAppSecret, dingtalktest.DefaultRobotToken)
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

// leakCore is a zap core at debug that encodes every entry as the JSON the
// binary writes and looks in it for the secrets secrets returns at that
// moment. It keeps the first few lines that leak, with the secret masked.
type leakCore struct {
	enc     zapcore.Encoder
	secrets func() []string
	lines   *atomic.Int64
	mu      *sync.Mutex
	leaks   *[]string
	leakN   *int
}

func newLeakCore(secrets func() []string) *leakCore {
	return &leakCore{
		enc:     zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		secrets: secrets,
		lines:   new(atomic.Int64),
		mu:      new(sync.Mutex),
		leaks:   new([]string),
		leakN:   new(int),
	}
}

func (c *leakCore) Enabled(zapcore.Level) bool { return true }

func (c *leakCore) With(fields []zapcore.Field) zapcore.Core {
	cc := *c
	cc.enc = c.enc.Clone()
	for _, f := range fields {
		f.AddTo(cc.enc)
	}
	return &cc
}

func (c *leakCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}

func (c *leakCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	c.lines.Add(1)
	buf, err := c.enc.EncodeEntry(e, fields)
	if err != nil {
		return err
	}
	line := buf.String()
	buf.Free()
	for _, sec := range c.secrets() {
		if sec != "" && strings.Contains(line, sec) {
			c.mu.Lock()
			if *c.leakN++; len(*c.leaks) < 10 {
				*c.leaks = append(*c.leaks, strings.ReplaceAll(line, sec, "<LEAKED>"))
			}
			c.mu.Unlock()
		}
	}
	return nil
}

func (c *leakCore) Sync() error { return nil }

// found is the leaking lines kept, and a count of the rest.
func (c *leakCore) found() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Clone(*c.leaks)
	if n := *c.leakN - len(out); n > 0 {
		out = append(out, fmt.Sprintf("... and %d more", n))
	}
	return out
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
