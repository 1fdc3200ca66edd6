package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/retry"
	"github.com/dingproxy/dingproxy/internal/token"
)

// The credentials the proxy under fuzz is configured with. Both are mixed
// case, so that case variants are near misses; the secret holds '+', '/'
// and '=', so that it must be percent-encoded in a query ("+" there is a
// space) and an unencoded one is a near miss too.
const (
	tcAppKey    = "dingFuzzKey7Q"
	tcAppSecret = "Fz+Secret/9x_Q="
	// tcMaxBody is the proxy's MaxBodyBytes: larger bodies are streamed, so
	// the token-call check sees no body.
	tcMaxBody = 64 << 10
	// tcForwarded marks the answer of the stub upstream transport.
	tcForwarded = "X-Fuzz-Forwarded"
	// tcStrictOnly, set, checks that only strict token calls (see tcExpect)
	// are answered, rather than the current, laxer semantics.
	tcStrictOnly = false
)

// FuzzTokenCall: for any method, request target, body, Content-Type and
// framing (Content-Length or chunked), a client's own token call is answered
// from the shared cache exactly when it is one of DingTalk's two token calls
// with the configured credentials, and then in that endpoint's shape with
// the cached token; anything else is left alone (answerTokenCall writes
// nothing) and, through ServeHTTP, forwarded. No answer carries the secret.
//
// The request is read from its wire form with http.ReadRequest, so the
// handler sees what a server would hand it; inputs a server would refuse are
// skipped. The decision is checked twice: on answerTokenCall itself (with a
// writer that records every call), against tcExpect, and on ServeHTTP, whose
// own checks (CONNECT and absolute form refused; bodies over MaxBodyBytes
// not buffered) come first; what ServeHTTP does not answer from the cache
// must be forwarded once or refused with a 4xx, never with the token. The
// token comes from the fake DingTalk on 127.0.0.1, fetched once before
// fuzzing; nothing reaches it afterwards. The proxy's upstream transport is
// a stub that never dials.
// Seed corpus: testdata/fuzz/FuzzTokenCall.
func FuzzTokenCall(f *testing.F) {
	if !tcFuzzing() {
		// Plain `go test`: after the cleanups below, nothing this target
		// started may still run. (Not while fuzzing: the engine's own
		// goroutines come and go.)
		leakOpt := goleak.IgnoreCurrent()
		f.Cleanup(func() { goleak.VerifyNone(f, leakOpt) })
	}
	// A token that outlives any fuzzing session: the source is never run,
	// so an expired one would be fetched again from inside a token call.
	const ttl = 30 * 24 * time.Hour
	srv := dingtalktest.NewServer(f, dingtalktest.Options{AppKey: tcAppKey, AppSecret: tcAppSecret, TokenTTL: ttl})
	tr := &http.Transport{} // no proxy from the environment: loopback only
	f.Cleanup(tr.CloseIdleConnections)
	src := token.NewSource(token.NewOAuth2Fetcher(tr, srv.URL(), tcAppKey, tcAppSecret), token.Options{})
	f.Cleanup(src.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	tok, err := src.Token(ctx)
	cancel()
	if err != nil {
		f.Fatalf("fetching the token from the fake DingTalk: %v", err)
	}
	if issued := srv.IssuedTokens(); len(issued) != 1 || issued[0] != tok {
		f.Fatalf("source holds %q, the fake issued %q", tok, issued)
	}
	tr.CloseIdleConnections()
	upstream, err := url.Parse(srv.URL())
	if err != nil {
		f.Fatal(err)
	}
	maxTTL := int64(ttl / time.Second)

	okQuery := "appkey=" + tcAppKey + "&appsecret=" + url.QueryEscape(tcAppSecret)
	okBody := []byte(`{"appKey":"` + tcAppKey + `","appSecret":"` + tcAppSecret + `"}`)
	f.Add("GET", "/gettoken", okQuery, []byte(nil), "", false)
	f.Add("GET", "/gettoken", "appkey="+tcAppKey+"&appsecret="+tcAppSecret, []byte(nil), "", false)
	f.Add("GET", "/gettoken", okQuery+"&appsecret=x", []byte(nil), "", false)
	f.Add("POST", "/gettoken", okQuery, []byte(nil), "", false)
	f.Add("POST", "/v1.0/oauth2/accessToken", "", okBody, "application/json", false)
	f.Add("POST", "/v1.0/oauth2/accessToken", "", okBody, "application/json", true)
	f.Add("POST", "/v1.0/oauth2/accessToken", "", okBody[:len(okBody)-1], "application/json", false)
	f.Add("PUT", "/v1.0/oauth2/accessToken", "", okBody, "application/json", false)
	f.Add("POST", "/v1.0/oauth2/accessToken", "", []byte(`{"APPKEY":"`+tcAppKey+`","appsecret":"`+tcAppSecret+`"}`), "", false)

	f.Fuzz(func(t *testing.T, method, path, query string, body []byte, ctype string, chunked bool) {
		wire, ok := tcWire(method, path, query, body, ctype, chunked)
		if !ok {
			return
		}
		r1, err1 := http.ReadRequest(bufio.NewReader(bytes.NewReader(wire)))
		r2, err2 := http.ReadRequest(bufio.NewReader(bytes.NewReader(wire)))
		if err1 != nil || err2 != nil {
			return // a server would answer 400 without calling the handler
		}
		seen, err := io.ReadAll(r1.Body)
		if err != nil {
			return
		}
		if !bytes.Equal(seen, body) {
			t.Fatalf("test bug: the request body read back as %q, sent %q", seen, body)
		}

		want, oauth2, strict := tcExpect(r1.Method, r1.URL, body)
		if tcStrictOnly {
			want = strict
		}
		hits := srv.TotalHits()

		// answerTokenCall on its own.
		px := New(Options{OAPI: upstream, API: upstream, Path: oneAttempt(tcNoTransport{t}), Tokens: src,
			AppKey: tcAppKey, AppSecret: tcAppSecret}, Policy{MaxBodyBytes: tcMaxBody})
		w := &tcWriter{h: http.Header{}}
		got := px.answerTokenCall(w, r1, body, dingtalk.UpstreamFor(r1.URL.Path))
		if got != want {
			t.Fatalf("%s %q body %q: answered %v, want %v", r1.Method, r1.URL.RequestURI(), body, got, want)
		}
		tcNoSecret(t, "answerTokenCall", w.h, w.body.Bytes())
		if got {
			tcCheckAnswer(t, "answerTokenCall", oauth2, w.status, w.h, w.body.Bytes(), src, maxTTL)
			if w.headers != 1 || w.status != http.StatusOK {
				t.Fatalf("answered with %d WriteHeader calls, status %d", w.headers, w.status)
			}
		} else if len(w.h) != 0 || w.headers != 0 || w.writes != 0 {
			t.Fatalf("%s %q body %q: not answered, yet wrote headers %v, %d WriteHeader(%d), %d Write (%q)",
				r1.Method, r1.URL.RequestURI(), body, w.h, w.headers, w.status, w.writes, w.body.Bytes())
		}

		// The same request through ServeHTTP. Its own checks come first: a
		// request line in absolute form and CONNECT are refused, and so may
		// be other requests (odd paths, bodies), but never a token call to
		// one of the two exact paths in origin form; a body over
		// MaxBodyBytes is streamed, so the token-call check sees none. What
		// is not answered is forwarded or refused, and never gets the token.
		stub := &tcStub{}
		px = New(Options{OAPI: upstream, API: upstream, Path: oneAttempt(stub), Tokens: src,
			AppKey: tcAppKey, AppSecret: tcAppSecret}, Policy{MaxBodyBytes: tcMaxBody})
		buffered := body
		if len(body) > tcMaxBody {
			buffered = nil
		}
		wantServe, _, strictServe := tcExpect(r2.Method, r2.URL, buffered)
		if tcStrictOnly {
			wantServe = strictServe
		}
		wantServe = wantServe && r2.Method != http.MethodConnect && !r2.URL.IsAbs() && r2.URL.Host == ""
		rec := httptest.NewRecorder()
		px.ServeHTTP(rec, r2)
		res := rec.Result()
		resBody := rec.Body.Bytes()
		tcNoSecret(t, "ServeHTTP", res.Header, resBody)
		calls := stub.calls.Load()
		if wantServe {
			if calls != 0 {
				t.Fatalf("%s %q body %q: token call forwarded (%d calls)", r2.Method, r2.RequestURI, body, calls)
			}
			tcCheckAnswer(t, "ServeHTTP", oauth2, res.StatusCode, res.Header, resBody, src, maxTTL)
			if a := res.Header.Get(HeaderAttempts); a != "0" {
				t.Fatalf("ServeHTTP: %s %q on a cached answer", HeaderAttempts, a)
			}
		} else {
			forwarded := calls == 1 && res.Header.Get(tcForwarded) == "1"
			refused := calls == 0 && res.StatusCode >= 400 && res.StatusCode < 500
			if !forwarded && !refused {
				t.Fatalf("%s %q body %q, not a token call: HTTP %d %q after %d upstream calls, want it forwarded once or refused",
					r2.Method, r2.RequestURI, body, res.StatusCode, resBody, calls)
			}
			if cached, _ := src.Peek(); bytes.Contains(resBody, []byte(cached)) || res.Header.Get("Cache-Control") == "no-store" {
				t.Fatalf("%s %q body %q, not a token call: answered %q, %v", r2.Method, r2.RequestURI, body, resBody, res.Header)
			}
		}
		// Nothing of this reached DingTalk: the token was fetched before.
		if n := srv.TotalHits() - hits; n != 0 {
			t.Fatalf("the fake DingTalk saw %d requests, want none", n)
		}
	})
}

// tcExpect is the decision answerTokenCall should make for a request with
// this method, URL and buffered body, worked out apart from it: answer is
// whether it is a token call with the configured credentials, oauth2 which
// of the two, and strict whether it is one beyond any doubt (each credential
// given exactly once under its exact name, as a string). Every strict call
// is answered; the others answered follow the current semantics, which are
// questionable:
//   - /gettoken: a parameter given more than once counts by its first value
//     (url.Values.Get); parameters with bad escapes or ';' are dropped, the
//     rest still count.
//   - oauth2: encoding/json's rules for a struct: the body must be one valid
//     JSON value; null is no credentials; an object's names match the fields
//     case-insensitively under Unicode simple folding (so "APPKEY", and
//     "appſecret" with U+017F or "appKey" with the Kelvin sign U+212A, count);
//     a later duplicate wins, a null value changes nothing, and a non-string
//     value for either field rejects the whole body (even if a later
//     duplicate is right).
//   - Paths are compared after percent-decoding (/%67ettoken is /gettoken),
//     the method case-sensitively, the Content-Type not at all.
func tcExpect(method string, u *url.URL, body []byte) (answer, oauth2, strict bool) {
	switch {
	case method == "GET" && u.Path == "/gettoken":
		q, _ := url.ParseQuery(u.RawQuery) // the pairs that parse count
		keys, secrets := q["appkey"], q["appsecret"]
		answer = len(keys) > 0 && len(secrets) > 0 && keys[0] == tcAppKey && secrets[0] == tcAppSecret
		strict = answer && len(keys) == 1 && len(secrets) == 1
		return answer, false, strict
	case method == "POST" && u.Path == "/v1.0/oauth2/accessToken":
		key, secret, valid, exact := tcOAuth2Body(body)
		answer = valid && key == tcAppKey && secret == tcAppSecret
		return answer, true, answer && exact
	}
	return false, false, false
}

// tcOAuth2Body reads appKey and appSecret from an oauth2 token call's body
// as encoding/json fills a struct with those two string fields, walking its
// tokens: valid says the body unmarshals without error, exact that the two
// names appear once each with exactly that spelling, with string values, and
// no other name folds to either.
func tcOAuth2Body(body []byte) (key, secret string, valid, exact bool) {
	if !json.Valid(body) {
		return "", "", false, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	first, err := dec.Token()
	if err != nil {
		panic(fmt.Sprintf("valid JSON %q: %v", body, err))
	}
	switch first {
	case nil:
		return "", "", true, false // null: Unmarshal leaves the struct be
	case json.Delim('{'):
	default:
		return "", "", false, false // array, string, number, bool: a type error
	}
	valid = true
	var exactKey, exactSecret, other int
	for dec.More() {
		nt, err := dec.Token()
		if err != nil {
			panic(fmt.Sprintf("valid JSON %q: %v", body, err))
		}
		name := nt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			panic(fmt.Sprintf("valid JSON %q: %v", body, err))
		}
		var field *string
		switch {
		case strings.EqualFold(name, "appKey"): // bytes.EqualFold is encoding/json's rule
			field = &key
		case strings.EqualFold(name, "appSecret"):
			field = &secret
		default:
			continue
		}
		raw = bytes.TrimSpace(raw)
		switch {
		case string(raw) == "null":
			other++ // leaves the field as it was
			continue
		case raw[0] != '"':
			valid = false // a type error: Unmarshal fails after finishing
			other++
			continue
		}
		if err := json.Unmarshal(raw, field); err != nil {
			panic(fmt.Sprintf("JSON string %q: %v", raw, err))
		}
		switch name {
		case "appKey":
			exactKey++
		case "appSecret":
			exactSecret++
		default:
			other++
		}
	}
	exact = exactKey == 1 && exactSecret == 1 && other == 0
	return key, secret, valid, exact
}

// tcCheckAnswer checks a cached token answer: HTTP 200, JSON of exactly the
// endpoint's shape with the cached token and a lifetime in [1, maxTTL] s,
// Content-Type JSON, a right Content-Length, Cache-Control no-store.
func tcCheckAnswer(t *testing.T, via string, oauth2 bool, status int, h http.Header, body []byte, src *token.Source, maxTTL int64) {
	t.Helper()
	if status != http.StatusOK {
		t.Fatalf("%s: token call answered HTTP %d %q", via, status, body)
	}
	if cc := h.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("%s: Cache-Control %q, want no-store", via, cc)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: Content-Type %q", via, ct)
	}
	if cl := h.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Fatalf("%s: Content-Length %q for %d bytes", via, cl, len(body))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || dec.More() {
		t.Fatalf("%s: answer %q is not one JSON object: %v", via, body, err)
	}
	names := []string{"access_token", "errcode", "errmsg", "expires_in"}
	tokName, ttlName := "access_token", "expires_in"
	if oauth2 {
		names = []string{"accessToken", "expireIn"}
		tokName, ttlName = "accessToken", "expireIn"
	}
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	if !slices.Equal(got, names) {
		t.Fatalf("%s: answer %q has fields %v, want %v", via, body, got, names)
	}
	cached, _ := src.Peek()
	if tok, _ := m[tokName].(string); tok == "" || tok != cached {
		t.Fatalf("%s: answer %q: token %v, cached %q", via, body, m[tokName], cached)
	}
	n, _ := m[ttlName].(json.Number)
	ttl, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || ttl < 1 || ttl > maxTTL {
		t.Fatalf("%s: answer %q: lifetime %v, want an integer in [1, %d]", via, body, m[ttlName], maxTTL)
	}
	if !oauth2 {
		if c, _ := m["errcode"].(json.Number); c != "0" {
			t.Fatalf("%s: answer %q: errcode %v, want 0", via, body, m["errcode"])
		}
		if _, ok := m["errmsg"].(string); !ok {
			t.Fatalf("%s: answer %q: errmsg not a string", via, body)
		}
	}
}

