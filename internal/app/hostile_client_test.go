package app_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// otherHost is a listener that counts connections: a host no request may
// reach.
type otherHost struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns int
}

func newOtherHost(t *testing.T) *otherHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &otherHost{ln: ln}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			o.mu.Lock()
			o.conns++
			o.mu.Unlock()
			c.Close()
		}
	}()
	t.Cleanup(o.close)
	return o
}

func (o *otherHost) addr() string { return o.ln.Addr().String() }

func (o *otherHost) close() { o.ln.Close(); o.wg.Wait() }

func (o *otherHost) contacted() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conns
}

// raw writes req on a new connection to the proxy and reads one answer.
// It returns the status, or 0 when the proxy closed the connection without
// answering, and the answer's body.
func (s *stack) raw(t *testing.T, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("%.40q: write: %v", req, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, ""
		}
		t.Fatalf("%.40q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// forwarded is how many requests reached the fake, not counting the proxy's
// own token fetches.
func forwarded(s *stack) int {
	return s.fake.TotalHits() - s.fake.Hits(dingtalk.PathOAuth2Token) - s.fake.Hits(dingtalk.PathGetToken)
}

// TestHostileRequests: requests no proxy should forward each get a clear
// 4xx (or the connection closed, where net/http answers nothing), and none
// reaches DingTalk or any other host.
func TestHostileRequests(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) {
		c.Server.MaxHeaderBytes = 8 << 10
		c.Server.MaxRequestBodyBytes = 2 << 20
	})
	other := newOtherHost(t)
	addr := other.addr()
	const user = dingtalktest.PathUserGet
	big := strings.Repeat("a", 16<<10)
	// netHTTP marks what net/http answers itself, before dingproxy sees a
	// request: plain text, not DingTalk-shaped.
	cases := []struct {
		name, req string
		status    int
		inBody    string
		netHTTP   bool
	}{
		{"absolute form", "GET http://" + addr + "/gettoken HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 400, "absolute-form", false},
		{"CONNECT", "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n", 400, "CONNECT", false},
		{"dot-dot segment", "GET /topapi/../gettoken HTTP/1.1\r\nHost: x\r\n\r\n", 400, "dot segment", false},
		{"dot segment", "GET /topapi/./v2/user/get HTTP/1.1\r\nHost: x\r\n\r\n", 400, "dot segment", false},
		{"encoded dot-dot", "GET /topapi/%2e%2e/gettoken HTTP/1.1\r\nHost: x\r\n\r\n", 400, "dot segment", false},
		{"trailing dot-dot", "GET /v1.0/.. HTTP/1.1\r\nHost: x\r\n\r\n", 400, "dot segment", false},
		{"encoded slash", "GET /v1.0%2F..%2Ftopapi/v2/user/get HTTP/1.1\r\nHost: x\r\n\r\n", 400, "encoded slash", false},
		{"encoded backslash", "GET /topapi%5c..%5cgettoken HTTP/1.1\r\nHost: x\r\n\r\n", 400, "encoded slash or backslash", false},
		{"encoded NUL", "GET /topapi/v2/user/get%00.json HTTP/1.1\r\nHost: x\r\n\r\n", 400, "control character", false},
		{"OPTIONS *, answered by net/http", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", true},
		{"two Content-Lengths", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}", 400, "", true},
		{"Transfer-Encoding not chunked", "POST " + user + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "", true},
		{"negative Content-Length", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "", true},
		{"Content-Length past int64", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, "", true},
		{"absurd Content-Length", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999\r\n\r\n{}", 413, "max_request_body_bytes", false},
		{"headers too large", "GET " + dingtalktest.PathDeptList + " HTTP/1.1\r\nHost: x\r\nX-Big: " + big + "\r\n\r\n", 431, "", true},
		{"bad chunk size", "POST " + user + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "ended early", false},
	}
	for _, tc := range cases {
		status, body := s.raw(t, tc.req)
		if status != tc.status {
			t.Errorf("%s: status %d (%q), want %d", tc.name, status, body, tc.status)
			continue
		}
		if tc.inBody != "" && !strings.Contains(body, tc.inBody) {
			t.Errorf("%s: body %q does not say %q", tc.name, body, tc.inBody)
		}
		if !tc.netHTTP {
			checkOwnShape(t, tc.name, requestPath(tc.req), []byte(body))
		}
	}
	if n := forwarded(s); n != 0 {
		t.Errorf("%d hostile requests reached DingTalk", n)
	}
	if n := other.contacted(); n != 0 {
		t.Errorf("another host was contacted %d times", n)
	}
	// And the proxy still serves.
	resp, body := s.do(http.MethodPost, user, []byte(`{"userid":"u1"}`))
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("after the hostile requests: %d %s", resp.StatusCode, body)
	}
}

// TestSmuggling: a request with both Content-Length and Transfer-Encoding
// is read by its chunked framing alone (net/http drops the Content-Length
// before any handler sees it, as RFC 9112 section 6.3 allows), forwarded
// with framing of dingproxy's own, and its connection closed after the
// answer (RFC 9112 section 6.1's MUST), so a request hidden behind it is
// never read, let alone forwarded.
func TestSmuggling(t *testing.T) {
	s := newStack(t, nil)
	const user = dingtalktest.PathUserGet
	for _, tc := range []struct{ name, req string }{
		{"CL.TE", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"TE.CL", "POST " + user + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		// Early answers close too (found in review): a 400 for a bad path
		// or the absolute form is given before the body is read.
		{"CL.TE, bad path", "POST /topapi/%2fx HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"CL.TE, absolute form", "POST http://other.example/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		// A Content-Length on an obs-fold line, which a proxy in front may
		// unfold and frame by.
		{"TE + obs-folded CL", "POST " + user + " HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		// HTTP/1.0: net/http frames by Content-Length and ignores the
		// Transfer-Encoding a proxy in front may have framed by.
		{"HTTP/1.0 keep-alive, TE + CL", "POST " + user + " HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"content-length in lower case", "POST " + user + " HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
		// ReverseProxy clears the answer's headers after passing on a 1xx.
		{"CL.TE, with a 103 first", "POST " + user + " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		if strings.HasPrefix(tc.name, "CL.TE, with a 103") {
			s.fake.Script(user, dingtalktest.Informational(1))
		}
		c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, tc.req)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		for err == nil && resp.StatusCode < 200 { // a 1xx before the answer
			resp, err = http.ReadResponse(br, nil)
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !resp.Close && resp.ProtoAtLeast(1, 1) {
			t.Errorf("%s: answer without Connection: close", tc.name)
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Errorf("%s: after the answer: %q %v, want the connection closed", tc.name, rest, err)
		}
		c.Close()
	}
	if n := s.fake.Hits("/smuggled"); n != 0 {
		t.Errorf("a smuggled request reached DingTalk %d times", n)
	}
	reqs := s.fake.Requests(user)
	if len(reqs) != 6 {
		t.Fatalf("DingTalk got %d requests, want the 6 outer ones with a good path", len(reqs))
	}
	for i, r := range reqs {
		if r.Header.Get("Transfer-Encoding") != "" {
			t.Errorf("request %d went upstream with Transfer-Encoding %q", i, r.Header.Get("Transfer-Encoding"))
		}
	}
}

// TestBodyStalls: a client that stops sending its body is answered 408
// after server.body_read_timeout; nothing executes, for buffered and
// streamed bodies alike, and the proxy keeps serving.
func TestBodyStalls(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) {
		c.Server.BodyReadTimeout = 300 * time.Millisecond
		c.Retry.MaxBodyBytes = 1024 // bodies above are streamed
	})
	const send = "/topapi/message/corpconversation/asyncsend_v2"
	for _, tc := range []struct {
		name     string
		declared int
		sent     int
		chunked  bool
	}{
		{"buffered", 500, 100, false},
		{"streamed", 50000, 20000, false},
		{"chunked, buffered", 0, 100, true},
		{"chunked, streamed", 0, 20000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := "POST " + send + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
			body := `{"msg":"` + strings.Repeat("x", tc.sent) + `"}`
			if tc.chunked {
				hdr += "Transfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n"
			} else {
				hdr += "Content-Length: " + strconv.Itoa(tc.declared) + "\r\n\r\n" + body[:tc.sent]
			}
			start := time.Now()
			status, msg := s.raw(t, hdr)
			if status != http.StatusRequestTimeout || !strings.Contains(msg, "body_read_timeout") {
				t.Errorf("status %d %q, want 408 naming body_read_timeout", status, msg)
			}
			if el := time.Since(start); el < 300*time.Millisecond {
				t.Errorf("answered after %v, before body_read_timeout", el)
			}
		})
	}
	if n := s.fake.Executions(send); n != 0 {
		t.Errorf("%d stalled sends executed", n)
	}
	resp, body := s.do(http.MethodPost, send, []byte(`{"msg":"ok"}`))
	if resp.StatusCode != 200 || errcodeOf(t, body) != 0 || s.fake.Executions(send) != 1 {
		t.Errorf("a send after the stalls: %d %s", resp.StatusCode, body)
	}
}

// TestBodyCutOff: a client that hangs up mid-body gets nothing executed,
// and a chunked body longer than server.max_request_body_bytes is cut off
// with 413 even when it is streamed.
func TestBodyCutOff(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) {
		c.Retry.MaxBodyBytes = 1024
		c.Server.MaxRequestBodyBytes = 64 << 10
	})
	const send = "/topapi/message/corpconversation/asyncsend_v2"
	for _, declared := range []int{500, 50000} {
		c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST "+send+" HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(declared)+"\r\n\r\n"+strings.Repeat("x", declared/2))
		c.Close()
	}
	// Over the cap: a chunked body streamed past max_request_body_bytes.
	var req strings.Builder
	req.WriteString("POST " + send + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	chunk := strings.Repeat("y", 8<<10)
	for range 12 { // 96 KiB
		req.WriteString(strconv.FormatInt(int64(len(chunk)), 16) + "\r\n" + chunk + "\r\n")
	}
	req.WriteString("0\r\n\r\n")
	status, msg := s.raw(t, req.String())
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "max_request_body_bytes") {
		t.Errorf("chunked body over the cap: %d %q, want 413", status, msg)
	}
	// The two cut-off uploads are answered (to nobody) once the proxy sees
	// the end; poll the counter of rejected requests.
	m := s.app.Metrics()
	waitFor(t, "the cut-off uploads to be answered", func() bool {
		return testutil.ToFloat64(m.Requests.WithLabelValues(proxy.RouteRejected, "400"))+
			testutil.ToFloat64(m.Requests.WithLabelValues(send, "400"))+
			testutil.ToFloat64(m.Requests.WithLabelValues(send, "499")) >= 2
	})
	if n := s.fake.Executions(send); n != 0 {
		t.Errorf("%d cut-off sends executed", n)
	}
}

