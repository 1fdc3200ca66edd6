package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if buildDir != "" {
			os.RemoveAll(buildDir)
		}
	}))
}

// clearEnv makes every DINGPROXY_* variable of the test's environment count as
// unset (an empty variable does), so that the developer's shell cannot change
// what the tests see. t.Setenv restores them afterwards.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "DINGPROXY_") {
			t.Setenv(name, "")
		}
	}
}

// runCmd calls run in-process and returns its exit status, stdout and stderr.
// None of the tests expects run to serve: if it has not returned within a
// deadline, it is serving by mistake, and a SIGTERM to ourselves, which run
// catches, stops it.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(args, &stdout, &stderr) }()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case code := <-done:
		return code, stdout.String(), stderr.String()
	case <-timer.C:
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	code := <-done
	t.Fatalf("run(%q) served instead of exiting; it exited %d after SIGTERM; stderr:\n%s", args, code, stderr.String())
	return 0, "", ""
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const invalidHeader = "dingproxy: invalid configuration:\n"

func TestRunBadConfigFile(t *testing.T) {
	tests := []struct {
		name string
		file string
		want []string // the error lines, in order, without their indent
	}{
		{"unknown key", "invalid-unknown-key.yaml", []string{
			"retry.bogus: unknown key",
		}},
		{"negative duration", "invalid-negative-duration.yaml", []string{
			"retry.per_try_timeout: must be > 0, got -1s",
		}},
		{"ratio above 1", "invalid-ratio-above-one.yaml", []string{
			"retry.budget.ratio: must be between 0 and 1, got 1.5",
		}},
		{"bad URL", "invalid-bad-url.yaml", []string{
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got "api.dingtalk.com"`,
		}},
		{"backoff max below base", "invalid-max-below-base.yaml", []string{
			"retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms",
		}},
		{"several problems", "invalid-several.yaml", []string{
			`retry.max_body_bytes: cannot parse "lots" as int`,
			"retry.colour: unknown key",
			`admin_listen: must differ from listen ("127.0.0.1:8080")`,
			`upstreams.oapi: must be an absolute http or https URL with no path, query or user info, got "ftp://oapi.dingtalk.com"`,
			"retry.max_attempts: must be between 1 and 10, got 0",
			"retry.per_try_timeout: must be <= retry.timeout (30s), got 1m0s",
			"retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms",
			"retry.budget.ratio: must be between 0 and 1, got 1.5",
			"breaker.window: must be > 0, got -1s",
			`routes[0].path: must start with "/", got "topapi/x"`,
			"routes[0].fallback.status: must be between 100 and 599, got 700",
			`log.level: must be "debug", "info", "warn" or "error", got "verbose"`,
		}},
	}
	for _, tt := range tests {
		path := filepath.Join("testdata", tt.file)
		want := invalidHeader
		for _, l := range tt.want {
			want += "  " + l + "\n"
		}
		// The same verdict whether the proxy is started or only checked.
		for _, check := range []bool{false, true} {
			name := tt.name
			args := []string{"-config", path}
			if check {
				name += "/check-config"
				args = append([]string{"-check-config"}, args...)
			}
			t.Run(name, func(t *testing.T) {
				clearEnv(t)
				code, stdout, stderr := runCmd(t, args...)
				if code != exitBadConfig {
					t.Errorf("exit status = %d, want %d", code, exitBadConfig)
				}
				if stdout != "" {
					t.Errorf("stdout = %q, want nothing", stdout)
				}
				if stderr != want {
					t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
				}
			})
		}
	}
}

func TestRunCheckConfigValid(t *testing.T) {
	for _, path := range []string{
		filepath.Join("testdata", "valid.yaml"),
		filepath.Join("..", "..", "configs", "dingproxy.yaml"),
	} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			clearEnv(t)
			code, stdout, stderr := runCmd(t, "-check-config", "-config", path)
			if code != exitOK {
				t.Errorf("exit status = %d, want 0; stderr:\n%s", code, stderr)
			}
			if stdout != "configuration is valid\n" {
				t.Errorf("stdout = %q, want %q", stdout, "configuration is valid\n")
			}
			if stderr != "" {
				t.Errorf("stderr = %q, want nothing", stderr)
			}
			if strings.Contains(stdout+stderr, "not-a-real-secret") {
				t.Error("the output shows app.secret's value")
			}
		})
	}
}

func TestRunCheckConfigDefaults(t *testing.T) {
	clearEnv(t)
	code, stdout, stderr := runCmd(t, "-check-config")
	if code != exitOK || stdout != "configuration is valid\n" {
		t.Errorf("no file: exit status %d, stdout %q, stderr %q; want 0 and valid", code, stdout, stderr)
	}
}

func TestRunVersion(t *testing.T) {
	clearEnv(t)
	// -version wins even over a file that does not exist.
	for _, args := range [][]string{{"-version"}, {"-version", "-config", "/nonexistent/dingproxy.yaml"}} {
		code, stdout, stderr := runCmd(t, args...)
		if code != exitOK {
			t.Errorf("%q: exit status = %d, want 0", args, code)
		}
		if want := "dingproxy " + version + "\n"; stdout != want {
			t.Errorf("%q: stdout = %q, want %q", args, stdout, want)
		}
		if stderr != "" {
			t.Errorf("%q: stderr = %q, want nothing", args, stderr)
		}
	}
}

func TestRunHelp(t *testing.T) {
	clearEnv(t)
	for _, arg := range []string{"-h", "-help", "--help"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != exitOK {
			t.Errorf("%s: exit status = %d, want 0", arg, code)
		}
		if stdout != "" {
			t.Errorf("%s: stdout = %q, want nothing", arg, stdout)
		}
		for _, f := range []string{"-config", "-check-config", "-version"} {
			if !strings.Contains(stderr, f) {
				t.Errorf("%s: usage does not mention %s:\n%s", arg, f, stderr)
			}
		}
	}
}

func TestRunBadArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-bogus"}, "flag provided but not defined: -bogus"},
		{"flag missing its value", []string{"-config"}, "flag needs an argument: -config"},
		{"bad bool", []string{"-check-config=maybe"}, `invalid boolean value "maybe" for -check-config`},
		{"positional argument", []string{"-check-config", "extra.yaml"}, `dingproxy: unexpected arguments: ["extra.yaml"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != exitBadConfig {
				t.Errorf("exit status = %d, want %d", code, exitBadConfig)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr does not contain %q:\n%s", tt.want, stderr)
			}
		})
	}
}

func TestRunMissingFile(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "no-such-dir", "dingproxy.yaml")
	for _, check := range []bool{false, true} {
		args := []string{"-config", path}
		if check {
			args = append(args, "-check-config")
		}
		code, stdout, stderr := runCmd(t, args...)
		if code != exitBadConfig {
			t.Errorf("%q: exit status = %d, want %d", args, code, exitBadConfig)
		}
		if stdout != "" {
			t.Errorf("%q: stdout = %q, want nothing", args, stdout)
		}
		if !strings.HasPrefix(stderr, invalidHeader) || !strings.Contains(stderr, path) {
			t.Errorf("%q: stderr does not name %s:\n%s", args, path, stderr)
		}
	}
}

