package dingtalktest

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// open POSTs body to the oapi path with the token in the query and returns
// the response unread; the caller closes its body.
func open(t *testing.T, ctx context.Context, c *http.Client, s *Server, path, tok, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		s.URL()+path+"?access_token="+tok, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return resp
}

// waitFor fails the test if ch is not closed within 10 s.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
	}
}

func TestBody(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	byName := func(name string) Fault {
		t.Helper()
		chaos, err := ParseChaos(name + "=1")
		if err != nil {
			t.Fatal(err)
		}
		return chaos.Faults[0].Fault
	}

	tests := []struct {
		name     string
		fault    Fault
		status   int
		ct       []string // nil: no Content-Type header
		body     string
		executed int
	}{
		{"non-json", byName("non-json"), 200, []string{"text/html"}, nonJSONBody, 1},
		{"truncated-json", byName("truncated-json"), 200, []string{contentTypeJSON}, `{"errcode":0,"errm`, 1},
		{"errcode-string", byName("errcode-string"), 200, []string{contentTypeJSON}, `{"errcode":"-1","errmsg":"系统繁忙"}`, 1},
		{"custom 200", Body(200, "text/plain", "ok?"), 200, []string{"text/plain"}, "ok?", 1},
		{"no content type", Body(200, "", `{"errcode":0}`), 200, nil, `{"errcode":0}`, 1},
		{"empty 204", Body(204, "", ""), 204, nil, "", 1},
		{"502 not executed", Body(502, "text/plain", "upstream died"), 502, []string{"text/plain"}, "upstream died", 0},
		{"404 json not executed", Body(404, "application/json", `{}`), 404, []string{"application/json"}, `{}`, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Executions(PathAsyncSend)
			s.Script(PathAsyncSend, tt.fault)
			res := call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"n":`+strconv.Itoa(i)+`}`))
			if res.status != tt.status {
				t.Errorf("%v: status = %d, want %d", tt.fault, res.status, tt.status)
			}
			if got := res.header["Content-Type"]; !equalStrings(got, tt.ct) {
				t.Errorf("%v: Content-Type = %q, want %q", tt.fault, got, tt.ct)
			}
			if string(res.raw) != tt.body {
				t.Errorf("%v: body = %q, want %q", tt.fault, res.raw, tt.body)
			}
			if tt.status != 204 {
				if got, want := res.header.Get("Content-Length"), strconv.Itoa(len(tt.body)); got != want {
					t.Errorf("%v: Content-Length = %q, want %q", tt.fault, got, want)
				}
			}
			if got := s.Executions(PathAsyncSend) - before; got != tt.executed {
				t.Errorf("%v: executions = %d, want %d", tt.fault, got, tt.executed)
			}
		})
	}

	// A client that retries a send on a bad 200 sends it twice.
	body := []byte(`{"msg":"once"}`)
	s.Script(PathAsyncSend, byName("non-json"))
	call(t, c, s, http.MethodPost, PathAsyncSend, tok, body)
	checkFields(t, call(t, c, s, http.MethodPost, PathAsyncSend, tok, body), map[string]any{"errcode": num(0)})
	if got := s.Duplicates(); got != 1 {
		t.Errorf("Duplicates() = %d after retrying a send answered non-json, want 1", got)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestHuge(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	const n = 1<<20 + 5 // not a multiple of the write buffer
	s.Script(PathAsyncSend, Huge(n))
	resp := open(t, t.Context(), c, s, PathAsyncSend, tok, `{"n":1}`)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != n {
		t.Fatalf("status %d, ContentLength %d; want 200, %d", resp.StatusCode, resp.ContentLength, n)
	}
	if ct := resp.Header.Get("Content-Type"); ct != contentTypeJSON {
		t.Errorf("Content-Type = %q, want %q", ct, contentTypeJSON)
	}
	cr := &countingReader{r: resp.Body}
	var v struct {
		Errcode *int   `json:"errcode"`
		Errmsg  string `json:"errmsg"`
		Result  string `json:"result"`
	}
	dec := json.NewDecoder(cr)
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if _, err := io.Copy(io.Discard, io.MultiReader(dec.Buffered(), cr)); err != nil {
		t.Fatalf("read rest: %v", err)
	}
	if cr.n != n {
		t.Errorf("read %d bytes, want %d", cr.n, n)
	}
	if v.Errcode == nil || *v.Errcode != 0 || v.Errmsg != "ok" {
		t.Errorf("errcode %v errmsg %q, want 0 ok", v.Errcode, v.Errmsg)
	}
	if len(v.Result) != n-39 || strings.Trim(v.Result, "x") != "" {
		t.Errorf("result: %d bytes (x's only: %t), want %d x's", len(v.Result), strings.Trim(v.Result, "x") == "", n-39)
	}
	if got := s.Executions(PathAsyncSend); got != 1 {
		t.Errorf("Executions = %d, want 1", got)
	}

	// The smallest, through chaos.
	chaos, err := ParseChaos("huge:39=1")
	if err != nil {
		t.Fatal(err)
	}
	s.SetChaos(chaos)
	res := call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"n":2}`))
	if want := `{"errcode":0,"errmsg":"ok","result":""}`; string(res.raw) != want {
		t.Errorf("huge:39 body = %q, want %q", res.raw, want)
	}
	if got := s.Executions(PathAsyncSend); got != 2 {
		t.Errorf("Executions = %d, want 2", got)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestHuge_PanicsBelowMinimum(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Huge(38) did not panic")
		}
	}()
	Huge(38)
}

