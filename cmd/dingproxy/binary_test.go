package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// testVersion is stamped into the binary that the tests build.
const testVersion = "v0.0.0-binary-test"

// testSecret is app.secret in the generated configuration: it must reach the
// upstream's token endpoint and never the logs.
const testSecret = "S3CRET-binary-test-9c1e"

// Deadlines. They are generous for slow CI machines: the tests poll and move
// on as soon as the condition holds.
const (
	buildTimeout = 4 * time.Minute // a cold build cache, while other packages test
	readyTimeout = 10 * time.Second
	exitTimeout  = 15 * time.Second
	pollInterval = 20 * time.Millisecond
)

// The binary is built once for all the tests, into buildDir, which
// TestMain removes.
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
	buildSkip string
)

// buildBinary builds the command, CGO_ENABLED=0, the first time a test asks
// for it, and returns its path.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary: skipped with -short")
	}
	buildOnce.Do(func() {
		gocmd, err := exec.LookPath("go")
		if err != nil {
			buildSkip = fmt.Sprintf("no go command to build the binary: %v", err)
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "dingproxy-test-")
		if buildErr != nil {
			return
		}
		bin := filepath.Join(buildDir, "dingproxy")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, gocmd, "build", "-o", bin, "-ldflags", "-X main.version="+testVersion, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		buildBin = bin
	})
	if buildSkip != "" {
		t.Skip(buildSkip)
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// cleanEnv is the environment without any DINGPROXY_* variable.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DINGPROXY_") {
			env = append(env, kv)
		}
	}
	return env
}

// syncBuffer is a bytes.Buffer that the process's output copier and the test
// may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fakeDingTalk stands for both DingTalk hosts. It answers the OAuth2 token
// call with a token, /topapi/slow once release is closed, and every other
// path with {"errcode":0}.
type fakeDingTalk struct {
	srv     *httptest.Server
	entered chan struct{} // one value per request that reached /topapi/slow
	release chan struct{} // closed to let /topapi/slow answer

	releaseOnce sync.Once

	mu         sync.Mutex
	tokenCalls []map[string]string // the token calls' JSON bodies
	calls      []upstreamCall      // the other calls
}

// upstreamCall is a call that reached fakeDingTalk.
type upstreamCall struct {
	method string
	url    url.URL
	body   string
}

// Release lets the calls to /topapi/slow answer.
func (f *fakeDingTalk) Release() { f.releaseOnce.Do(func() { close(f.release) }) }

func newFakeDingTalk(t *testing.T) *fakeDingTalk {
	t.Helper()
	f := &fakeDingTalk{entered: make(chan struct{}, 16), release: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serveHTTP))
	t.Cleanup(func() {
		f.Release()
		f.srv.Close()
	})
	return f
}

func (f *fakeDingTalk) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/v1.0/oauth2/accessToken":
		var m map[string]string
		json.Unmarshal(body, &m)
		f.mu.Lock()
		f.tokenCalls = append(f.tokenCalls, m)
		f.mu.Unlock()
		io.WriteString(w, `{"accessToken":"t","expireIn":7200}`)
		return
	case "/topapi/slow":
		f.entered <- struct{}{}
		select {
		case <-f.release:
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, upstreamCall{method: r.Method, url: *r.URL, body: string(body)})
	f.mu.Unlock()
	io.WriteString(w, `{"errcode":0,"errmsg":"ok"}`)
}

// freePort returns a port that was free a moment ago on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proxyProcess is a running dingproxy binary.
type proxyProcess struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // cmd.Wait's error, once done is closed

	proxyURL, adminURL string
	// configDir is laid out as Kubernetes mounts a ConfigMap: the file is a
	// symlink through ..data, which an update swaps.
	configDir, config string
}