// TestEarlyAnswerDrainsBody: when the answer goes out before a large
// streamed body is all sent (here: every route is open, so nothing is sent
// upstream), the proxy takes in the rest of the body. A client that writes
// its whole request before reading, as most synchronous HTTP clients do,
// then gets its answer, where net/http alone would close the connection on
// the unread body and the client's writes would fail.
func TestEarlyAnswerDrainsBody(t *testing.T) {
	s := newStack(t, nil)
	s.app.Breakers().Ban(time.Now().Add(time.Hour))
	const size = 16 << 20 // streamed (over retry.max_body_bytes), and more than socket buffers hold
	req := "POST " + dingtalktest.PathAsyncSend + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(size) + "\r\n\r\n" + strings.Repeat("x", size)
	for i := range 3 {
		status, body := s.raw(t, req) // fails the test if a write fails
		if status != http.StatusServiceUnavailable {
			t.Errorf("upload %d: %d %q, want the ban's 503", i, status, body)
		}
	}
	if n := forwarded(s); n != 0 {
		t.Errorf("%d uploads reached DingTalk during the ban", n)
	}
}

// TestClientBodyFailuresDoNotOpenBreaker: uploads refused for the client's
// own body (too large, here) are the client's failures, not DingTalk's:
// they open no breaker, and the next good call goes through.
func TestClientBodyFailuresDoNotOpenBreaker(t *testing.T) {
	s := newStack(t, nil, breakerSettings(3, time.Minute), func(c *config.Config) {
		c.Retry.MaxBodyBytes = 1024
		c.Server.MaxRequestBodyBytes = 4096
	})
	const send = dingtalktest.PathAsyncSend
	chunk := strings.Repeat("y", 2048)
	req := "POST " + send + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	for range 4 {
		req += strconv.FormatInt(int64(len(chunk)), 16) + "\r\n" + chunk + "\r\n"
	}
	req += "0\r\n\r\n"
	for i := range 5 {
		if status, body := s.raw(t, req); status != http.StatusRequestEntityTooLarge {
			t.Fatalf("upload %d: %d %q, want 413", i, status, body)
		}
	}
	resp, body := s.do(http.MethodPost, send, []byte(`{"agent_id":1,"msg":{"msgtype":"text","text":{"content":"ok"}}}`))
	if resp.StatusCode != 200 || resp.Header.Get(proxy.HeaderFallback) != "" || errcodeOf(t, body) != 0 {
		t.Errorf("a good send after 5 oversized uploads: %d %s (fallback %q)", resp.StatusCode, body, resp.Header.Get(proxy.HeaderFallback))
	}
}

