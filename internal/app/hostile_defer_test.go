package app_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// Hostile clients on routes with defer, while DingTalk refuses connections
// so that every send that may be kept is: the app never panics, a kept send
// never shows its token in the logs or the admin output, the outbox stays
// within outbox.max_bytes and each route's share, and a send that cannot be
// kept is answered as without defer.

// hostileRobotToken is the robot token the hostile sends carry: it must
// never show in a log line, an answer of the admin listener or /metrics.
const hostileRobotToken = "HOSTILE-robot-token-7f3a9c"

// hostileClientToken is a client's own token on a work notice.
const hostileClientToken = "HOSTILE-client-token-51d2e0"

// deferStack is the app with defer on the robot's route and work notices,
// logging at debug into logs, the outbox under maxBytes, and DingTalk
// refusing connections.
func deferStack(t testing.TB, maxBytes config.ByteSize, opts ...stackOpt) (*stack, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	all := append([]stackOpt{
		deferOn(t, dingtalk.PathRobotSend, time.Hour, false),
		deferOn(t, dingtalktest.PathAsyncSend, time.Hour, false),
		func(c *config.Config) {
			c.Outbox.MaxBytes = maxBytes
			c.Retry.MaxBodyBytes = 64 << 10
			c.Retry.PerTryTimeout, c.Retry.Timeout = 2*time.Second, 2*time.Second
		},
	}, opts...)
	// Down from the start: no connection of the proxy's is pooled when
	// the outage begins (one would fail after the request was written,
	// which may have executed, so it is never kept). The app holds no
	// token: work notices are kept for want of one, robot sends (their
	// own token) when the dial is refused.
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	s := newStackOn(t, fake, zap.New(core), nil, all...)
	return s, logs
}

// noHostileSecrets fails t if a hostile token, a robot token, the app
// secret or an issued token shows in a log line, in GET /outbox, in GET
// /outbox/<id> of any of ids, or in /metrics.
func noHostileSecrets(t *testing.T, s *stack, logs *observer.ObservedLogs, ids []string) {
	t.Helper()
	secrets := append(s.fake.IssuedTokens(), hostileRobotToken, hostileClientToken, dingtalktest.DefaultRobotToken, dingtalktest.DefaultAppSecret)
	look := func(where, text string) {
		for _, sec := range secrets {
			if sec != "" && strings.Contains(text, sec) {
				t.Errorf("%s shows a token or the secret (%.12s...)", where, sec)
			}
		}
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		look("the log line "+e.Message, buf.String())
		buf.Free()
		if strings.Contains(e.Message, "panic") || strings.Contains(e.Message, "bookkeeping failed") {
			t.Errorf("logged %q %v", e.Message, e.ContextMap())
		}
	}
	admin := s.app.AdminHandler()
	for _, p := range append([]string{"/outbox", "/metrics"}, prefixAll("/outbox/", ids)...) {
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		look("GET "+p, rec.Body.String())
	}
}

func prefixAll(p string, ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = p + id
	}
	return out
}

// checkBounded fails t if the outbox holds more than outbox.max_bytes
// queued, or a route more than half of it.
func checkBounded(t *testing.T, s *stack) {
	t.Helper()
	st := s.app.Outbox().Stats()
	if st.QueuedBytes > st.MaxBytes {
		t.Errorf("the outbox holds %d bytes queued; outbox.max_bytes is %d", st.QueuedBytes, st.MaxBytes)
	}
	for route, r := range st.Routes {
		if r.QueuedBytes > st.MaxBytes/2 {
			t.Errorf("route %q holds %d bytes queued, over half of outbox.max_bytes (%d)", route, r.QueuedBytes, st.MaxBytes)
		}
	}
}

func queuedOn(s *stack, route string) int { return s.app.Outbox().Stats().Routes[route].Queued }

