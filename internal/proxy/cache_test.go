package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The read cache's key: the same read is the same key whatever stand-in
// token the client sent for the shared one; a client's own token (another
// app's answers) and another query or body are other keys; and nothing of
// a token is in the key but through a digest.
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
	}
	seen := map[[32]byte]string{base: "base"}
	for _, c := range other {
		if prev, dup := seen[c.k]; dup {
			t.Errorf("%s: the same key as %s", c.name, prev)
		}
		seen[c.k] = c.name
	}
}
