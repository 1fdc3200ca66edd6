package app_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// TestBadAnswers: whatever DingTalk answers, the proxy forwards it or
// answers a clear 502, classifies it as the README's "Retry" says (bodies that are not JSON
// by status alone; an errcode string like a number), retries only what may
// be retried, never repeats a send, and goes on serving.
func TestBadAnswers(t *testing.T) {
	const (
		read = dingtalktest.PathUserGet   // idempotent: POST in the read catalogue
		send = dingtalktest.PathAsyncSend // not idempotent
	)
	readBody := []byte(`{"userid":"u1"}`)
	sendBody := []byte(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"hi"}}}`)
	truncated := `{"errcode":0,"errm`
	for _, tc := range []struct {
		name  string
		fault dingtalktest.Fault
		// What the client gets on the read and on the send: status, attempts
		// and the exact body when it is forwarded ("" to skip).
		readStatus, readAttempts int
		sendStatus, sendAttempts int
		forwarded                string
	}{
		{"non-JSON 200", dingtalktest.Body(200, "text/plain", "oops, not JSON"), 200, 1, 200, 1, "oops, not JSON"},
		{"truncated JSON", dingtalktest.Body(200, "application/json", truncated), 200, 1, 200, 1, truncated},
		{"errcode as a string", dingtalktest.Body(200, "application/json", `{"errcode":"-1","errmsg":"busy"}`), 200, 2, 200, 1, ""},
		{"JSON array", dingtalktest.Body(200, "application/json", `[1,2,3]`), 200, 1, 200, 1, `[1,2,3]`},
		{"empty 200", dingtalktest.Body(200, "application/json", ``), 200, 1, 200, 1, ``},
		{"binary 200", dingtalktest.Body(200, "", "\x00\xff\xfe{\"errcode\":-1"), 200, 1, 200, 1, "\x00\xff\xfe{\"errcode\":-1"},
		{"non-JSON 502", dingtalktest.Body(502, "text/html", "<html>bad gateway</html>"), 200, 2, 502, 1, "<html>bad gateway</html>"},
		// An HTML page on a 200 is DingTalk's IP ban (docs/dingtalk.md, "Limits"): nothing
		// is sent for the ban's length; the client is told so.
		{"HTML 200", dingtalktest.Body(200, "text/html", "<html>oops</html>"), 503, 1, 503, 0, ""},
		{"connection closed mid-body", dingtalktest.CloseMidBody(), 200, 2, 502, 1, ""},
		{"1xx storm", dingtalktest.Informational(200), 200, 1, 200, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, nil)
			s.fake.Script(read, tc.fault)
			resp, body := s.do(http.MethodPost, read, readBody, "Content-Type", "application/json")
			if resp.StatusCode != tc.readStatus || attempts(t, resp) != tc.readAttempts {
				t.Errorf("read: %d after %d attempt(s), want %d after %d; body %q", resp.StatusCode, attempts(t, resp), tc.readStatus, tc.readAttempts, body)
			}
			if tc.readAttempts == 1 && tc.forwarded != "" && string(body) != tc.forwarded {
				t.Errorf("read: body %q, want DingTalk's %q byte for byte", body, tc.forwarded)
			}

			s.fake.Script(send, tc.fault)
			resp, body = s.do(http.MethodPost, send, sendBody, "Content-Type", "application/json")
			if resp.StatusCode != tc.sendStatus || attempts(t, resp) != tc.sendAttempts {
				t.Errorf("send: %d after %d attempt(s), want %d after %d; body %q", resp.StatusCode, attempts(t, resp), tc.sendStatus, tc.sendAttempts, body)
			}
			if tc.forwarded != "" && string(body) != tc.forwarded {
				t.Errorf("send: body %q, want DingTalk's %q byte for byte", body, tc.forwarded)
			}
			if tc.forwarded == "" && resp.StatusCode >= 500 && !json.Valid(body) {
				t.Errorf("send: %d body %q is not DingTalk-shaped JSON", resp.StatusCode, body)
			}
			if d := s.fake.Duplicates(); d != 0 {
				t.Errorf("%d duplicate sends", d)
			}
			// Still serving (unless banned).
			if resp, body := s.do(http.MethodPost, read, readBody); tc.readStatus == 200 && (resp.StatusCode != 200 || errcodeOf(t, body) != 0) {
				t.Errorf("after: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// TestBadGzipForwardedAsIs: an answer whose gzip does not decode is
// classified by its status and passed on with its Content-Encoding, byte
// for byte, for the client to judge; a send is not repeated for it.
func TestBadGzipForwardedAsIs(t *testing.T) {
	s := newStack(t, nil)
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	for _, path := range []string{dingtalktest.PathDeptList, dingtalktest.PathAsyncSend} {
		s.fake.Script(path, dingtalktest.BadGzip())
		resp, err := (&http.Client{Transport: tr}).Post(s.proxy.URL+path, "application/json", strings.NewReader(`{"x":1}`))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_, zerr := gzip.NewReader(bytes.NewReader(got))
		if zerr == nil {
			zr, _ := gzip.NewReader(bytes.NewReader(got))
			_, zerr = io.ReadAll(zr)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || !bytes.HasPrefix(got, []byte{0x1f, 0x8b}) || zerr == nil || attempts(t, resp) != 1 {
			t.Errorf("%s: %d %q (%s, decodes: %v, %d attempts), want DingTalk's broken gzip as is after 1 attempt",
				path, resp.StatusCode, got, resp.Header.Get("Content-Encoding"), zerr, attempts(t, resp))
		}
	}
	if s.fake.Duplicates() != 0 {
		t.Errorf("%d duplicate sends", s.fake.Duplicates())
	}
}

// TestHugeAnswer: an answer far larger than retry.max_inspect_bytes is
// classified by its start and streamed whole.
func TestHugeAnswer(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.Retry.MaxInspectBytes = 4 << 10 })
	const n = 32 << 20
	s.fake.Script(dingtalktest.PathDeptList, dingtalktest.Huge(n))
	resp, err := s.client.Get(s.proxy.URL + dingtalktest.PathDeptList)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var in struct {
		Errcode int    `json:"errcode"`
		Result  string `json:"result"`
	}
	cr := &countingReader{r: resp.Body}
	if err := json.NewDecoder(cr).Decode(&in); err != nil {
		t.Fatalf("decoding the huge answer: %v", err)
	}
	io.Copy(io.Discard, cr)
	if cr.n != n || in.Errcode != 0 || attempts(t, resp) != 1 {
		t.Errorf("got %d bytes, errcode %d, %d attempt(s); want %d, 0, 1", cr.n, in.Errcode, attempts(t, resp), n)
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

// TestEndlessAnswer: a chunked answer that never ends streams to the client
// for as long as it reads; when it stops, the proxy lets go of both sides
// (goleak checks at the end of the package) and goes on serving.
func TestEndlessAnswer(t *testing.T) {
	s := newStack(t, nil)
	s.fake.Script(dingtalktest.PathDeptList, dingtalktest.EndlessChunked())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.proxy.URL+dingtalktest.PathDeptList, nil)
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	prefix := make([]byte, 40)
	io.ReadFull(resp.Body, prefix)
	n, err := io.CopyN(io.Discard, resp.Body, 4<<20)
	if n != 4<<20 || err != nil || !strings.HasPrefix(string(prefix), `{"errcode":0`) {
		t.Fatalf("read %d bytes (%v) of the endless answer starting %q", n, err, prefix)
	}
	cancel() // the client gives up
	resp.Body.Close()
	waitFor(t, "the proxy to let go of the endless answer", func() bool {
		return testutilInflight(s) == 0
	})
	if resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("after: %d %s", resp.StatusCode, body)
	}
}

// testutilInflight is the number of requests in the proxy's handler.
func testutilInflight(s *stack) float64 { return testutil.ToFloat64(s.app.Metrics().Inflight) }