// TestEarlyAnswerToStalledBody: an answer that needs none of the body (an
// open breaker, here) reaches a client that sent a little and stopped,
// without waiting for net/http to read the rest first.
func TestEarlyAnswerToStalledBody(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.Server.BodyReadTimeout = 300 * time.Millisecond })
	s.app.Breakers().Ban(time.Now().Add(time.Hour))
	c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST "+dingtalktest.PathAsyncSend+" HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\nabc")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled upload during a ban: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want the ban's 503", resp.StatusCode)
	}
}

// TestChunkedKeepsAlive: a plain chunked request (the official Node SDK
// sends every POST body so) keeps its connection: the next request on it is
// served. Only a connection that sent a Content-Length line is closed after
// a chunked request (TestSmuggling).
func TestChunkedKeepsAlive(t *testing.T) {
	s := newStack(t, nil)
	c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	exchange := func(req string) *http.Response {
		t.Helper()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%.30q: %v", req, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	chunked := "POST " + dingtalktest.PathUserGet + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{\"userid\":\"u1\"}\r\n0\r\n\r\n"
	for i := range 3 {
		if resp := exchange(chunked); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("chunked request %d: %d, close %v: want 200 on a kept connection", i, resp.StatusCode, resp.Close)
		}
	}
	if resp := exchange("GET " + dingtalktest.PathDeptList + " HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("GET after chunked requests: %d, close %v", resp.StatusCode, resp.Close)
	}
	if n := s.fake.Hits(dingtalktest.PathUserGet); n != 3 {
		t.Errorf("DingTalk got %d chunked requests, want 3", n)
	}
	// Once the connection has sent a Content-Length, a chunked request on it
	// can no longer be told from a smuggling attempt: it closes.
	exchange("POST " + dingtalktest.PathUserGet + " HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"userid\":\"u1\"}")
	if resp := exchange(chunked); !resp.Close {
		t.Errorf("a chunked request after a Content-Length on the same connection kept it open")
	}
}

// TestOverloadedSmugglingCloses: a CL.TE request refused for max_inflight
// (before the proxy proper sees it) closes its connection too.
func TestOverloadedSmugglingCloses(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.MaxInflight = 1 })
	s.fake.Script(dingtalktest.PathDeptList, dingtalktest.Hang())
	held := make(chan struct{})
	go func() {
		defer close(held)
		if resp, err := s.client.Get(s.proxy.URL + dingtalktest.PathDeptList); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the one slot to be taken", func() bool { return s.app.Inflight() == 1 })
	c, err := net.Dial("tcp", s.proxy.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST "+dingtalktest.PathUserGet+" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 503 || !resp.Close {
		t.Errorf("overloaded CL.TE request: %d, close %v: want 503 and the connection closed", resp.StatusCode, resp.Close)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("after the answer: %.60q, want the connection closed", rest)
	}
	s.fake.Close() // lets the held call go
	<-held
}
