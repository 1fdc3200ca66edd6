package fleet

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// hashTag is what Redis Cluster hashes of key: the part between the first
// { and the first } after it when that part is not empty, else the whole
// key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// Every key of an app shares one hash tag, whatever follows the prefix (a
// robot's name with braces too), so that each script, MULTI and pipeline
// is on one slot; an empty app key or one with a brace gets a tag too.
func TestEveryKeyOfAnAppOnOneSlot(t *testing.T) {
	if got := Prefix("dingproxy", "dingabc123"); got != "dingproxy:{dingabc123}:" {
		t.Errorf("Prefix = %q, want dingproxy:{dingabc123}:", got)
	}
	tags := map[string]bool{}
	for _, app := range []string{"dingabc123", "", "}x", "a{b}c", "{", "ding:app"} {
		f := &Fleet{prefix: Prefix("dp", app)}
		tag := hashTag(f.key("token"))
		if tag == f.key("token") {
			t.Errorf("app key %q: key %q has no hash tag", app, f.key("token"))
			continue
		}
		tags[tag] = true
		for _, parts := range [][]string{
			{"token", "lock"}, {"events"}, {"state", "open"}, {"pace", Digest("/x")}, {"pace", "global", "log"},
			{"robotpace", "{evil}"}, {"robotpace", "a}b{c", "log"}, {"brk", Digest("/y")}, {"month", "2026-01"},
			{"cache", Digest("z")}, {"outbox", "stream"}, {"outbox", "lease"},
		} {
			if k := f.key(parts...); hashTag(k) != tag {
				t.Errorf("app key %q: %q hashes %q, want the app's tag %q", app, k, hashTag(k), tag)
			}
		}
	}
	if len(tags) != 6 {
		t.Errorf("%d tags for 6 app keys, want one each: %v", len(tags), tags)
	}
}

// A closed loopback port: New connects lazily, and these clients never
// reach anything.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// New builds the client of each form of fleet.redis_url with the same
// bounds: one try, bounded by the timeout, no identity, the same pools.
func TestNewClientOfEachForm(t *testing.T) {
	port := closedPort(t)
	const timeout = 70 * time.Millisecond
	type bounds struct {
		dial, read, write, pool  time.Duration
		retries, dials, size, id int
		ctx, noIdentity          bool
	}
	want := bounds{timeout, timeout, timeout, timeout, -1, 1, 32, 2, true, true}
	for _, tt := range []struct{ name, url string }{
		{"single", "redis://127.0.0.1:" + port + "/0"},
		{"cluster", "redis://127.0.0.1:" + port + "?addr=127.0.0.1:" + port},
		{"cluster, one seed", "redis+cluster://127.0.0.1:" + port},
		{"sentinel", "redis://127.0.0.1:" + port + "?master_name=m"},
	} {
		f, err := New(Options{URL: tt.url, KeyPrefix: "dp", AppKey: testKey, Timeout: timeout})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got bounds
		switch c := f.rdb.(type) {
		case *redis.ClusterClient:
			if !strings.HasPrefix(tt.name, "cluster") {
				t.Errorf("%s: a cluster client", tt.name)
			}
			o := c.Options()
			got = bounds{o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, o.MaxRetries, o.DialerRetries,
				o.PoolSize, o.MinIdleConns, o.ContextTimeoutEnabled, o.DisableIdentity}
		case *redis.Client:
			if strings.HasPrefix(tt.name, "cluster") {
				t.Errorf("%s: not a cluster client", tt.name)
			}
			o := c.Options()
			got = bounds{o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, o.MaxRetries, o.DialerRetries,
				o.PoolSize, o.MinIdleConns, o.ContextTimeoutEnabled, o.DisableIdentity}
			// go-redis normalises MaxRetries -1 (none) to 0 in a
			// client's own options.
			if got.retries == 0 {
				got.retries = -1
			}
			if tt.name == "sentinel" && !strings.HasPrefix(o.Addr, "FailoverClient") {
				t.Errorf("sentinel: a client of %q, not of the master Sentinel names", o.Addr)
			}
		default:
			t.Fatalf("%s: a %T", tt.name, f.rdb)
		}
		if got != want {
			t.Errorf("%s: bounds %+v, want %+v", tt.name, got, want)
		}
		f.Close()
	}
}

// New refuses a malformed fleet.redis_url, naming the key and what is
// wrong, never the URL or its password.
func TestNewRefusesAMalformedURL(t *testing.T) {
	const pw = "s3cr3t-url-Val"
	for _, u := range []string{
		"redis://:" + pw + "@r:port/0",
		"redis://:" + pw + "@r1:6379/2?addr=r2:6379",
		"redis://:" + pw + "@s1:26379?master_name=",
		"redis://r:6379/0?" + pw + "=1",
	} {
		_, err := New(Options{URL: u, KeyPrefix: "dp", AppKey: testKey})
		if err == nil || !strings.HasPrefix(err.Error(), "fleet: fleet.redis_url ") || strings.Contains(err.Error(), pw) {
			t.Errorf("New(%q) = %v, want a fleet.redis_url error without the password", u, err)
		}
	}
}
