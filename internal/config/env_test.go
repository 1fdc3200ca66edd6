package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A DINGPROXY_* variable that is no key's is refused, as an unknown key in
// the file is, naming the variable and the one meant when it is close, never
// its value.
func TestLoadEnvUnknown(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		file string
		want string
	}{
		{
			name: "misspelt key",
			env:  map[string]string{"DINGPROXY_RETRY_MAX_ATTEMPS": "3"},
			want: "DINGPROXY_RETRY_MAX_ATTEMPS: unknown variable (did you mean DINGPROXY_RETRY_MAX_ATTEMPTS?)",
		},
		{
			name: "swapped letters",
			env:  map[string]string{"DINGPROXY_LOG_LEVLE": "debug"},
			want: "DINGPROXY_LOG_LEVLE: unknown variable (did you mean DINGPROXY_LOG_LEVEL?)",
		},
		{
			name: "a secret's typo keeps the secret out",
			env:  map[string]string{"DINGPROXY_APP_SECRETT": "s3cr3t-value-Q"},
			want: "DINGPROXY_APP_SECRETT: unknown variable (did you mean DINGPROXY_APP_SECRET?)",
		},
		{
			name: "key without its section",
			env:  map[string]string{"DINGPROXY_REDIS_URL": "redis://:pw-in-url@redis:6379/0"},
			want: "DINGPROXY_REDIS_URL: unknown variable (did you mean DINGPROXY_FLEET_REDIS_URL?)",
		},
		{
			name: "nothing close",
			env:  map[string]string{"DINGPROXY_COLOUR": "red"},
			want: "DINGPROXY_COLOUR: unknown variable",
		},
		{
			name: "not a service link's value",
			env:  map[string]string{"DINGPROXY_ADMIN_PORT": "9091"},
			want: "DINGPROXY_ADMIN_PORT: unknown variable",
		},
		{
			name: "a section",
			env:  map[string]string{"DINGPROXY_RETRY_BACKOFF": "1s"},
			want: "DINGPROXY_RETRY_BACKOFF: unknown variable: retry.backoff is a section, not a key: set its keys, such as DINGPROXY_RETRY_BACKOFF_BASE",
		},
		{
			name: "a route's field",
			env:  map[string]string{"DINGPROXY_ROUTES_0_PATH": "/a"},
			want: "DINGPROXY_ROUTES_0_PATH: unknown variable: the routes are set as a whole, by DINGPROXY_ROUTES (a YAML or JSON list)",
		},
		{
			name: "lower case",
			env:  map[string]string{"dingproxy_log_level": "debug"},
			want: "dingproxy_log_level: unknown variable: names are upper-case (DINGPROXY_LOG_LEVEL)",
		},
		{
			name: "several, sorted, after the file's problems",
			env:  map[string]string{"DINGPROXY_ZZZ": "1", "DINGPROXY_AAA": "1", "DINGPROXY_PACING_GLOBAL_QPS": "many"},
			file: "testdata/invalid-unknown-key.yaml",
			want: "retry.bogus: unknown key\n" +
				`pacing.global_qps: cannot parse "many" as number (from DINGPROXY_PACING_GLOBAL_QPS)` + "\n" +
				"DINGPROXY_AAA: unknown variable\n" +
				"DINGPROXY_ZZZ: unknown variable",
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
			for k, v := range tt.env {
				if len(v) >= 8 && strings.Contains(err.Error(), v) { // the secret, the URL with a password
					t.Errorf("the error shows %s's value", k)
				}
			}
			var ee *EnvError
			if !errors.As(err, &ee) {
				t.Errorf("no *EnvError in %v", err)
			}
		})
	}
}