// exited reports whether the process has exited, without waiting.
func (p *proxyProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to exitTimeout for the process to exit and returns its
// exit status; it kills the process and fails the test past the deadline.
func (p *proxyProcess) waitExit(t *testing.T) int {
	t.Helper()
	timer := time.NewTimer(exitTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("dingproxy did not exit within %s; stderr:\n%s", exitTimeout, p.stderr.String())
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		t.Fatalf("dingproxy: %v", p.err)
	}
	return p.cmd.ProcessState.ExitCode()
}

// testClient returns a client of its own, whose connections are closed at the
// end of the test (for goleak).
func testClient(t *testing.T, timeout time.Duration) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: timeout}
}

const binaryConfig = `# generated by binary_test.go
listen: 127.0.0.1:%d
admin_listen: 127.0.0.1:%d
shutdown_timeout: 10s
upstreams:
  oapi: %s
  api: %s
app:
  key: test-app-key
  secret: %s
retry:
  max_attempts: 3
log:
  level: info
  format: json
`

// startProxy runs the binary on free ports in front of up and waits until it
// is ready and holds a token. A port taken by someone else between freePort
// and the binary's listen is retried with new ports.
func startProxy(t *testing.T, bin string, up *fakeDingTalk, env ...string) *proxyProcess {
	t.Helper()
	for try := 1; ; try++ {
		p := tryStartProxy(t, bin, up, env...)
		if p == nil {
			if try < 3 {
				continue
			}
			t.Fatal("dingproxy could not listen: ports kept being taken")
		}
		return p
	}
}

// tryStartProxy returns nil when the process could not listen.
func tryStartProxy(t *testing.T, bin string, up *fakeDingTalk, env ...string) *proxyProcess {
	t.Helper()
	listen, admin := freePort(t), freePort(t)
	for admin == listen {
		admin = freePort(t)
	}
	cfg := fmt.Sprintf(binaryConfig, listen, admin, up.srv.URL, up.srv.URL, testSecret)
	dir := t.TempDir()
	configMapUpdate(t, dir, cfg)
	path := filepath.Join(dir, "dingproxy.yaml")
	if err := os.Symlink(filepath.Join("..data", "dingproxy.yaml"), path); err != nil {
		t.Fatal(err)
	}

	p := &proxyProcess{
		stderr:    &syncBuffer{},
		stdout:    &syncBuffer{},
		done:      make(chan struct{}),
		proxyURL:  fmt.Sprintf("http://127.0.0.1:%d", listen),
		adminURL:  fmt.Sprintf("http://127.0.0.1:%d", admin),
		configDir: dir,
		config:    cfg,
	}
	p.cmd = exec.Command(bin, "-config", path)
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
		}
		<-p.done
		if t.Failed() {
			t.Logf("dingproxy stderr:\n%s", p.stderr.String())
		}
	})

	if !waitReady(t, p) {
		if strings.Contains(p.stderr.String(), "address already in use") {
			t.Logf("port taken, retrying: %s", p.stderr.String())
			return nil
		}
		t.Fatalf("dingproxy exited before it was ready (%v); stderr:\n%s", p.err, p.stderr.String())
	}
	return p
}

// readyzAnswer is /readyz's JSON body.
// configMapUpdate writes content as the kubelet updates a ConfigMap volume:
// into a new timestamped directory, then swaps the ..data symlink to it
// atomically (symlink beside, rename over) and removes the old directory.
func configMapUpdate(t *testing.T, dir, content string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..2026_11_27_")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "dingproxy.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
}

type readyzAnswer struct {
	Ready bool `json:"ready"`
	Token struct {
		Mode             string  `json:"mode"`
		Held             bool    `json:"held"`
		ExpiresInSeconds float64 `json:"expires_in_seconds"`
		LastError        string  `json:"last_error"`
	} `json:"token"`
}

// getReadyz fetches /readyz once.
func getReadyz(c *http.Client, p *proxyProcess) (int, readyzAnswer, error) {
	var ans readyzAnswer
	resp, err := c.Get(p.adminURL + "/readyz")
	if err != nil {
		return 0, ans, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, ans, err
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return resp.StatusCode, ans, fmt.Errorf("Content-Type %q", ct)
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return resp.StatusCode, ans, fmt.Errorf("%v in %q", err, body)
	}
	return resp.StatusCode, ans, nil
}

