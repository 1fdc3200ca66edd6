package proxy

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The read cache's key: the same read is the same key whatever stand-in
// token the client sent for the shared one; a client's own token (another
// app's answers, every value of it), another query or body, another
// Accept-Encoding or Content-Type are other keys; and nothing of a token
// is in the key but through a digest.
func TestCacheKey(t *testing.T) {
	rc := NewReadCache("app-1", NewLRU(1<<20), nil, nil)
	key := func(target string, inject dingtalk.Placement, hdrToken string, body string) [32]byte {
		req := httptest.NewRequest(http.MethodPost, target, nil)
		if hdrToken != "" {
			req.Header.Set(dingtalk.HeaderAccessToken, hdrToken)
		}
		return rc.key(req, &call.Facts{Inject: inject, Body: []byte(body)})
	}
	base := key("/topapi/v2/department/listsub?lang=zh", dingtalk.PlaceQuery, "", `{"dept_id":1}`)
	keyWith := func(name, value string) [32]byte {
		req := httptest.NewRequest(http.MethodPost, "/topapi/v2/department/listsub?lang=zh", nil)
		req.Header.Set(name, value)
		return rc.key(req, &call.Facts{Inject: dingtalk.PlaceQuery, Body: []byte(`{"dept_id":1}`)})
	}
	same := []struct {
		name string
		k    [32]byte
	}{
		{"an empty stand-in token", key("/topapi/v2/department/listsub?lang=zh&access_token=", dingtalk.PlaceQuery, "", `{"dept_id":1}`)},
		{"a placeholder token the proxy replaces", key("/topapi/v2/department/listsub?access_token=USE-PROXY&lang=zh", dingtalk.PlaceQuery, "", `{"dept_id":1}`)},
	}
	for _, c := range same {
		if c.k != base {
			t.Errorf("%s: another key, want the same read's", c.name)
		}
	}
	other := []struct {
		name string
		k    [32]byte
	}{
		{"another query", key("/topapi/v2/department/listsub?lang=en", dingtalk.PlaceQuery, "", `{"dept_id":1}`)},
		{"another body", key("/topapi/v2/department/listsub?lang=zh", dingtalk.PlaceQuery, "", `{"dept_id":2}`)},
		{"the client's own token", key("/topapi/v2/department/listsub?lang=zh&access_token=tok-A", dingtalk.PlaceNone, "", `{"dept_id":1}`)},
		{"another own token", key("/topapi/v2/department/listsub?lang=zh&access_token=tok-B", dingtalk.PlaceNone, "", `{"dept_id":1}`)},
		{"an own header token of a third app", key("/topapi/v2/department/listsub?lang=zh", dingtalk.PlaceNone, "tok-C", `{"dept_id":1}`)},
		{"another path", key("/topapi/v2/department/get?lang=zh", dingtalk.PlaceQuery, "", `{"dept_id":1}`)},
		{"two own tokens, the second another", key("/topapi/v2/department/listsub?lang=zh&access_token=tok-A&access_token=tok-Z", dingtalk.PlaceNone, "", `{"dept_id":1}`)},
		{"an own token spelled access%5Ftoken", key("/topapi/v2/department/listsub?lang=zh&access%5Ftoken=tok-D", dingtalk.PlaceNone, "", `{"dept_id":1}`)},
		{"gzip accepted", keyWith("Accept-Encoding", "gzip")},
		{"sent as a form", keyWith("Content-Type", "application/x-www-form-urlencoded")},
	}
	seen := map[[32]byte]string{base: "base"}
	for _, c := range other {
		if prev, dup := seen[c.k]; dup {
			t.Errorf("%s: the same key as %s", c.name, prev)
		}
		seen[c.k] = c.name
	}
}

// TestLRUExpires: an entry past its time to live is never answered and
// goes as Puts find it at the back, so a cache of entries nobody reads
// again empties as they expire; an entry larger than the cache is not kept.
func TestLRUExpires(t *testing.T) {
	c := NewLRU(1 << 20)
	old := time.Now().Add(-time.Hour)
	key := func(i int) [32]byte { return sha256.Sum256([]byte{byte(i), byte(i >> 8)}) }
	for i := range 1000 {
		c.Put(key(i), Entry{Status: 200, Body: []byte("x"), Stored: old}, time.Minute)
	}
	if _, ok := c.Peek(key(1), time.Hour); ok {
		t.Error("an expired entry answered")
	}
	for i := 1000; i < 1300; i++ {
		c.Put(key(i), Entry{Status: 200, Body: []byte("y"), Stored: time.Now()}, time.Minute)
	}
	if n, _ := c.Len(); n > 300+300*4 || n >= 1300 {
		t.Errorf("%d entries after 300 fresh Puts over 1,000 expired, want the expired ones going", n)
	}
	c.Put(key(5000), Entry{Body: make([]byte, 2<<20), Stored: time.Now()}, time.Minute)
	if _, ok := c.Peek(key(5000), time.Minute); ok {
		t.Error("an entry larger than the cache was kept")
	}
}