// What is not refused: an empty unknown variable (it counts as unset, as a
// key's does), the variables Kubernetes sets for Services whose names start
// with dingproxy (the manifests' own dingproxy-metrics and dingproxy-redis,
// and one named dingproxy), and variables that only look like the prefix.
func TestLoadEnvNotRefused(t *testing.T) {
	env := map[string]string{
		"DINGPROXY_RETRY_MAX_ATTEMPS": "", // empty: unset
		// Service dingproxy-redis, port 6379.
		"DINGPROXY_REDIS_SERVICE_HOST":        "10.96.12.7",
		"DINGPROXY_REDIS_SERVICE_PORT":        "6379",
		"DINGPROXY_REDIS_SERVICE_PORT_REDIS":  "6379",
		"DINGPROXY_REDIS_PORT":                "tcp://10.96.12.7:6379",
		"DINGPROXY_REDIS_PORT_6379_TCP":       "tcp://10.96.12.7:6379",
		"DINGPROXY_REDIS_PORT_6379_TCP_PROTO": "tcp",
		"DINGPROXY_REDIS_PORT_6379_TCP_PORT":  "6379",
		"DINGPROXY_REDIS_PORT_6379_TCP_ADDR":  "10.96.12.7",
		// Service dingproxy-metrics on an IPv6 cluster.
		"DINGPROXY_METRICS_SERVICE_HOST":       "fd00:10:96::1f",
		"DINGPROXY_METRICS_SERVICE_PORT_ADMIN": "9090",
		"DINGPROXY_METRICS_PORT":               "tcp://[fd00:10:96::1f]:9090",
		"DINGPROXY_METRICS_PORT_9090_TCP_ADDR": "fd00:10:96::1f",
		// Service dingproxy.
		"DINGPROXY_SERVICE_HOST": "10.96.0.9",
		"DINGPROXY_PORT":         "tcp://10.96.0.9:8080",
		// Not the prefix.
		"DINGPROXYX_LEVEL":     "1",
		"MY_DINGPROXY_SETTING": "1",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	if _, err := Load(""); err != nil {
		t.Errorf("Load refused what it should leave alone:\n%v", err)
	}
}

// The service-link values must have the form kubelet gives them: a name of
// that shape with another value is a mistake, refused.
func TestKubernetesServiceLink(t *testing.T) {
	for _, tt := range []struct {
		name, value string
		want        bool
	}{
		{"DINGPROXY_REDIS_SERVICE_HOST", "10.0.0.1", true},
		{"DINGPROXY_REDIS_SERVICE_HOST", "redis", false},
		{"DINGPROXY_REDIS_SERVICE_PORT", "6379", true},
		{"DINGPROXY_REDIS_SERVICE_PORT", "06379", false},
		{"DINGPROXY_REDIS_SERVICE_PORT", "0", false},
		{"DINGPROXY_PORT", "tcp://10.0.0.1:8080", true},
		{"DINGPROXY_PORT", "8080", false},
		{"DINGPROXY_PORT", "http://10.0.0.1:8080", false},
		{"DINGPROXY_PORT", "tcp://redis:8080", false},
		{"DINGPROXY_X_PORT_53_UDP", "udp://10.0.0.1:53", true},
		{"DINGPROXY_X_PORT_53_UDP_PROTO", "udp", true},
		{"DINGPROXY_X_PORT_53_UDP_PROTO", "http", false},
		{"DINGPROXY_X_PORT_53_UDP_ADDR", "10.0.0.1", true},
		{"DINGPROXY_X_PORT_53_UDP_PORT", "53", true},
		{"DINGPROXY_LISTEN_ADDR", "10.0.0.1", false},
	} {
		if got := kubernetesServiceLink(tt.name, tt.value); got != tt.want {
			t.Errorf("kubernetesServiceLink(%q, %q) = %v, want %v", tt.name, tt.value, got, tt.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"", "abc", 3}, {"abc", "abc", 0},
		{"RETRY_MAX_ATTEMPS", "RETRY_MAX_ATTEMPTS", 1}, // deletion
		{"LOG_LEVLE", "LOG_LEVEL", 1},                  // swap
		{"kitten", "sitting", 3},
	} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
