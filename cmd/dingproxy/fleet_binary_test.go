package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The binary's log line for a fleet.redis_url it cannot use names what
// failed: a name that does not resolve (under the reserved .invalid domain:
// the resolver answers at once, nothing else is asked), a port nothing
// listens on, and a real redis-server that refuses the URL's password. The
// proxy serves alone all the same, and never prints the password.
func TestBinaryFleetRedisFailureNamed(t *testing.T) {
	bin := buildBinary(t)
	const pw = "hunter2-binary-fleet-pw"
	auth := redistest.Start(t)
	if _, err := auth.Do("CONFIG", "SET", "requirepass", pw+"-right"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		url  string
		env  []string
		want string // the start of the line's error field
	}{
		// A lookup of a few milliseconds fits the default 50ms, but a slow
		// machine's resolver must not turn this test into a timeout.
		{"unresolvable name", "redis://:" + pw + "@nohost.invalid:6379/0", []string{"DINGPROXY_FLEET_TIMEOUT=2s"},
			"DNS: "},
		{"refused", fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", pw, freePort(t)), nil,
			"connection refused: nothing listens at the URL's host and port"},
		{"wrong password", "redis://:" + pw + "@" + auth.Addr() + "/0", []string{"DINGPROXY_FLEET_TIMEOUT=2s"},
			"auth: Redis refused the URL's user name or password (WRONGPASS)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newFakeDingTalk(t)
			p := startProxy(t, bin, up, append(tt.env, "DINGPROXY_FLEET_REDIS_URL="+tt.url)...)
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
			var lines []map[string]any
			sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
			for sc.Scan() {
				var line map[string]any
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("a log line that is not JSON: %q", sc.Text())
				}
				if msg, _ := line["msg"].(string); strings.Contains(msg, "Redis unreachable") {
					lines = append(lines, line)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("%d \"Redis unreachable\" lines, want 1:\n%s", len(lines), out)
			}
			if got, _ := lines[0]["error"].(string); !strings.HasPrefix(got, tt.want) {
				t.Errorf("logged error = %q, want it to start %q", got, tt.want)
			}
		})
	}
}