// waitReady polls /readyz until it answers 200 with ready:true and a held
// token. It returns false if the process exits first, and fails the test
// past readyTimeout.
func waitReady(t *testing.T, p *proxyProcess) bool {
	t.Helper()
	c := testClient(t, time.Second)
	deadline := time.Now().Add(readyTimeout)
	var last string
	for {
		if p.exited() {
			return false
		}
		code, ans, err := getReadyz(c, p)
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK && ans.Ready && ans.Token.Held:
			if ans.Token.Mode != "injecting" {
				t.Errorf("readyz token mode = %q, want injecting", ans.Token.Mode)
			}
			if s := ans.Token.ExpiresInSeconds; s <= 0 || s > 7200 {
				t.Errorf("readyz token expires_in_seconds = %v, want in (0, 7200]", s)
			}
			if ans.Token.LastError != "" {
				t.Errorf("readyz token last_error = %q, want none", ans.Token.LastError)
			}
			return true
		default:
			last = fmt.Sprintf("HTTP %d %+v", code, ans)
		}
		if time.Now().After(deadline) {
			p.cmd.Process.Kill()
			<-p.done
			t.Fatalf("dingproxy not ready within %s, last /readyz: %s; stderr:\n%s", readyTimeout, last, p.stderr.String())
		}
		time.Sleep(pollInterval)
	}
}

// waitReadyzStatus polls /readyz until it answers want.
func waitReadyzStatus(t *testing.T, p *proxyProcess, want int) readyzAnswer {
	t.Helper()
	c := testClient(t, time.Second)
	deadline := time.Now().Add(readyTimeout)
	var last string
	for {
		code, ans, err := getReadyz(c, p)
		if err == nil && code == want {
			return ans
		}
		last = fmt.Sprintf("HTTP %d %+v %v", code, ans, err)
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not answer %d within %s, last: %s", want, readyTimeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// waitRefused polls until a connection to addr is refused.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections %s after SIGTERM", addr, readyTimeout)
		}
		time.Sleep(pollInterval)
	}
}

// assertGone checks that nothing answers 200 on the admin port any more.
func assertGone(t *testing.T, p *proxyProcess) {
	t.Helper()
	c := testClient(t, time.Second)
	for _, path := range []string{"/readyz", "/healthz"} {
		resp, err := c.Get(p.adminURL + path)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("%s still answers 200 after exit", path)
			}
		}
	}
}

// checkLogs checks the JSON log lines on stderr: started, shutting down, and
// never the secret.
func checkLogs(t *testing.T, p *proxyProcess) {
	t.Helper()
	stderr := p.stderr.String()
	if strings.Contains(stderr, testSecret) || strings.Contains(p.stdout.String(), testSecret) {
		t.Errorf("the output shows app.secret:\n%s", stderr)
	}
	msgs := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if msg, _ := m["msg"].(string); msg != "" {
			msgs[msg] = m
		}
	}
	started, ok := msgs["dingproxy started"]
	if !ok {
		t.Fatalf("no \"dingproxy started\" log line:\n%s", stderr)
	}
	if started["version"] != testVersion {
		t.Errorf("started: version = %v, want %s", started["version"], testVersion)
	}
	if started["injecting_tokens"] != true {
		t.Errorf("started: injecting_tokens = %v, want true", started["injecting_tokens"])
	}
	if _, ok := msgs["shutting down"]; !ok {
		t.Errorf("no \"shutting down\" log line:\n%s", stderr)
	}
	if _, ok := msgs["dingproxy stopped"]; ok {
		t.Errorf("\"dingproxy stopped\" logged on a clean shutdown:\n%s", stderr)
	}
}