func TestRunNotYAML(t *testing.T) {
	clearEnv(t)
	path := writeFile(t, "broken.yaml", "retry: [unclosed\n")
	code, _, stderr := runCmd(t, "-check-config", "-config", path)
	if code != exitBadConfig || !strings.Contains(stderr, path) {
		t.Errorf("exit status %d, stderr:\n%s\nwant %d naming %s", code, stderr, exitBadConfig, path)
	}
}

func TestRunBadEnvironment(t *testing.T) {
	tests := []struct {
		name, value string
		want        string
	}{
		{"zero", "0", "retry.max_attempts: must be between 1 and 10, got 0"},
		{"not a number", "abc", `retry.max_attempts: cannot parse "abc" as int (from DINGPROXY_RETRY_MAX_ATTEMPTS)`},
	}
	for _, tt := range tests {
		for _, check := range []bool{false, true} {
			name := tt.name
			var args []string // no file: defaults and the environment
			if check {
				name += "/check-config"
				args = []string{"-check-config"}
			}
			t.Run(name, func(t *testing.T) {
				clearEnv(t)
				t.Setenv("DINGPROXY_RETRY_MAX_ATTEMPTS", tt.value)
				code, stdout, stderr := runCmd(t, args...)
				if code != exitBadConfig {
					t.Errorf("exit status = %d, want %d", code, exitBadConfig)
				}
				if stdout != "" {
					t.Errorf("stdout = %q, want nothing", stdout)
				}
				if !strings.Contains(stderr, "retry.max_attempts") {
					t.Errorf("stderr does not name retry.max_attempts:\n%s", stderr)
				}
				if want := invalidHeader + "  " + tt.want + "\n"; stderr != want {
					t.Errorf("stderr =\n%s\nwant\n%s", stderr, want)
				}
			})
		}
	}
}

