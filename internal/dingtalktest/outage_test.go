package dingtalktest

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// pollUntil polls cond until it holds or 10 s pass.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOutage_RefusesConnectionsThenServesAgain(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t) // keeps its connections alive, as a proxy does
	tok := fetchToken(t, c, s)
	notice := []byte(`{"msg":"before"}`)
	checkFields(t, call(t, c, s, http.MethodPost, PathAsyncSend, tok, notice), map[string]any{"errcode": num(0)})
	url := s.URL()
	addr := strings.TrimPrefix(url, "http://")

	// Two requests in flight when the outage starts: one hanging, one
	// delayed. They fail, unexecuted.
	hanging := make(chan struct{})
	s.mu.Lock()
	s.testHookHang = func() { close(hanging) }
	s.mu.Unlock()
	s.Script(PathUserGet, Hang())
	s.Script(PathChatSend, Latency(time.Hour))
	errc := make(chan error, 2)
	go func() {
		_, err := tryCall(c, s, http.MethodPost, PathUserGet, tok, []byte(`{"userid":"u1"}`))
		errc <- err
	}()
	go func() {
		_, err := tryCall(c, s, http.MethodPost, PathChatSend, tok, []byte(`{"msg":"late"}`))
		errc <- err
	}()
	waitFor(t, hanging, "the hanging request")
	pollUntil(t, "the delayed request to arrive", func() bool { return s.Hits(PathChatSend) == 1 })

	if err := s.StopListening(); err != nil {
		t.Fatalf("StopListening: %v", err)
	}
	for range 2 {
		if err := <-errc; err == nil {
			t.Error("a request in flight at the outage succeeded, want an error")
		}
	}
	if got := s.Executions(PathUserGet) + s.Executions(PathChatSend); got != 0 {
		t.Errorf("requests in flight at the outage executed %d times, want 0", got)
	}
	if s.Listening() {
		t.Error("Listening() = true during the outage")
	}
	if err := s.StopListening(); err == nil {
		t.Error("StopListening twice succeeded, want an error")
	}

	// During it: refused, on a fresh connection and over HTTP.
	if conn, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("dial during the outage: %v, want ECONNREFUSED", err)
	}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	if _, err := tryCall(fresh, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"msg":"during"}`)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("send during the outage: %v, want ECONNREFUSED", err)
	}
	if s.URL() != url {
		t.Errorf("URL() during the outage = %q, want %q", s.URL(), url)
	}

	// After it: the same address serves again, with the same token and
	// counters; the keep-alive client reconnects.
	if err := s.ResumeListening(); err != nil {
		t.Fatalf("ResumeListening: %v", err)
	}
	if err := s.ResumeListening(); err == nil {
		t.Error("ResumeListening twice succeeded, want an error")
	}
	if !s.Listening() || s.URL() != url {
		t.Errorf("after the outage: Listening() = %v, URL() = %q; want true, %q", s.Listening(), s.URL(), url)
	}
	if got := fetchToken(t, c, s); got != tok { // a GET, as below
		t.Errorf("token after the outage = %q, want the same %q", got, tok)
	}
	checkFields(t, call(t, c, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"msg":"after"}`)), map[string]any{"errcode": num(0)})
	checkFields(t, call(t, fresh, s, http.MethodPost, PathAsyncSend, tok, []byte(`{"msg":"after 2"}`)), map[string]any{"errcode": num(0)})
	if got := s.Executions(PathAsyncSend); got != 3 {
		t.Errorf("Executions(asyncsend) = %d, want 3 (1 before, 0 during, 2 after)", got)
	}

	// Outages repeat.
	if err := s.StopListening(); err != nil {
		t.Fatalf("second StopListening: %v", err)
	}
	if _, err := tryCall(fresh, s, http.MethodGet, tokenQuery(s.opts.AppKey, s.opts.AppSecret), "", nil); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("token fetch during the second outage: %v, want ECONNREFUSED", err)
	}
	if err := s.ResumeListening(); err != nil {
		t.Fatalf("second ResumeListening: %v", err)
	}
	// The first call on a pooled connection is a GET: the transport retries
	// it on a new connection if the pooled one was closed by the outage,
	// which it does not do for a POST.
	fetchToken(t, c, s)
	checkFields(t, call(t, c, s, http.MethodPost, dingtalk.PathRobotSend, s.opts.RobotToken, []byte(`{}`)), map[string]any{"errcode": num(0)})
}

func TestOutage_CloseDuringIt(t *testing.T) {
	s := New(Options{})
	if err := s.StopListening(); err == nil {
		t.Error("StopListening before Start succeeded, want an error")
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(s.URL(), "http://")
	if err := s.StopListening(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.ResumeListening(); err == nil {
		t.Error("ResumeListening after Close succeeded, want an error")
	}
	if err := s.StopListening(); err == nil {
		t.Error("StopListening after Close succeeded, want an error")
	}
	// Close let the port go.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the closed fake's address: %v", err)
	}
	ln.Close()
}