func TestBinaryServeAndSignal(t *testing.T) {
	bin := buildBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			up := newFakeDingTalk(t)
			p := startProxy(t, bin, up)

			// The token was fetched with the configured credentials.
			up.mu.Lock()
			if len(up.tokenCalls) == 0 {
				t.Error("ready with a token, but no token call reached the upstream")
			} else if m := up.tokenCalls[0]; m["appKey"] != "test-app-key" || m["appSecret"] != testSecret {
				t.Errorf("token call body = %v, want the configured key and secret", m)
			}
			up.mu.Unlock()

			// One proxied call: one attempt, the token injected.
			c := testClient(t, 10*time.Second)
			resp, err := c.Post(p.proxyURL+"/topapi/v2/user/get", "application/json", strings.NewReader(`{"userid":"u1"}`))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"errcode":0`) {
				t.Errorf("proxied call: HTTP %d %s, want 200 {\"errcode\":0...}", resp.StatusCode, body)
			}
			if got := resp.Header.Get("X-Dingproxy-Attempts"); got != "1" {
				t.Errorf("X-Dingproxy-Attempts = %q, want \"1\"", got)
			}
			up.mu.Lock()
			if len(up.calls) != 1 {
				t.Errorf("upstream got %d calls, want 1", len(up.calls))
			} else {
				r := up.calls[0]
				if r.method != http.MethodPost || r.url.Path != "/topapi/v2/user/get" || r.url.Query().Get("access_token") != "t" || r.body != `{"userid":"u1"}` {
					t.Errorf("upstream got %s %s body %q, want POST /topapi/v2/user/get?access_token=t with the body", r.method, &r.url, r.body)
				}
			}
			up.mu.Unlock()

			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := p.waitExit(t); code != exitOK {
				t.Errorf("exit status after %s = %d, want 0; stderr:\n%s", sig, code, p.stderr.String())
			}
			assertGone(t, p)
			checkLogs(t, p)
		})
	}
}

// On SIGTERM the proxy stops accepting and reports not ready, but finishes
// the call in flight before it exits 0.
func TestBinaryGracefulShutdown(t *testing.T) {
	bin := buildBinary(t)
	up := newFakeDingTalk(t)
	p := startProxy(t, bin, up)

	type result struct {
		code     int
		body     string
		attempts string
		err      error
	}
	results := make(chan result, 1)
	c := testClient(t, 20*time.Second)
	go func() {
		resp, err := c.Get(p.proxyURL + "/topapi/slow")
		if err != nil {
			results <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		results <- result{code: resp.StatusCode, body: string(b), attempts: resp.Header.Get("X-Dingproxy-Attempts"), err: err}
	}()
	// Make sure the goroutine is done before the test ends, whatever happens:
	// killing the process ends its call.
	var res *result
	t.Cleanup(func() {
		if res == nil {
			p.cmd.Process.Kill()
			<-results
		}
	})

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-up.entered:
	case r := <-results:
		res = &r
		t.Fatalf("the slow call ended before reaching the upstream: %+v", r)
	case <-timer.C:
		t.Fatal("the slow call did not reach the upstream")
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While the call is in flight: not ready, but the admin port answers.
	ans := waitReadyzStatus(t, p, http.StatusServiceUnavailable)
	if ans.Ready {
		t.Errorf("readyz during shutdown: ready = true with HTTP 503")
	}
	// The proxy soon stops accepting connections: readyz may turn 503 a
	// moment before the listener is closed.
	waitRefused(t, strings.TrimPrefix(p.proxyURL, "http://"))
	if p.exited() {
		t.Fatalf("dingproxy exited with a call in flight; stderr:\n%s", p.stderr.String())
	}

	up.Release()
	select {
	case r := <-results:
		res = &r
	case <-time.After(exitTimeout):
		t.Fatal("the call in flight did not finish")
	}
	if res.err != nil || res.code != http.StatusOK || !strings.Contains(res.body, `"errcode":0`) || res.attempts != "1" {
		t.Errorf("call in flight: %+v, want HTTP 200 {\"errcode\":0...} after 1 attempt", *res)
	}
	if code := p.waitExit(t); code != exitOK {
		t.Errorf("exit status = %d, want 0", code)
	}
	assertGone(t, p)
	checkLogs(t, p)
}

// The built binary's exit statuses and messages without serving.
func TestBinaryNoServe(t *testing.T) {
	bin := buildBinary(t)
	tests := []struct {
		name       string
		args       []string
		env        []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "bad config",
			args:       []string{"-config", filepath.Join("testdata", "invalid-max-below-base.yaml")},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + "  retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms\n",
		},
		{
			name:       "bad config checked",
			args:       []string{"-check-config", "-config", filepath.Join("testdata", "invalid-unknown-key.yaml")},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + "  retry.bogus: unknown key\n",
		},
		{
			name:       "bad environment",
			env:        []string{"DINGPROXY_RETRY_MAX_ATTEMPTS=0"},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + "  retry.max_attempts: must be between 1 and 10, got 0\n",
		},
		{
			name:       "misspelt environment variable",
			env:        []string{"DINGPROXY_RETRY_MAX_ATTEMPS=3"},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + "  DINGPROXY_RETRY_MAX_ATTEMPS: unknown variable (did you mean DINGPROXY_RETRY_MAX_ATTEMPTS?)\n",
		},
		{
			name:       "misspelt environment variable checked",
			args:       []string{"-check-config", "-config", filepath.Join("..", "..", "configs", "dingproxy.yaml")},
			env:        []string{"DINGPROXY_APP_SECRETT=" + testSecret},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + "  DINGPROXY_APP_SECRETT: unknown variable (did you mean DINGPROXY_APP_SECRET?)\n",
		},
		{
			// What kubelet sets for the manifests' Services dingproxy-redis
			// and dingproxy-metrics is not the proxy's, and not refused.
			name: "Kubernetes service variables checked",
			args: []string{"-check-config", "-config", filepath.Join("..", "..", "configs", "dingproxy.yaml")},
			env: []string{"DINGPROXY_REDIS_SERVICE_HOST=10.96.0.7", "DINGPROXY_REDIS_SERVICE_PORT=6379",
				"DINGPROXY_REDIS_PORT=tcp://10.96.0.7:6379", "DINGPROXY_REDIS_PORT_6379_TCP_ADDR=10.96.0.7",
				"DINGPROXY_METRICS_SERVICE_PORT_ADMIN=9090", "DINGPROXY_METRICS_PORT_9090_TCP=tcp://10.96.0.8:9090"},
			wantCode:   exitOK,
			wantStdout: "configuration is valid\n",
		},
		{
			name:       "fleet URL without a scheme checked",
			args:       []string{"-check-config", "-config", filepath.Join("..", "..", "configs", "dingproxy.yaml")},
			env:        []string{"DINGPROXY_FLEET_REDIS_URL=:" + testSecret + "@localhost:6379"},
			wantCode:   exitBadConfig,
			wantStderr: invalidHeader + `  fleet.redis_url: ":xxxxx@localhost:6379" has no scheme: write redis://:xxxxx@localhost:6379/0 (or rediss:// for TLS)` + "\n",
		},
		{
			name:       "valid config checked",
			args:       []string{"-check-config", "-config", filepath.Join("..", "..", "configs", "dingproxy.yaml")},
			wantCode:   exitOK,
			wantStdout: "configuration is valid\n",
		},
		{
			name:       "version",
			args:       []string{"-version"},
			wantCode:   exitOK,
			wantStdout: "dingproxy " + testVersion + "\n",
		},
		{
			name:     "unknown flag",
			args:     []string{"-bogus"},
			wantCode: exitBadConfig,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runToExit(t, bin, tt.env, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit status = %d, want %d; stderr:\n%s", code, tt.wantCode, stderr)
			}
			if stdout != tt.wantStdout {
				t.Errorf("stdout = %q, want %q", stdout, tt.wantStdout)
			}
			if tt.wantStderr != "" && stderr != tt.wantStderr {
				t.Errorf("stderr =\n%s\nwant\n%s", stderr, tt.wantStderr)
			}
		})
	}
}

