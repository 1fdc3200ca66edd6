package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestMain clears DINGPROXY_* from the environment, so that a developer's
// shell cannot change what Load returns here.
func TestMain(m *testing.M) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, envPrefix+"_") {
			os.Unsetenv(name)
		}
	}
	os.Exit(m.Run())
}

func ptr[T any](v T) *T { return &v }

// TestKeys pins the public key names (docs/configuration.md, "Every key") that leaves derives from
// the mapstructure tags.
func TestKeys(t *testing.T) {
	t.Parallel()
	want := []string{
		"listen", "admin_listen", "shutdown_timeout", "max_inflight",
		"server.read_header_timeout", "server.idle_timeout", "server.max_header_bytes",
		"server.body_read_timeout", "server.max_request_body_bytes",
		"upstreams.oapi", "upstreams.api",
		"app.key", "app.secret", "app.secret_file",
		"token.refresh_before", "token.endpoint", "token.placeholder",
		"retry.max_attempts", "retry.per_try_timeout", "retry.timeout",
		"retry.backoff.base", "retry.backoff.max", "retry.max_body_bytes", "retry.max_buffered_bytes",
		"retry.max_inspect_bytes",
		"retry.budget.ratio", "retry.budget.min_per_second",
		"pacing.per_api_qps", "pacing.global_qps", "pacing.robot_per_minute",
		"breaker.failure_ratio", "breaker.min_requests", "breaker.window",
		"breaker.open_timeout", "breaker.half_open_requests", "breaker.max_routes",
		"breaker.slow_call",
		"routes",
		"log.level", "log.format",
		"quota.monthly_budget", "quota.timezone",
		"fleet.redis_url", "fleet.key_prefix", "fleet.timeout", "outbox.dir", "outbox.max_bytes",
	}
	var got []string
	for _, l := range leaves() {
		got = append(got, l.key)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("leaves() keys mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadValid(t *testing.T) {
	t.Parallel()
	want := Config{
		Listen:          "0.0.0.0:18080",
		AdminListen:     ":19090",
		ShutdownTimeout: 5 * time.Second,
		MaxInflight:     1024,
		Server: Server{
			ReadHeaderTimeout:   3 * time.Second,
			IdleTimeout:         30 * time.Second,
			MaxHeaderBytes:      8192,
			BodyReadTimeout:     time.Minute,
			MaxRequestBodyBytes: 1000000,
		},
		Upstreams: Upstreams{OAPI: "http://127.0.0.1:8001/", API: "http://127.0.0.1:8002"},
		App:       App{Key: "dingabc123", Secret: "not-a-real-secret"},
		Token:     Token{RefreshBefore: 15 * time.Minute, Endpoint: EndpointGetToken},
		Retry: Retry{
			MaxAttempts:      3,
			PerTryTimeout:    2 * time.Second,
			Timeout:          90 * time.Second,
			Backoff:          Backoff{Base: 50 * time.Millisecond, Max: 2 * time.Second},
			MaxBodyBytes:     0,
			MaxBufferedBytes: 64 << 20,
			MaxInspectBytes:  4096,
			Budget:           Budget{Ratio: 0, MinPerSecond: 1.5},
		},
		Pacing: Pacing{PerAPIQPS: 60, GlobalQPS: 200, RobotPerMinute: 20},
		Breaker: Breaker{
			FailureRatio:     1,
			MinRequests:      1,
			Window:           time.Minute,
			OpenTimeout:      5 * time.Second,
			HalfOpenRequests: 1,
			MaxRoutes:        16,
			SlowCall:         1500 * time.Millisecond,
		},
		Routes: []Route{
			{Path: "/topapi/v2/user/get", Idempotent: ptr(true), SlowCall: ptr(time.Duration(0))},
			{Path: "/v1.0/robot/oToMessages/batchSend", Fallback: &Fallback{
				Status: 503,
				// Lower-cased by viper; header names are case-insensitive.
				Headers: map[string]string{"retry-after": "30", "x-reason": "breaker"},
				Body:    "busy",
				Stale:   time.Minute,
			}},
			{Path: "/topapi/v2/department/listsub", Fallback: &Fallback{Stale: 10 * time.Minute}, SlowCall: ptr(800 * time.Millisecond)},
			{Path: "/robot/send", Defer: &Defer{MaxAge: time.Hour, Merge: true}},
		},
		Log:    Log{Level: "debug", Format: "console"},
		Quota:  Quota{MonthlyBudget: 4000, Timezone: "Asia/Shanghai"},
		Fleet:  Fleet{RedisURL: "redis://redis.fleet:6379/2", KeyPrefix: "dp", Timeout: 80 * time.Millisecond},
		Outbox: Outbox{Dir: "/var/lib/dingproxy/outbox", MaxBytes: 64 << 20},
	}
	got, err := Load("testdata/valid.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("Load mismatch (-want +got):\n%s", diff)
	}
}

// The file is YAML whatever its name.
func TestLoadConfExtension(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dingproxy.conf")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%q): %v", path, err)
	}
	want, err := Load("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf(".conf differs from .yaml (-want +got):\n%s", diff)
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string
		want string
	}{
		{"invalid-unknown-key.yaml", "retry.bogus: unknown key"},
		{"invalid-unknown-nested-key.yaml", "routes[0].fallback.colour: unknown key"},
		{"invalid-negative-duration.yaml", "retry.per_try_timeout: must be > 0, got -1s"},
		{"invalid-ratio-above-one.yaml", "retry.budget.ratio: must be between 0 and 1, got 1.5"},
		{"invalid-bad-url.yaml", `upstreams.api: must be an absolute http or https URL with no path, query or user info, got "api.dingtalk.com"`},
		{"invalid-max-below-base.yaml", "retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms"},
		{"invalid-wrong-type.yaml", `retry.max_attempts: cannot parse "abc" as int`},
		{"invalid-types.yaml", strings.Join([]string{
			`listen: cannot parse true as string`,
			`token.refresh_before: cannot parse 30 as duration (missing unit, e.g. "30s")`,
			`retry.timeout: cannot parse "30" as duration (missing unit, e.g. "30s")`,
			`retry.max_body_bytes: cannot parse 1.5 as int`,
			`retry.budget: cannot parse 5 as map`,
			`breaker.failure_ratio: cannot parse "half" as number`,
			`breaker.min_requests: cannot parse -1 as non-negative int`,
			`routes[0].idempotent: cannot parse "sometimes" as bool`,
			`routes[0].fallback.headers: cannot parse a list as map`,
			`routes[1].path: cannot parse a list as string`,
			`routes[0].fallback.status: must be set (100 to 599) unless only fallback.stale is set`,
		}, "\n")},
		{"invalid-null-section.yaml", "retry: must be a map, got null (delete the key to use the defaults)"},
		{"invalid-duplicate-key.yaml", "listen: duplicate key (keys are case-insensitive)"},
		{"invalid-listen.yaml", strings.Join([]string{
			`listen: must be host:port, got "8080"`,
			`admin_listen: must be host:port, got "localhost:http"`,
		}, "\n")},
		{"invalid-same-listen.yaml", `admin_listen: must differ from listen ("127.0.0.1:8080")`},
		{"invalid-app.yaml", "app.secret: must be set (or app.secret_file) when app.key is set"},
		{"invalid-routes.yaml", strings.Join([]string{
			`routes[0].fallback.status: must be between 100 and 599, got 700`,
			`routes[1].path: must start with "/", got "topapi/x"`,
			`routes[2].path: duplicate of routes[0].path "/topapi/x"`,
			`routes[3].fallback.status: must be set (100 to 599) unless only fallback.stale is set`,
			`routes[3].fallback.headers: header name must be a valid HTTP token, got "bad name"`,
			`routes[3].fallback.stale: must be >= 0, got -1s`,
		}, "\n")},
		// Every problem at once: the file's own (type, unknown key) first,
		// then Validate's in struct order.
		{"invalid-several.yaml", strings.Join([]string{
			`retry.max_body_bytes: cannot parse "lots" as int`,
			`retry.colour: unknown key`,
			`admin_listen: must differ from listen ("127.0.0.1:8080")`,
			`upstreams.oapi: must be an absolute http or https URL with no path, query or user info, got "ftp://oapi.dingtalk.com"`,
			`retry.max_attempts: must be between 1 and 10, got 0`,
			`retry.per_try_timeout: must be <= retry.timeout (30s), got 1m0s`,
			`retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms`,
			`retry.budget.ratio: must be between 0 and 1, got 1.5`,
			`breaker.window: must be > 0, got -1s`,
			`routes[0].path: must start with "/", got "topapi/x"`,
			`routes[0].fallback.status: must be between 100 and 599, got 700`,
			`log.level: must be "debug", "info", "warn" or "error", got "verbose"`,
		}, "\n")},
	}
	// Every invalid file has a row.
	files, err := filepath.Glob("testdata/invalid-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.file] = true
	}
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no row in TestLoadInvalid", f)
		}
	}

	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			cfg, err := Load(filepath.Join("testdata", tt.file))
			if err == nil {
				t.Fatalf("Load = %+v, nil; want error %q", cfg, tt.want)
			}
			if cfg != nil {
				t.Errorf("Load returned a config with an error")
			}
			if diff := cmp.Diff(tt.want, err.Error()); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
			// Each line is a *FieldError that errors.As finds.
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("errors.As(%v, *FieldError) = false", err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) = false", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path %q", err, path)
	}
}

