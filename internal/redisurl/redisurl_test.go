package redisurl

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const pw = "s3cr3t-Val-4b9f"

// One server: redis.ParseURL's options, the database from the path.
func TestSingle(t *testing.T) {
	tests := []struct {
		url        string
		addr, user string
		pass       string
		db         int
		tls        bool
	}{
		{"redis://r:6379/0", "r:6379", "", "", 0, false},
		{"redis://r", "r:6379", "", "", 0, false},
		{"redis://:" + pw + "@r:6380/3", "r:6380", "", pw, 3, false},
		{"rediss://app:" + pw + "@r.example:6380/1", "r.example:6380", "app", pw, 1, true},
		{"redis://[::1]:6379/2", "[::1]:6379", "", "", 2, false},
		{"redis://r:6379/?db=4", "r:6379", "", "", 4, false},
	}
	for _, tt := range tests {
		got, err := Parse(tt.url)
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		if got.Form != Single || got.Single == nil || got.Cluster != nil || got.Failover != nil {
			t.Errorf("%s: form %v, want single only", tt.url, got.Form)
			continue
		}
		o := got.Single
		if o.Addr != tt.addr || o.Username != tt.user || o.Password != tt.pass || o.DB != tt.db || (o.TLSConfig != nil) != tt.tls {
			t.Errorf("%s: addr %q user %q password %q db %d TLS %v; want %q %q %q %d %v",
				tt.url, o.Addr, o.Username, o.Password, o.DB, o.TLSConfig != nil, tt.addr, tt.user, tt.pass, tt.db, tt.tls)
		}
	}
	got, err := Parse("redis://r:6379/0?dial_timeout=3&client_name=dp")
	if err != nil || got.Single.DialTimeout != 3*time.Second || got.Single.ClientName != "dp" {
		t.Errorf("go-redis's query options: %+v %v", got, err)
	}
}

// A cluster: any addr= seed, or the +cluster scheme for one; the database
// is 0 or none.
func TestCluster(t *testing.T) {
	tests := []struct {
		url   string
		addrs []string
		user  string
		pass  string
		tls   string // the TLS server name; "" without TLS
	}{
		{"redis://r1:7000?addr=r2:7001&addr=r3:7002", []string{"r1:7000", "r2:7001", "r3:7002"}, "", "", ""},
		{"redis://:" + pw + "@r1:7000/0?addr=r2:7001", []string{"r1:7000", "r2:7001"}, "", pw, ""},
		{"redis+cluster://cfg.example:6379", []string{"cfg.example:6379"}, "", "", ""},
		{"redis+cluster://cfg.example:6379/", []string{"cfg.example:6379"}, "", "", ""},
		{"rediss+cluster://app:" + pw + "@cfg.example:6380/0", []string{"cfg.example:6380"}, "app", pw, "cfg.example"},
		{"rediss+cluster://cfg.example:6380?addr=other:6380&db=0", []string{"cfg.example:6380", "other:6380"}, "", "", "cfg.example"},
		{"rediss://r1:6380?addr=r2:6380", []string{"r1:6380", "r2:6380"}, "", "", "r1"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.url)
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		if got.Form != Cluster || got.Cluster == nil || got.Single != nil || got.Failover != nil {
			t.Errorf("%s: form %v, want cluster only", tt.url, got.Form)
			continue
		}
		o := got.Cluster
		server := ""
		if o.TLSConfig != nil {
			server = o.TLSConfig.ServerName
		}
		if !slices.Equal(o.Addrs, tt.addrs) || o.Username != tt.user || o.Password != tt.pass || server != tt.tls {
			t.Errorf("%s: addrs %v user %q password %q TLS %q; want %v %q %q %q",
				tt.url, o.Addrs, o.Username, o.Password, server, tt.addrs, tt.user, tt.pass, tt.tls)
		}
	}
	got, err := Parse("redis+cluster://cfg:6379?max_redirects=5&read_only=true")
	if err != nil || got.Cluster.MaxRedirects != 5 || !got.Cluster.ReadOnly {
		t.Errorf("go-redis's cluster options: %+v %v", got, err)
	}
}