// An outbox.dir that cannot be made (under a regular file: refused to
// root too) stops the start of a proxy with a deferred route: exit status
// 2, as for an invalid configuration, naming the key, and nothing served.
// -check-config judges the file alone and says it is valid: the directory
// is the host's, as the listen port is, and the file is checked where it
// is written (deploy/k8s/configmap.yaml names the pod's volume, which the
// machine that checks it does not have).
func TestBinaryOutboxDirNotWritable(t *testing.T) {
	bin := buildBinary(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	listen, admin := freePort(t), freePort(t)
	for admin == listen {
		admin = freePort(t)
	}
	cfg := fmt.Sprintf(deferConfig, listen, admin, fake.URL(), fake.URL(),
		dingtalktest.DefaultAppKey, dingtalktest.DefaultAppSecret, filepath.Join(file, "outbox"), "")
	path := writeFile(t, "dingproxy.yaml", cfg)

	code, stdout, stderr := runToExit(t, bin, nil, "-config", path)
	if code != exitBadConfig {
		t.Errorf("exit status = %d, want %d; stderr:\n%s", code, exitBadConfig, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	// The last line is the plain one, after the JSON log's.
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "dingproxy: outbox.dir: ") || !strings.Contains(last, file) {
		t.Errorf("stderr's last line = %q, want it to name outbox.dir and the path", last)
	}
	if !strings.Contains(stderr, `"key":"outbox.dir"`) {
		t.Errorf("the log does not name the key:\n%s", stderr)
	}
	if strings.Contains(stderr, `"msg":"dingproxy started"`) {
		t.Errorf("started though outbox.dir cannot be used:\n%s", stderr)
	}
	if strings.Contains(stderr, dingtalktest.DefaultAppSecret) {
		t.Error("the output shows the app secret")
	}
	if h := fake.TotalHits(); h != 0 {
		t.Errorf("DingTalk had %d requests from a proxy that could not start", h)
	}

	code, stdout, stderr = runToExit(t, bin, nil, "-check-config", "-config", path)
	if code != exitOK || stdout != "configuration is valid\n" || stderr != "" {
		t.Errorf("-check-config: exit status %d, stdout %q, stderr %q; want 0 and valid (the file is valid; the directory is checked at start)", code, stdout, stderr)
	}
}

// A ConfigMap update is applied live: a valid file is swapped in (the new
// log level holds for the next call, the new route's series appear), an
// invalid one is refused and the running policy keeps serving; both are
// counted in /metrics.
func TestBinaryLiveReload(t *testing.T) {
	bin := buildBinary(t)
	up := newFakeDingTalk(t)
	p := startProxy(t, bin, up)
	c := testClient(t, 10*time.Second)

	call := func() {
		t.Helper()
		resp, err := c.Post(p.proxyURL+"/topapi/v2/user/get", "application/json", strings.NewReader(`{"userid":"u1"}`))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("proxied call: HTTP %d", resp.StatusCode)
		}
	}
	metricsText := func() string {
		t.Helper()
		resp, err := c.Get(p.adminURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("/metrics: HTTP %d, %v", resp.StatusCode, err)
		}
		return string(b)
	}
	waitMetric := func(line string) {
		t.Helper()
		deadline := time.Now().Add(readyTimeout)
		for {
			if strings.Contains(metricsText(), line+"\n") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/metrics never showed %q; stderr:\n%s", line, p.stderr.String())
			}
			time.Sleep(pollInterval)
		}
	}

	call()
	if strings.Contains(p.stderr.String(), `"msg":"attempt"`) {
		t.Fatal("a debug attempt line at log.level info")
	}
	// Valid: debug logs and a route of its own.
	valid := strings.Replace(p.config, "level: info", "level: debug", 1) +
		"routes:\n  - path: /topapi/v2/department/listsub\n    idempotent: true\n"
	configMapUpdate(t, p.configDir, valid)
	// One scrape is not a snapshot (collectors are gathered concurrently
	// with the reload), so each expected line is waited for.
	waitMetric(`dingproxy_config_reloads_total{result="success"} 1`)
	waitMetric(`dingproxy_breaker_state{route="/topapi/v2/department/listsub"} 0`)
	waitMetric("dingproxy_config_last_reload_successful 1")
	call()
	// stderr reaches the buffer through a pipe: poll for the line.
	waitStderr := func(s, what string) {
		t.Helper()
		deadline := time.Now().Add(readyTimeout)
		for !strings.Contains(p.stderr.String(), s) {
			if time.Now().After(deadline) {
				t.Errorf("%s: no %s in stderr", what, s)
				return
			}
			time.Sleep(pollInterval)
		}
	}
	waitStderr(`"msg":"attempt"`, "after log.level was reloaded to debug")

	// Invalid: refused, counted, and the proxy keeps serving.
	configMapUpdate(t, p.configDir, strings.Replace(valid, "max_attempts: 3", "max_attempts: 0", 1))
	waitMetric(`dingproxy_config_reloads_total{result="failure"} 1`)
	waitMetric("dingproxy_config_last_reload_successful 0")
	waitStderr("configuration reload refused", "after an invalid file")
	waitStderr("retry.max_attempts", "naming the bad key")
	call()

	// A listen address cannot change live: said so, and the old one serves.
	moved := strings.Replace(valid, "listen: 127.0.0.1:", "listen: 127.0.0.2:", 1)
	configMapUpdate(t, p.configDir, moved)
	waitMetric(`dingproxy_config_reloads_total{result="success"} 2`)
	waitStderr(`"restart_required":["listen"]`, "after a changed listen address")
	call()

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t); code != exitOK {
		t.Errorf("exit status = %d, want 0", code)
	}
	if strings.Contains(p.stderr.String(), testSecret) {
		t.Errorf("the secret reached the logs")
	}
}