func TestLoadNotYAML(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, data string
	}{
		{"syntax", "listen: [127.0.0.1:8080\n"},
		{"list at top", "- listen: 127.0.0.1:8080\n"},
		{"duplicate key", "listen: a\nlisten: b\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil || !strings.HasPrefix(err.Error(), "config: "+path+": ") {
				t.Errorf("Load(%q) error = %v, want one starting with %q", tt.data, err, "config: "+path+": ")
			}
		})
	}
}

// An empty file, or one of comments only, is the defaults.
func TestLoadEmptyFile(t *testing.T) {
	t.Parallel()
	for _, data := range []string{"", "# nothing\n", "---\n"} {
		path := filepath.Join(t.TempDir(), "empty.yaml")
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := Load(path)
		if err != nil {
			t.Fatalf("Load(%q): %v", data, err)
		}
		if diff := cmp.Diff(Default(), *got); diff != "" {
			t.Errorf("Load(%q) mismatch (-want +got):\n%s", data, diff)
		}
	}
}

func TestLoadNoFileIsDefault(t *testing.T) {
	t.Parallel()
	got, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}
	if diff := cmp.Diff(Default(), *got); diff != "" {
		t.Errorf(`Load("") mismatch (-want +got):\n%s`, diff)
	}
}

func TestExampleConfigIsDefault(t *testing.T) {
	t.Parallel()
	const path = "../../configs/dingproxy.yaml"
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%q): %v", path, err)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if diff := cmp.Diff(Default(), *got); diff != "" {
		t.Errorf("%s differs from Default() (-want +got):\n%s", path, diff)
	}

	// Every key is present in the file, and its variable is documented.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leaves() {
		if !strings.Contains(string(data), envName(l.key)) {
			t.Errorf("%s does not mention %s", path, envName(l.key))
		}
	}
	fileKeys := map[string]bool{}
	collectKeys(t, path, fileKeys)
	for _, l := range leaves() {
		if !fileKeys[l.key] {
			t.Errorf("%s lacks key %s", path, l.key)
		}
	}
}