// Sentinel: master_name=; the URL's user and password are the sentinels',
// the query's username= and password= the master's.
func TestSentinel(t *testing.T) {
	got, err := Parse("redis://sent:" + pw + "-s@s1:26379/2?master_name=mymaster&addr=s2:26379&addr=s3:26379&username=app&password=" + pw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Form != Sentinel || got.Failover == nil || got.Single != nil || got.Cluster != nil {
		t.Fatalf("form %v, want sentinel only", got.Form)
	}
	o := got.Failover
	if o.MasterName != "mymaster" || !slices.Equal(o.SentinelAddrs, []string{"s1:26379", "s2:26379", "s3:26379"}) || o.DB != 2 {
		t.Errorf("master %q sentinels %v db %d", o.MasterName, o.SentinelAddrs, o.DB)
	}
	if o.SentinelUsername != "sent" || o.SentinelPassword != pw+"-s" || o.Username != "app" || o.Password != pw {
		t.Errorf("sentinel user %q password %q, master user %q password %q", o.SentinelUsername, o.SentinelPassword, o.Username, o.Password)
	}
	if o.TLSConfig != nil {
		t.Error("TLS without rediss://")
	}
	got, err = Parse("rediss://s1:26379?master_name=m")
	if err != nil || got.Form != Sentinel || got.Failover.TLSConfig == nil || got.Failover.DB != 0 {
		t.Errorf("rediss:// sentinel: %+v %v", got, err)
	}
}

// Each malformed form is refused with a message that says what is wrong
// and never quotes the URL's password or any value.
func TestErrors(t *testing.T) {
	tests := []struct{ url, want string }{
		{"", "has no scheme: write redis://host:port/0 (or rediss:// for TLS)"},
		{":" + pw + "@r:6379", "has no scheme: write redis://host:port/0 (or rediss:// for TLS)"},
		{"redis://:" + pw + "@r:port/0", "does not parse as a URL"},
		{"http://:" + pw + "@r:6379", `must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL, got scheme "http"`},
		{"unix:///tmp/redis.sock", `must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL, got scheme "unix"`},
		{"redis:///0", "must name a host"},
		{"redis://:" + pw + "@/0", "must name a host"},
		{"redis://r:6379/x", "must end in a database number (/0)"},
		{"redis://r:6379/-1", "must end in a database number (/0)"},
		{"redis://r:6379/0/1", "must end in a database number (/0)"},
		{"redis://r:6379?%zz", "its query (after ?) does not parse"},
		{"redis://r1:6379/1?addr=r2:6379", "names a database other than 0, which a Redis Cluster does not have: end it in /0 or no database"},
		{"redis+cluster://r1:6379/2", "names a database other than 0, which a Redis Cluster does not have: end it in /0 or no database"},
		{"redis+cluster://r1:6379?db=1", "names a database other than 0, which a Redis Cluster does not have: end it in /0 or no database"},
		{"redis://r1:6379?addr=r2", "addr parameter 1 is not host:port"},
		{"redis://r1:6379?addr=r2:1&addr=:2", "addr parameter 2 is not host:port"},
		{"redis://r1:6379?addr=r2:99999", "addr parameter 1 is not host:port"},
		{"redis://r1:6379?addr=u:" + pw + "@r2:1", "addr parameter 1 is not host:port"},
		{"redis://s1:26379?master_name=", "master_name= must name the master"},
		{"redis+cluster://s1:26379?master_name=m", "master_name= (Sentinel) does not go with the redis+cluster:// scheme (a cluster): use redis://"},
		{"rediss+cluster://s1:26379?master_name=m", "master_name= (Sentinel) does not go with the rediss+cluster:// scheme (a cluster): use rediss://"},
		{"redis://r:6379/0?pool_size=3&" + pw + "=1", "query parameter 2 is not an option of a Redis URL"},
		{"redis://r:6379/0?" + pw, "query parameter 1 is not an option of a Redis URL"},
		{"redis://r:6379/0?password=" + pw, "query parameter 1 is not an option of a Redis URL"},
		{"redis://r:6379/0?read_timeout=" + pw, `query parameter "read_timeout": its value does not parse`},
		{"redis://r1:6379?addr=r2:6379&skip_verify=true", "query parameter 2 is not an option of a Redis Cluster URL"},
		{"redis+cluster://r1:6379?pool_fifo=" + pw, `query parameter "pool_fifo": its value does not parse`},
		{"redis://s1:26379?master_name=m&route_randomly=" + pw, `query parameter "route_randomly": its value does not parse`},
		{"redis://s1:26379?master_name=m&max_redirects=3", "query parameter 2 is not an option of a Sentinel URL"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.url)
		if err == nil {
			t.Errorf("%q: parsed as %v, want %q", tt.url, got.Form, tt.want)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("%q: error %q, want %q", tt.url, err, tt.want)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("%q: the error shows the password", tt.url)
		}
	}
}