func TestBadGzip(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	// Go's transport asks for gzip and decodes it transparently.
	s.Script(PathAsyncSend, BadGzip())
	resp := open(t, t.Context(), c, s, PathAsyncSend, tok, `{"n":1}`)
	_, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !resp.Uncompressed {
		t.Errorf("status %d, Uncompressed %t; want 200, true", resp.StatusCode, resp.Uncompressed)
	}
	var corrupt flate.CorruptInputError
	if !errors.As(err, &corrupt) {
		t.Errorf("reading the body: %v, want a flate.CorruptInputError", err)
	}

	// A client that does not ask for gzip gets it anyway, raw.
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	raw := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	s.Script(PathAsyncSend, BadGzip())
	res := call(t, raw, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"n":2}`))
	if res.status != http.StatusOK || res.header.Get("Content-Encoding") != "gzip" ||
		res.header.Get("Content-Type") != contentTypeJSON {
		t.Errorf("status %d, headers %v; want 200 with Content-Encoding gzip and JSON", res.status, res.header)
	}
	if !bytes.HasPrefix(res.raw, []byte{0x1f, 0x8b}) {
		t.Errorf("body %q does not start with the gzip magic", res.raw)
	}
	zr, err := gzip.NewReader(bytes.NewReader(res.raw))
	if err != nil {
		t.Fatalf("gzip header: %v, want a valid one", err)
	}
	if _, err := io.ReadAll(zr); err == nil {
		t.Error("gzip body decoded, want an error")
	}
	if got := s.Executions(PathAsyncSend); got != 2 {
		t.Errorf("Executions = %d, want 2", got)
	}
}

func TestCloseMidBody(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	s.Script(PathAsyncSend, CloseMidBody().WithRetryAfter(time.Second))
	resp := open(t, t.Context(), c, s, PathAsyncSend, tok, `{"n":1}`)
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 2000 {
		t.Errorf("status %d, ContentLength %d; want 200, 2000", resp.StatusCode, resp.ContentLength)
	}
	if ct, ra := resp.Header.Get("Content-Type"), resp.Header.Get("Retry-After"); ct != contentTypeJSON || ra != "1" {
		t.Errorf("Content-Type %q, Retry-After %q; want %q, 1", ct, ra, contentTypeJSON)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading the body: %v, want io.ErrUnexpectedEOF", err)
	}
	if len(got) != 100 || !strings.HasPrefix(string(got), `{"errcode":0,"errmsg":"ok","result":"x`) {
		t.Errorf("read %d bytes %q, want the 100-byte start of a JSON success", len(got), got)
	}
	if n := s.Executions(PathAsyncSend); n != 1 {
		t.Errorf("Executions = %d, want 1", n)
	}
	// The server stays usable.
	checkFields(t, call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"n":2}`)),
		map[string]any{"errcode": num(0)})
}

// startEndless scripts EndlessChunked on PathEcho, starts a request and
// checks the first MiB; done is closed when the handler stops writing.
func startEndless(t *testing.T, ctx context.Context, s *Server, c *http.Client) (resp *http.Response, done chan struct{}) {
	t.Helper()
	tok := fetchToken(t, c, s)
	done = make(chan struct{})
	s.mu.Lock()
	s.testHookEndlessDone = func() { close(done) }
	s.mu.Unlock()
	s.Script(PathEcho, EndlessChunked())

	resp = open(t, ctx, c, s, PathEcho, tok, "x")
	if resp.StatusCode != http.StatusOK || resp.ContentLength != -1 ||
		!equalStrings(resp.TransferEncoding, []string{"chunked"}) {
		t.Errorf("status %d, ContentLength %d, TransferEncoding %q; want 200, -1, chunked",
			resp.StatusCode, resp.ContentLength, resp.TransferEncoding)
	}
	if ct := resp.Header.Get("Content-Type"); ct != contentTypeJSON {
		t.Errorf("Content-Type = %q, want %q", ct, contentTypeJSON)
	}
	head := make([]byte, len(endlessPrefix)+3*4)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("reading the start: %v", err)
	}
	if want := endlessPrefix + `"x","x","x",`; string(head) != want {
		t.Errorf("body starts %q, want %q", head, want)
	}
	if n, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatalf("read %d more bytes, then %v; want 1 MiB more", n, err)
	}
	if got := s.Executions(PathEcho); got != 1 {
		t.Errorf("Executions = %d, want 1", got)
	}
	return resp, done
}

func TestEndlessChunked_ClientLeaves(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp, done := startEndless(t, ctx, s, c)
	cancel()
	resp.Body.Close()
	waitFor(t, done, "handler stops after the client leaves")
	// The server stays usable.
	checkFields(t, call(t, c, s, http.MethodPost, PathEcho, fetchToken(t, c, s), []byte("y")),
		map[string]any{"length": num(1)})
}

func TestEndlessChunked_ServerClose(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	resp, done := startEndless(t, t.Context(), s, c)
	defer resp.Body.Close()

	// The client stops reading, so the handler blocks on TCP backpressure.
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	waitFor(t, closed, "Close returns")
	waitFor(t, done, "handler stops")
	// What was sent can still be read, but the body never ends cleanly.
	if n, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Errorf("body ended cleanly after %d more bytes, want an error", n)
	}
}

func TestInformational(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)

	var (
		mu    sync.Mutex
		codes []int
		links []string
	)
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		codes = append(codes, code)
		links = append(links, h.Get("Link"))
		return nil
	}}
	s.Script(PathAsyncSend, Informational(3))
	resp := open(t, httptrace.WithClientTrace(t.Context(), trace), c, s, PathAsyncSend, tok, `{"n":1}`)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(codes) != 3 {
		t.Errorf("got %d 1xx responses, want 3", len(codes))
	}
	for i := range codes {
		if codes[i] != http.StatusEarlyHints || links[i] != earlyHintsLink {
			t.Errorf("1xx %d: %d Link %q, want 103 Link %q", i, codes[i], links[i], earlyHintsLink)
		}
	}
	mu.Unlock()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Link") != "" {
		t.Errorf("final: status %d, Link %q; want 200 and no Link", resp.StatusCode, resp.Header.Get("Link"))
	}
	if !strings.Contains(string(raw), `"errcode":0`) || !strings.Contains(string(raw), `"task_id"`) {
		t.Errorf("final body %s, want an asyncsend success", raw)
	}

	// Without a trace, Go's client skips them.
	s.Script(PathAsyncSend, Informational(2))
	checkFields(t, call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"n":2}`)),
		map[string]any{"errcode": num(0)})
	if got := s.Executions(PathAsyncSend); got != 2 {
		t.Errorf("Executions = %d, want 2", got)
	}
}

// TestCloseMidBody_HTTP2 covers the fallback where the connection cannot be
// hijacked: the stream is reset after the first part.
func TestCloseMidBody_HTTP2(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	c := ts.Client()
	resp, err := c.Get(ts.URL + tokenQuery(DefaultAppKey, DefaultAppSecret))
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 {
		t.Fatalf("gettoken over HTTP/%d: %v", resp.ProtoMajor, err)
	}

	s.Script(PathAsyncSend, CloseMidBody())
	resp, err = c.Post(ts.URL+PathAsyncSend+"?access_token="+tok.AccessToken, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 2000 {
		t.Errorf("status %d, ContentLength %d; want 200, 2000", resp.StatusCode, resp.ContentLength)
	}
	if err == nil || string(got) != closeMidBodyPart {
		t.Errorf("read %q, %v; want the 100-byte part and an error", got, err)
	}
	if n := s.Executions(PathAsyncSend); n != 1 {
		t.Errorf("Executions = %d, want 1", n)
	}
}