// collectKeys records the dotted keys of path's top-level sections and their
// leaves, as Load's own parse sees them.
func collectKeys(t *testing.T, path string, keys map[string]bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseList(string(data))
	if err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		mm, ok := v.(map[string]any)
		if !ok {
			keys[prefix] = true
			return
		}
		for k, e := range mm {
			walk(joinKey(prefix, k), e)
		}
	}
	walk("", m)
}

// sampleEnv returns Default with every leaf changed to another valid value,
// and the environment that says so.
func sampleEnv(t *testing.T) (Config, map[string]string) {
	t.Helper()
	strs := map[string]string{
		"listen":            "127.0.0.1:18080",
		"admin_listen":      "127.0.0.1:19090",
		"upstreams.oapi":    "http://127.0.0.1:8001",
		"upstreams.api":     "http://127.0.0.1:8002",
		"app.key":           "ding-env-key",
		"app.secret":        "ding-env-secret",
		"token.endpoint":    EndpointGetToken,
		"token.placeholder": "USE-PROXY-TOKEN",
		"log.level":         "debug",
		"log.format":        "console",
		"fleet.redis_url":   "redis://:pw@127.0.0.1:6379/1",
		"fleet.key_prefix":  "dp-env",
		"quota.timezone":    "Europe/Berlin",
		"outbox.dir":        "/tmp/outbox",
	}
	const routesYAML = `
- path: /v1.0/robot/oToMessages/batchSend
  idempotent: true
  fallback:
    status: 503
    headers:
      Retry-After: "30"
    body: '{"errcode":-1}'
    stale: 2m
- path: /topapi/v2/user/get
- path: /topapi/message/corpconversation/asyncsend_v2
  defer:
    max_age: 10m
`
	routes := []Route{
		{Path: "/v1.0/robot/oToMessages/batchSend", Idempotent: ptr(true), Fallback: &Fallback{
			Status: 503, Headers: map[string]string{"retry-after": "30"}, Body: `{"errcode":-1}`, Stale: 2 * time.Minute,
		}},
		{Path: "/topapi/v2/user/get"},
		{Path: "/topapi/message/corpconversation/asyncsend_v2", Defer: &Defer{MaxAge: 10 * time.Minute}},
	}

	want := Default()
	def := reflect.ValueOf(Default())
	wv := reflect.ValueOf(&want).Elem()
	env := map[string]string{}
	for _, l := range leaves() {
		if l.key == "app.secret_file" {
			continue // excludes app.secret: TestSecretFile covers it
		}
		f := wv.FieldByIndex(l.index)
		var s string
		switch k := l.typ.Kind(); {
		case l.typ == durationType:
			d := time.Duration(f.Int()) + time.Second
			f.SetInt(int64(d))
			s = d.String()
		case l.typ == routesType:
			f.Set(reflect.ValueOf(routes))
			s = routesYAML
		case k == reflect.String:
			v, ok := strs[l.key]
			if !ok {
				t.Fatalf("no sample string for %s: add one", l.key)
			}
			f.SetString(v)
			s = v
		case k >= reflect.Int && k <= reflect.Int64:
			f.SetInt(f.Int() + 1)
			s = strconv.FormatInt(f.Int(), 10)
		case k >= reflect.Uint && k <= reflect.Uint64:
			f.SetUint(f.Uint() + 1)
			s = strconv.FormatUint(f.Uint(), 10)
		case k == reflect.Float64:
			f.SetFloat(f.Float() / 2)
			s = strconv.FormatFloat(f.Float(), 'g', -1, 64)
		default:
			t.Fatalf("no sample for %s of type %s: add one", l.key, l.typ)
		}
		if reflect.DeepEqual(f.Interface(), def.FieldByIndex(l.index).Interface()) {
			t.Fatalf("sample for %s equals its default", l.key)
		}
		env[envName(l.key)] = s
	}
	return want, env
}