// tcNoSecret fails if the secret, as is or query-escaped, is in any header
// name or value or in the body written.
func tcNoSecret(t *testing.T, via string, h http.Header, body []byte) {
	t.Helper()
	forms := []string{tcAppSecret, url.QueryEscape(tcAppSecret)}
	for _, s := range forms {
		if bytes.Contains(body, []byte(s)) {
			t.Fatalf("%s: the secret is in the body written: %q", via, body)
		}
		for k, vs := range h {
			if strings.Contains(k, s) {
				t.Fatalf("%s: the secret is in header name %q", via, k)
			}
			for _, v := range vs {
				if strings.Contains(v, s) {
					t.Fatalf("%s: the secret is in header %s: %q", via, k, v)
				}
			}
		}
	}
}

// tcWire is the request in HTTP/1.1 wire form; ok is false for inputs that
// would not make one request (line breaks in a field, spaces or an empty
// method), which a server would refuse or read as something else.
func tcWire(method, path, query string, body []byte, ctype string, chunked bool) ([]byte, bool) {
	for _, s := range []string{method, path, query, ctype} {
		if strings.ContainsAny(s, "\r\n") {
			return nil, false
		}
	}
	if method == "" || strings.ContainsAny(method, " \t") || strings.ContainsAny(path+query, " ") {
		return nil, false
	}
	target := path
	if query != "" {
		target += "?" + query
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: dingproxy.test\r\n", method, target)
	if ctype != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", ctype)
	}
	if chunked {
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if len(body) > 0 {
			fmt.Fprintf(&b, "%x\r\n", len(body))
			b.Write(body)
			b.WriteString("\r\n")
		}
		b.WriteString("0\r\n\r\n")
	} else {
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
		b.Write(body)
	}
	return b.Bytes(), true
}