// Raw hostile requests to deferred routes while DingTalk is down: each
// is answered (never a 502 "internal error"), kept only when it is a
// whole send the outbox can hold, and nothing kept shows a token.
func TestDeferredHostileRequests(t *testing.T) {
	s, logs := deferStack(t, 8<<20)
	robot := dingtalk.PathRobotSend + "?access_token=" + hostileRobotToken
	alert := `{"msgtype":"text","text":{"content":"alert"}}`
	post := func(target, headers, body string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s", target, headers, len(body), body)
	}
	chunked := func(target, body string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", target, len(body), body)
	}
	var flood, values strings.Builder
	for i := range 600 {
		fmt.Fprintf(&flood, "X-Flood-%d: %d\r\n", i, i)
	}
	for i := range 200 {
		fmt.Fprintf(&values, "X-Many: v%d\r\n", i)
	}
	huge := `{"msgtype":"text","text":{"content":"` + strings.Repeat("x", 80<<10) + `"}}`
	now := time.Now()
	cases := []struct {
		name string
		req  string
		keep string // "yes": kept; "no": answered as without defer; "": either
	}{
		{"plain alert", post(robot, "", alert), "yes"},
		{"work notice with a client's own token", post(dingtalktest.PathAsyncSend+"?access_token="+hostileClientToken, "", string(notice(1))), "yes"},
		{"work notice, token in the header", post(dingtalktest.PathAsyncSend, "x-acs-dingtalk-access-token: "+hostileClientToken+"\r\n", string(notice(2))), "yes"},
		{"body over retry.max_body_bytes", post(robot, "", huge), "no"},
		{"chunked body over retry.max_body_bytes", chunked(robot, huge), "no"},
		{"chunked alert", chunked(robot, alert), "yes"},
		{"query not escaped", post(dingtalk.PathRobotSend+"?access_token="+hostileRobotToken+"&%zz=%&;;&=", "", alert), ""},
		{"token twice", post(robot+"&access_token="+hostileRobotToken+"-2", "", alert), ""},
		{"empty token", post(dingtalk.PathRobotSend+"?access_token=", "", alert), ""},
		{"signed, timestamp not a number", post(robot+"&timestamp=abc&sign=x", "", alert), "no"},
		{"signed, timestamp negative", post(robot+"&timestamp=-1&sign=x", "", alert), "no"},
		{"signed, timestamp past int64", post(robot+"&timestamp=99999999999999999999999&sign=x", "", alert), "no"},
		{"signed, timestamp far in the future", post(robot+"&timestamp=4102444800000000&sign=x", "", alert), "no"},
		{"signed, timestamp two hours old", post(fmt.Sprintf("%s&timestamp=%d&sign=x", robot, now.Add(-2*time.Hour).UnixMilli()), "", alert), "no"},
		{"signed, timestamp now", post(fmt.Sprintf("%s&timestamp=%d&sign=%%2Fx%%3D", robot, now.UnixMilli()), "", alert), "yes"},
		{"signed, timestamp twice", post(fmt.Sprintf("%s&timestamp=%d&timestamp=abc&sign=x", robot, now.UnixMilli()), "", alert), ""},
		{"a flood of header names", post(robot, flood.String(), alert), ""},
		{"a flood of one header's values", post(robot, values.String(), alert), ""},
		{"body not JSON", post(robot, "", "\x00\xff{{{"), "yes"},
		{"empty body", post(robot, "", ""), ""},
		{"GET on the robot's route", "GET " + robot + " HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		{"path not UTF-8", post(dingtalk.PathRobotSend+"\xff?access_token="+hostileRobotToken, "", alert), ""},
	}
	hits := s.fake.TotalHits()
	var ids []string
	for _, c := range cases {
		before := s.app.Outbox().Stats()
		answers := rawExchange(t, s.proxy.Listener.Addr().String(), []byte(c.req))
		waitFor(t, "requests in flight to end", func() bool { return s.app.Inflight() == 0 })
		after := s.app.Outbox().Stats()
		kept := queuedAll(after) - queuedAll(before)
		if len(answers) != 1 {
			if c.keep == "yes" || kept != 0 {
				t.Errorf("%s: %d answers, %d kept", c.name, len(answers), kept)
			}
			continue
		}
		a := answers[0]
		id := deferredIDOf(a.body)
		t.Logf("%s: %d, kept %d", c.name, a.status, kept)
		switch {
		case a.status == http.StatusBadGateway && bytes.Contains(a.body, []byte("internal error")):
			t.Errorf("%s: answered %d %s", c.name, a.status, a.body)
		case (id != "") != (kept == 1) || kept > 1:
			t.Errorf("%s: answered %d %.200s, but %d kept", c.name, a.status, a.body, kept)
		case c.keep == "yes" && id == "":
			t.Errorf("%s: not kept: %d %.300s", c.name, a.status, a.body)
		case c.keep == "no" && id != "":
			t.Errorf("%s: kept as %s; want it answered as without defer", c.name, id)
		case c.keep == "no" && a.status == http.StatusOK:
			t.Errorf("%s: answered 200 though DingTalk is down and it was not kept: %s", c.name, a.body)
		}
		if id != "" {
			ids = append(ids, id)
		}
	}
	checkBounded(t, s)
	noHostileSecrets(t, s, logs, ids)
	if n := s.fake.TotalHits() - hits; n != 0 {
		t.Errorf("DingTalk, down, was reached %d times", n)
	}
}

// deferredIDOf is the id of a deferred answer's body, "" for another.
func deferredIDOf(body []byte) string {
	const m = `"dingproxy_deferred":"`
	i := bytes.Index(body, []byte(m))
	if i < 0 {
		return ""
	}
	rest := body[i+len(m):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// queuedAll is the sends queued on every route.
func queuedAll(st outbox.Stats) int {
	n := 0
	for _, r := range st.Routes {
		n += r.Queued
	}
	return n
}

// One client filling its route's share of the outbox (outbox.max_bytes
// 1MiB, the least allowed: each route half of it, each queue a quarter)
// is answered as without defer past it, and does not stop another
// route's sends from being kept; the outbox never holds more than its
// bound. A full outbox is simulated honestly, by its bound: every send
// past it is answered as DingTalk being down makes it (502), not 200.
func TestDeferredShareBounded(t *testing.T) {
	s, logs := deferStack(t, 1<<20)
	big := func(i int) []byte {
		return fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d %s"}}`, i, strings.Repeat("x", 48<<10))
	}
	// fill sends to path until one is not kept, and returns the ids kept.
	fill := func(path string, body func(int) []byte) []string {
		var ids []string
		for i := range 64 {
			resp, b := s.do(http.MethodPost, path, body(i))
			id := deferredID(t, resp, b)
			if id == "" {
				if resp.StatusCode == http.StatusOK {
					t.Fatalf("%s: a send not kept answered 200 though DingTalk is down: %s", path, b)
				}
				t.Logf("%.40s: send %d not kept: %d %.200s", path, i, resp.StatusCode, b)
				return ids
			}
			ids = append(ids, id)
			checkBounded(t, s)
		}
		t.Fatalf("%s: 64 sends of 48 KiB all kept in an outbox of 1 MiB", path)
		return nil
	}
	robot := func(tok string) string { return dingtalk.PathRobotSend + "?access_token=" + tok }
	r1 := fill(robot(hostileRobotToken+"-1"), big)
	r2 := fill(robot(hostileRobotToken+"-2"), big)
	if len(r1) == 0 || len(r2) == 0 {
		t.Fatalf("robots kept %d and %d sends", len(r1), len(r2))
	}
	st := s.app.Outbox().Stats()
	rs := st.Routes[dingtalk.PathRobotSend]
	t.Logf("robot queues kept %d and %d sends; the route holds %d bytes of %d", len(r1), len(r2), rs.QueuedBytes, st.MaxBytes)
	// A third robot: the route's half is spent (or nearly: then a few).
	r3 := fill(robot(hostileRobotToken+"-3"), big)
	if rs := s.app.Outbox().Stats().Routes[dingtalk.PathRobotSend]; rs.QueuedBytes > st.MaxBytes/2 {
		t.Fatalf("the robot's route holds %d bytes, over half of %d", rs.QueuedBytes, st.MaxBytes)
	}
	// Another route's sends are kept all the same.
	notices := fill(dingtalktest.PathAsyncSend, func(i int) []byte {
		return fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"%s"}}}`, i, strings.Repeat("y", 48<<10))
	})
	if len(notices) == 0 {
		t.Fatal("the robots' sends filling their route's share stopped every work notice from being kept")
	}
	t.Logf("a third robot kept %d; work notices kept %d", len(r3), len(notices))
	checkBounded(t, s)
	if n := queuedOn(s, dingtalk.PathRobotSend); n != len(r1)+len(r2)+len(r3) {
		t.Errorf("%d robot sends queued; %d were answered deferred", n, len(r1)+len(r2)+len(r3))
	}
	noHostileSecrets(t, s, logs, append(append(r1, r2...), notices...))
}

// A store that fails (closed under the app, as a disk gone read-only
// leaves it) keeps nothing: every send is answered as without defer, the
// proxy's own error while DingTalk is down, never a deferred 200.
func TestDeferredStoreClosedAnswersAsWithout(t *testing.T) {
	s, logs := deferStack(t, 8<<20)
	robot := dingtalk.PathRobotSend + "?access_token=" + hostileRobotToken
	alert := []byte(`{"msgtype":"text","text":{"content":"alert"}}`)
	resp, body := s.do(http.MethodPost, robot, alert)
	kept := deferredID(t, resp, body)
	if kept == "" {
		t.Fatalf("a send while DingTalk is down not kept: %d %s", resp.StatusCode, body)
	}
	if err := s.app.Outbox().Close(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{robot, dingtalktest.PathAsyncSend} {
		resp, body := s.do(http.MethodPost, path, notice(7))
		if id := deferredID(t, resp, body); id != "" || resp.StatusCode == http.StatusOK {
			t.Errorf("%s with the store closed: %d %s; want the answer without defer", path, resp.StatusCode, body)
		}
	}
	found := false
	for _, e := range logs.FilterMessageSnippet("could not be kept").All() {
		if e.ContextMap()["reason"] == "closed" {
			found = true
		}
	}
	if !found {
		t.Error("no log line says a send could not be kept because the store is closed")
	}
	noHostileSecrets(t, s, logs, nil)
}