// Every leaf key can be set from the environment, with no file.
func TestLoadEnvEveryKey(t *testing.T) {
	want, env := sampleEnv(t)
	if len(env) != len(leaves())-1 {
		t.Fatalf("sampleEnv set %d variables for %d keys (all but app.secret_file)", len(env), len(leaves()))
	}
	for name, v := range env {
		t.Setenv(name, v)
	}
	got, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf(`Load("") with every DINGPROXY_* set (-want +got):\n%s`, diff)
	}

	// The environment wins over the file too.
	got, err = Load("testdata/valid.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("Load(valid.yaml) with every DINGPROXY_* set (-want +got):\n%s", diff)
	}
}

// docs/configuration.md: credentials from the environment alone. AutomaticEnv needs the keys
// seeded with defaults for this to work.
func TestLoadEnvAppCredentialsNoFile(t *testing.T) {
	t.Setenv("DINGPROXY_APP_KEY", "dingabc")
	t.Setenv("DINGPROXY_APP_SECRET", "shh")
	got, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}
	want := Default()
	want.App = App{Key: "dingabc", Secret: "shh"}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadEnvOverridesFile(t *testing.T) {
	t.Setenv("DINGPROXY_RETRY_MAX_ATTEMPTS", "7")
	t.Setenv("DINGPROXY_LOG_LEVEL", "") // empty counts as unset
	got, err := Load("testdata/valid.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.Retry.MaxAttempts != 7 {
		t.Errorf("retry.max_attempts = %d, want 7 from the environment", got.Retry.MaxAttempts)
	}
	if got.Log.Level != "debug" {
		t.Errorf("log.level = %q, want the file's %q", got.Log.Level, "debug")
	}
	if got.Retry.Timeout != 90*time.Second {
		t.Errorf("retry.timeout = %v, want the file's 1m30s", got.Retry.Timeout)
	}
}