// tcFuzzing reports whether this process is fuzzing (coordinator or worker)
// rather than running the seed corpus as a test.
func tcFuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if fl := flag.Lookup(name); fl != nil && fl.Value.String() != "" && fl.Value.String() != "false" {
			return true
		}
	}
	return false
}

// tcWriter records everything written through it.
type tcWriter struct {
	h       http.Header
	status  int
	headers int // WriteHeader calls
	writes  int // Write calls
	body    bytes.Buffer
}

func (w *tcWriter) Header() http.Header { return w.h }

func (w *tcWriter) WriteHeader(code int) {
	w.headers++
	w.status = code
}

func (w *tcWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.headers == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.body.Write(b)
}

// tcStub is the upstream when a request is forwarded: it counts calls and
// answers with a marked body. It never dials.
type tcStub struct{ calls atomic.Int64 }

func (s *tcStub) RoundTrip(r *http.Request) (*http.Response, error) {
	s.calls.Add(1)
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	const body = `{"errcode":0,"errmsg":"forwarded"}`
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}, tcForwarded: {"1"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       r,
	}, nil
}

// tcNoTransport fails the test if anything is sent: answerTokenCall alone
// never forwards.
type tcNoTransport struct{ t *testing.T }

func (n tcNoTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	n.t.Errorf("answerTokenCall sent %s %s upstream", r.Method, r.URL.Path)
	return nil, fmt.Errorf("no upstream")
}

