package app_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"go.uber.org/zap"
)

// BenchmarkProxy runs each case three ways against the same fake DingTalk on
// loopback, in one process: straight to the fake (via=direct), through a
// bare httputil.ReverseProxy on the same upstream transport (via=bare), and
// through dingproxy (via=dingproxy), and through dingproxy in shared mode
// with a local redis-server (via=dingproxy-shared). Compare with
//
//	benchstat -col /via -row .name bench/new.txt
//
// dingproxy runs its default policy except pacing, raised so that
// DingTalk's 20 calls/s per API does not become the benchmark, and a 1 ms
// backoff, so the retry case measures work, not a sleep. Direct and bare
// calls carry the token themselves; dingproxy injects its own.
func BenchmarkProxy(b *testing.B) {
	s := newBenchStack(b)
	tok, _ := s.app.Tokens().Peek()
	fakeURL, _ := url.Parse(s.fake.URL())
	bareTransport := app.NewUpstreamTransport()
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(fakeURL) },
		Transport: bareTransport,
	})
	b.Cleanup(func() { bare.Close(); bareTransport.CloseIdleConnections() })

	small := []byte(`{"userid":"manager4220","language":"zh_CN"}`)
	big := bytes.Repeat([]byte("x"), 64<<10)
	type target struct {
		name string
		base string
		tok  bool // the client adds access_token itself
	}
	targets := []target{{"direct", s.fake.URL(), true}, {"bare", bare.URL, true}, {"dingproxy", s.proxy.URL, false}}
	// Shared mode: a second dingproxy on the same fake, pacing through a
	// real redis-server (one round trip a call). Without one on the PATH
	// the row is left out (with CI=true, redistest fails instead).
	if _, ok := redistest.Available(); ok || os.Getenv("CI") == "true" {
		srv := redistest.Start(b)
		sh := newStackOn(b, s.fake, zap.NewNop(), nil, shared(srv.URL()))
		if resp, _ := sh.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != 200 {
			b.Fatalf("shared warm-up: %d", resp.StatusCode)
		}
		targets = append(targets, target{"dingproxy-shared", sh.proxy.URL, false})
	}
	cases := []struct {
		name   string
		method string
		path   string
		body   []byte
		busy   bool // the first answer is "system busy": one retry
	}{
		{"small-get", http.MethodGet, dingtalktest.PathDeptList, nil, false},
		{"small-post", http.MethodPost, dingtalktest.PathUserGet, small, false},
		{"post-64KiB", http.MethodPost, dingtalktest.PathEcho, big, false},
		{"one-retry", http.MethodPost, dingtalktest.PathUserGet, small, true},
	}
	for _, c := range cases {
		for _, tg := range targets {
			b.Run("case="+c.name+"/via="+tg.name, func(b *testing.B) {
				u := tg.base + c.path
				if tg.tok {
					u += "?access_token=" + url.QueryEscape(tok)
				}
				client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				defer client.CloseIdleConnections()
				b.ReportAllocs()
				b.SetBytes(int64(len(c.body)))
				defer reportCPU(b)()
				for b.Loop() {
					if c.busy {
						s.fake.Script(c.path, dingtalktest.SystemBusy())
					}
					code := call(b, client, c.method, u, c.body)
					if c.busy && tg.tok {
						// Without dingproxy the client retries itself.
						code = call(b, client, c.method, u, c.body)
					}
					if code != 200 {
						b.Fatalf("status %d", code)
					}
				}
			})
		}
	}
	// A cache hit (routes[].cache): answered from memory, nothing sent. The
	// first call fills the cache; the loop measures hits.
	b.Run("case=cache-hit/via=dingproxy", func(b *testing.B) {
		cs := newStackOn(b, s.fake, zap.NewNop(), nil, func(c *config.Config) {
			c.Routes = append(c.Routes, config.Route{Path: dingtalktest.PathDeptListSub, Cache: time.Hour})
		})
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		defer client.CloseIdleConnections()
		body := []byte(`{"dept_id":1}`)
		if code := call(b, client, http.MethodPost, cs.proxy.URL+dingtalktest.PathDeptListSub, body); code != 200 {
			b.Fatalf("status %d", code)
		}
		hits := s.fake.Hits(dingtalktest.PathDeptListSub)
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		defer reportCPU(b)()
		for b.Loop() {
			if code := call(b, client, http.MethodPost, cs.proxy.URL+dingtalktest.PathDeptListSub, body); code != 200 {
				b.Fatalf("status %d", code)
			}
		}
		if n := s.fake.Hits(dingtalktest.PathDeptListSub); n != hits {
			b.Fatalf("%d cached calls reached DingTalk", n-hits)
		}
	})
	for _, tg := range targets {
		b.Run("case=parallel-small-post/via="+tg.name, func(b *testing.B) {
			u := tg.base + dingtalktest.PathUserGet
			if tg.tok {
				u += "?access_token=" + url.QueryEscape(tok)
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			defer client.CloseIdleConnections()
			b.ReportAllocs()
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if code := call(b, client, http.MethodPost, u, small); code != 200 {
						b.Errorf("status %d", code)
						return
					}
				}
			})
		})
	}
}

// reportCPU reports the process's CPU time (user and system, every
// goroutine: client, proxy and fake) per operation as cpu-ns/op: on a
// shared machine whose VM is paused now and then, wall time per operation
// is mostly noise, CPU time much less so. Call the result when done.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func call(b *testing.B, client *http.Client, method, u string, body []byte) int {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		b.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		b.Error(err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