func TestLoadEnvRoutesJSON(t *testing.T) {
	t.Setenv("DINGPROXY_ROUTES", `[{"path":"/a","idempotent":false,"fallback":{"status":200,"headers":{"X-A":"1"}}},{"path":"/b"},{"path":"/c","slow_call":"750ms"}]`)
	got, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}
	want := []Route{
		{Path: "/a", Idempotent: ptr(false), Fallback: &Fallback{Status: 200, Headers: map[string]string{"x-a": "1"}}},
		{Path: "/b"},
		{Path: "/c", SlowCall: ptr(750 * time.Millisecond)},
	}
	if diff := cmp.Diff(want, got.Routes); diff != "" {
		t.Errorf("routes mismatch (-want +got):\n%s", diff)
	}
}

// "[]" clears the default routes.
func TestLoadEnvRoutesEmpty(t *testing.T) {
	t.Setenv("DINGPROXY_ROUTES", "[]")
	got, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}
	if len(got.Routes) != 0 {
		t.Errorf("routes = %+v, want none", got.Routes)
	}
}

func TestLoadEnvInvalid(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		file string
		want string
	}{
		{
			name: "wrong type",
			env:  map[string]string{"DINGPROXY_RETRY_MAX_ATTEMPTS": "abc"},
			want: `retry.max_attempts: cannot parse "abc" as int (from DINGPROXY_RETRY_MAX_ATTEMPTS)`,
		},
		{
			name: "invalid value",
			env:  map[string]string{"DINGPROXY_RETRY_BACKOFF_MAX": "50ms"},
			want: "retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms",
		},
		{
			name: "duration without unit",
			env:  map[string]string{"DINGPROXY_BREAKER_WINDOW": "30"},
			want: `breaker.window: cannot parse "30" as duration (missing unit, e.g. "30s") (from DINGPROXY_BREAKER_WINDOW)`,
		},
		{
			name: "slow_call negative",
			env:  map[string]string{"DINGPROXY_BREAKER_SLOW_CALL": "-1s"},
			want: "breaker.slow_call: must be >= 0 (0: off), got -1s",
		},
		{
			name: "route slow_call without unit",
			env:  map[string]string{"DINGPROXY_ROUTES": `[{"path":"/a","slow_call":2}]`},
			want: `routes[0].slow_call: cannot parse 2 as duration (missing unit, e.g. "2s") (from DINGPROXY_ROUTES)`,
		},
		{
			name: "routes not a list",
			env:  map[string]string{"DINGPROXY_ROUTES": "path: /a"},
			want: `routes: cannot parse a map as list (from DINGPROXY_ROUTES)`,
		},
		{
			name: "routes unknown key",
			env:  map[string]string{"DINGPROXY_ROUTES": `[{"path":"/a","fallback":{"status":200,"Colour":"red"}}]`},
			want: `routes[0].fallback.colour: unknown key (from DINGPROXY_ROUTES)`,
		},
		{
			name: "routes invalid",
			env:  map[string]string{"DINGPROXY_ROUTES": `[{"path":"a"}]`},
			want: `routes[0].path: must start with "/", got "a"`,
		},
		{
			name: "file and environment",
			env:  map[string]string{"DINGPROXY_PACING_GLOBAL_QPS": "many"},
			file: "testdata/invalid-unknown-key.yaml",
			want: "retry.bogus: unknown key\n" +
				`pacing.global_qps: cannot parse "many" as number (from DINGPROXY_PACING_GLOBAL_QPS)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := Load(tt.file)
			if err == nil {
				t.Fatalf("Load succeeded, want %q", tt.want)
			}
			if diff := cmp.Diff(tt.want, err.Error()); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