// TestTokenCallLifetimeFloor: a cached token with less than a second left is
// answered with a lifetime of 1 s, not 0 (which SDKs read as "none given"):
// the floor FuzzTokenCall cannot reach with its long-lived token.
//
// In a synctest bubble: the 900 ms lifetime must not run out between the
// answers (a VM pause), as it would on the wall clock.
func TestTokenCallLifetimeFloor(t *testing.T) {
	synctest.Test(t, testTokenCallLifetimeFloor)
}

func testTokenCallLifetimeFloor(t *testing.T) {
	var fetches atomic.Int64
	src := token.NewSource(token.FetcherFunc(func(context.Context) (string, time.Duration, error) {
		return "tok-" + strconv.FormatInt(fetches.Add(1), 10), 900 * time.Millisecond, nil
	}), token.Options{})
	defer src.Close()
	up, _ := url.Parse("http://127.0.0.1:1")
	px := New(Options{OAPI: up, API: up, Path: oneAttempt(tcNoTransport{t}), Tokens: src,
		AppKey: tcAppKey, AppSecret: tcAppSecret}, Policy{MaxBodyBytes: tcMaxBody})
	for _, tc := range []struct {
		method, target string
		body           []byte
		oauth2         bool
	}{
		{"GET", "/gettoken?appkey=" + tcAppKey + "&appsecret=" + url.QueryEscape(tcAppSecret), nil, false},
		{"POST", "/v1.0/oauth2/accessToken", []byte(`{"appKey":"` + tcAppKey + `","appSecret":"` + tcAppSecret + `"}`), true},
	} {
		r := httptest.NewRequest(tc.method, tc.target, bytes.NewReader(tc.body))
		w := &tcWriter{h: http.Header{}}
		if !px.answerTokenCall(w, r, tc.body, dingtalk.UpstreamFor(r.URL.Path)) {
			t.Fatalf("%s %s not answered", tc.method, tc.target)
		}
		tcCheckAnswer(t, tc.method, tc.oauth2, w.status, w.h, w.body.Bytes(), src, 1)
	}
}

// oneAttempt is the attempt loop over rt, making one attempt.
func oneAttempt(rt http.RoundTripper) call.Handler {
	l := retry.NewLoop(retry.Policy{MaxAttempts: 1}, retry.Options{})
	return l.Layer(l.Send(rt))
}
