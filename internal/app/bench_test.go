package app_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// BenchmarkSmallJSON sends the same small JSON read (POST /topapi/v2/user/get)
// straight to the fake and through dingproxy, in one run, so the two can be
// compared as a ratio: benchstat -col /via. The difference is dingproxy's own cost
// plus one more loopback hop.
func BenchmarkSmallJSON(b *testing.B) {
	s := newBenchStack(b)
	body := []byte(`{"userid":"manager4220","language":"zh_CN"}`)
	tok, _ := s.app.Tokens().Peek()
	run := func(b *testing.B, url string) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		defer client.CloseIdleConnections()
		b.ReportAllocs()
		for b.Loop() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	}
	b.Run("via=direct", func(b *testing.B) { run(b, s.fake.URL()+dingtalktest.PathUserGet+"?access_token="+tok) })
	b.Run("via=dingproxy", func(b *testing.B) { run(b, s.proxy.URL+dingtalktest.PathUserGet) })
}

// newBenchStack is newStack for benchmarks: no test logger, nothing printed.
func newBenchStack(b *testing.B) *stack {
	b.Helper()
	s := newStackTB(b, zap.NewNop())
	resp, _ := s.do(http.MethodGet, dingtalktest.PathDeptList, nil) // warm the token
	if resp.StatusCode != 200 {
		b.Fatalf("warm-up: %d", resp.StatusCode)
	}
	return s
}
