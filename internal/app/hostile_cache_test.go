package app_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"go.uber.org/zap"
)

var yes = true

// cached is a route with the read cache on.
func cached(c *config.Config) {
	c.Routes = append(c.Routes,
		config.Route{Path: dingtalktest.PathDeptListSub, Cache: time.Minute},
		config.Route{Path: dingtalktest.PathContactUsers + "me", Cache: time.Minute, Idempotent: &yes})
}

// raw sends one request with exactly the headers given (a name may come
// twice), asking for no encoding unless one is given, and returns the
// answer as it came, undecoded.
func raw(t *testing.T, s *stack, method, path, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.proxy.URL+path, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// Two values of the token header are ambiguous credentials: 400, and
// never the app's cached answer.
func TestDoubledTokenHeaderRefused(t *testing.T) {
	s := newStack(t, nil, cached)
	s.do(http.MethodGet, dingtalktest.PathContactUsers+"me", nil) // the app's answer, cached
	resp, body := raw(t, s, http.MethodGet, dingtalktest.PathContactUsers+"me", "",
		http.Header{"X-Acs-Dingtalk-Access-Token": {"", "BogusTokenXYZ"}})
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(proxy.HeaderCache) != "" {
		t.Errorf("two token headers: %d %q %s, want 400 and no cache", resp.StatusCode, resp.Header.Get(proxy.HeaderCache), body)
	}
}

// Only an answer that is whole JSON is kept: a 200 cut short (its
// errcode 0 readable) goes to its client as it came, and the next call
// asks DingTalk again.
func TestCutShortAnswerNotCached(t *testing.T) {
	s := newStack(t, nil, cached)
	body := []byte(`{"dept_id":1}`)
	s.fake.Script(dingtalktest.PathDeptListSub, dingtalktest.Body(200, "application/json", `{"errcode":0,"errm`))
	resp, got := s.do(http.MethodPost, dingtalktest.PathDeptListSub, body)
	if string(got) != `{"errcode":0,"errm` || resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss {
		t.Fatalf("the cut-short answer: %q %q, want it as it came, a miss", got, resp.Header.Get(proxy.HeaderCache))
	}
	hits := s.fake.Hits(dingtalktest.PathDeptListSub)
	resp, got = s.do(http.MethodPost, dingtalktest.PathDeptListSub, body)
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss || s.fake.Hits(dingtalktest.PathDeptListSub) != hits+1 || errcodeOf(t, got) != 0 {
		t.Errorf("the next call: %q, DingTalk asked %d times; want a miss that reaches DingTalk", resp.Header.Get(proxy.HeaderCache), s.fake.Hits(dingtalktest.PathDeptListSub)-hits)
	}
	resp, _ = s.do(http.MethodPost, dingtalktest.PathDeptListSub, body)
	if resp.Header.Get(proxy.HeaderCache) != proxy.CacheHit {
		t.Errorf("a whole answer then: %q, want kept", resp.Header.Get(proxy.HeaderCache))
	}
}

// The key holds what the answer's bytes depend on: a gzip client and an
// identity client each get their own encoding, and the same body sent as
// a form is another call than as JSON.
func TestCacheKeyHoldsEncodingAndType(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{Gzip: true})
	s := newStackOn(t, fake, zap.NewNop(), nil, cached)
	const body = `{"dept_id":1}`
	ask := func(enc, ctype string) (*http.Response, []byte) {
		h := http.Header{"Content-Type": {ctype}}
		if enc != "" {
			h.Set("Accept-Encoding", enc)
		}
		return raw(t, s, http.MethodPost, dingtalktest.PathDeptListSub, body, h)
	}
	resp, zipped := ask("gzip", "application/json")
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss {
		t.Fatalf("gzip client: %q %q, want a gzip miss", resp.Header.Get("Content-Encoding"), resp.Header.Get(proxy.HeaderCache))
	}
	if resp, _ := ask("gzip", "application/json"); resp.Header.Get(proxy.HeaderCache) != proxy.CacheHit || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("gzip client again: %q %q, want a gzip hit", resp.Header.Get(proxy.HeaderCache), resp.Header.Get("Content-Encoding"))
	}
	resp, plain := ask("", "application/json")
	if resp.Header.Get("Content-Encoding") != "" || !json.Valid(plain) || resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss {
		t.Errorf("identity client after a gzip one: %q %q %q, want its own plain JSON (a miss)", resp.Header.Get("Content-Encoding"), resp.Header.Get(proxy.HeaderCache), plain)
	}
	zr, err := gzip.NewReader(bytes.NewReader(zipped))
	if err != nil {
		t.Fatal(err)
	}
	if unzipped, _ := io.ReadAll(zr); !json.Valid(unzipped) {
		t.Errorf("the gzip answer does not decode to JSON: %q", unzipped)
	}
	if resp, _ := ask("", "application/x-www-form-urlencoded"); resp.Header.Get(proxy.HeaderCache) != proxy.CacheMiss {
		t.Errorf("the same body as a form: %q, want its own entry (a miss)", resp.Header.Get(proxy.HeaderCache))
	}
}