// The environment wins over the file: a valid file with a bad variable is bad.
func TestRunEnvironmentOverFile(t *testing.T) {
	clearEnv(t)
	t.Setenv("DINGPROXY_RETRY_BACKOFF_MAX", "1ms")
	code, _, stderr := runCmd(t, "-check-config", "-config", filepath.Join("testdata", "valid.yaml"))
	want := invalidHeader + "  retry.backoff.max: must be >= retry.backoff.base (50ms), got 1ms\n"
	if code != exitBadConfig || stderr != want {
		t.Errorf("exit status %d, stderr:\n%s\nwant %d and\n%s", code, stderr, exitBadConfig, want)
	}
}

func TestRunNeverPrintsSecret(t *testing.T) {
	const secret = "S3CRET-do-not-print-7f3a"
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want string // one line expected in stderr
	}{
		{
			name: "secret without key",
			yaml: "app:\n  secret: " + secret + "\nretry:\n  max_attempts: 0\n",
			want: "app.key: must be set when app.secret is set",
		},
		{
			name: "secret with key and another error",
			yaml: "app:\n  key: dingabc\n  secret: " + secret + "\nretry:\n  backoff:\n    base: 100ms\n    max: 50ms\n",
			want: "retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms",
		},
		{
			name: "secret next to an unknown key",
			yaml: "app:\n  key: dingabc\n  secret: " + secret + "\n  secrte: x\n",
			want: "app.secrte: unknown key",
		},
		{
			name: "secret of the wrong type",
			yaml: "app:\n  key: dingabc\n  secret: [" + secret + "]\n",
			want: "app.secret: cannot parse value as string",
		},
		{
			name: "secret from the environment",
			yaml: "app:\n  key: dingabc\nbreaker:\n  window: -1s\n",
			env:  map[string]string{"DINGPROXY_APP_SECRET": secret},
			want: "breaker.window: must be > 0, got -1s",
		},
		{
			name: "secret in an upstream URL",
			yaml: "upstreams:\n  api: http://user:" + secret + "@127.0.0.1/\n",
			want: `upstreams.api: must be an absolute http or https URL with no path, query or user info, got "http://user:xxxxx@127.0.0.1/"`,
		},
	}
	for _, tt := range tests {
		for _, check := range []bool{false, true} {
			name := tt.name
			if check {
				name += "/check-config"
			}
			t.Run(name, func(t *testing.T) {
				clearEnv(t)
				for k, v := range tt.env {
					t.Setenv(k, v)
				}
				args := []string{"-config", writeFile(t, "secret.yaml", tt.yaml)}
				if check {
					args = append(args, "-check-config")
				}
				code, stdout, stderr := runCmd(t, args...)
				if code != exitBadConfig {
					t.Errorf("exit status = %d, want %d", code, exitBadConfig)
				}
				if strings.Contains(stdout+stderr, secret) {
					t.Errorf("the output shows the secret:\nstdout: %s\nstderr: %s", stdout, stderr)
				}
				if !strings.Contains(stderr, "\n  "+tt.want+"\n") {
					t.Errorf("stderr does not have the line %q:\n%s", tt.want, stderr)
				}
			})
		}
	}
}

func TestIndent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "  "},
		{"a", "  a"},
		{"a\nb", "  a\n  b"},
		{"a\n  b", "  a\n    b"},
		{"é\nü", "  é\n  ü"},
	}
	for _, tt := range tests {
		if got := indent(tt.in); got != tt.want {
			t.Errorf("indent(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