// With fleet.redis_url naming a Redis that is not there, the proxy starts,
// is ready, serves alone, says so once, and never shows the URL's password.
func TestBinaryFleetRedisAbsent(t *testing.T) {
	bin := buildBinary(t)
	up := newFakeDingTalk(t)
	const pw = "hunter2-fleet-pw"
	redisURL := fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", pw, freePort(t)) // nothing listens there
	p := startProxy(t, bin, up, "DINGPROXY_FLEET_REDIS_URL="+redisURL)
	c := testClient(t, 10*time.Second)
	resp, err := c.Post(p.proxyURL+"/topapi/v2/user/get", "application/json", strings.NewReader(`{"userid":"u1"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"errcode":0`) {
		t.Errorf("proxied call with Redis absent: HTTP %d %s, want 200", resp.StatusCode, body)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t); code != exitOK {
		t.Errorf("exit status = %d, want 0", code)
	}
	out := p.stderr.String() + p.stdout.String()
	if strings.Contains(out, pw) {
		t.Errorf("the output shows the Redis password:\n%s", out)
	}
	if n := strings.Count(out, "fleet: Redis unreachable"); n != 1 {
		t.Errorf("%d \"Redis unreachable\" lines, want 1 (logged once):\n%s", n, out)
	}
	if !strings.Contains(out, `"fleet":"shared"`) {
		t.Errorf("the start line does not say the fleet mode:\n%s", out)
	}
}

// runToExit runs the binary with args (and env beside a clean
// environment) until it exits, within exitTimeout, and returns its exit
// status, stdout and stderr.
func runToExit(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("dingproxy %q did not exit within %s; stderr:\n%s", args, exitTimeout, stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}
