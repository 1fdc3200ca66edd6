package dingtalktest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is an Options.Now the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newClient returns a client with its own transport, whose idle connections
// are closed at cleanup.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// result is one answer of the fake.
type result struct {
	status int
	header http.Header
	raw    []byte
	json   map[string]any // numbers as json.Number; nil if the body is not a JSON object
}

// call sends a request; token goes to the query on oapi paths and to the
// header on api paths ("" sends none). It fails the test on a transport error.
func call(t *testing.T, c *http.Client, s *Server, method, path, token string, body []byte) result {
	t.Helper()
	res, err := tryCall(c, s, method, path, token, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

func tryCall(c *http.Client, s *Server, method, path, token string, body []byte) (result, error) {
	u := s.URL() + path
	isAPI := shapeOf(strings.SplitN(path, "?", 2)[0]) == shapeAPI
	if token != "" && !isAPI {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		u += sep + dingtalk.QueryAccessToken + "=" + url.QueryEscape(token)
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return result{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" && isAPI {
		req.Header.Set(dingtalk.HeaderAccessToken, token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	res := result{status: resp.StatusCode, header: resp.Header, raw: raw}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if dec.Decode(&m) == nil {
		res.json = m
	}
	return res, nil
}

// fetchToken gets the app token from /gettoken.
func fetchToken(t *testing.T, c *http.Client, s *Server) string {
	t.Helper()
	res := call(t, c, s, http.MethodGet, tokenQuery(s.opts.AppKey, s.opts.AppSecret), "", nil)
	tok, _ := res.json["access_token"].(string)
	if res.status != http.StatusOK || tok == "" {
		t.Fatalf("gettoken = %d %s, want a token", res.status, res.raw)
	}
	return tok
}

func tokenQuery(key, secret string) string {
	return dingtalk.PathGetToken + "?appkey=" + url.QueryEscape(key) + "&appsecret=" + url.QueryEscape(secret)
}

// num is a JSON number as decoded with UseNumber.
func num(n int) json.Number { return json.Number(strconv.Itoa(n)) }

// checkFields reports every field of want that res's JSON lacks or holds
// another value for.
func checkFields(t *testing.T, res result, want map[string]any) {
	t.Helper()
	if res.json == nil {
		t.Errorf("body %q is not a JSON object", res.raw)
		return
	}
	for k, v := range want {
		if got := res.json[k]; got != v {
			t.Errorf("field %q = %#v, want %#v (body %s)", k, got, v, res.raw)
		}
	}
}

// errKey summarises an answer for sequence comparisons: "OK errcode=88/90018",
// "OK non-json", `OK errcode="-1"`.
func errKey(res result) string {
	var b strings.Builder
	b.WriteString(http.StatusText(res.status))
	if res.json == nil {
		return b.String() + " non-json"
	}
	if v, ok := res.json["errcode"]; ok {
		b.WriteString(" errcode=")
		if n, isNum := v.(json.Number); isNum {
			b.WriteString(string(n))
		} else {
			fmt.Fprintf(&b, "%#v", v) // errcode-string: "-1" with quotes
		}
	}
	if v, ok := res.json["sub_code"]; ok {
		b.WriteString("/" + v.(string))
	}
	if v, ok := res.json["code"]; ok {
		b.WriteString(" code=" + v.(string))
	}
	return b.String()
}
