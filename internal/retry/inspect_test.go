package retry_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/call"
)

func gzipped(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestInspectGzip: a gzip-encoded answer is decoded to classify it, and
// forwarded as DingTalk sent it: the same bytes, Content-Encoding kept.
func TestInspectGzip(t *testing.T) {
	tests := []struct {
		name         string
		idempotent   bool
		wantAttempts int
	}{
		{"idempotent", true, 3},
		{"non-idempotent", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var sent []string
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					z := gzipped(t, fmt.Sprintf(`{"errcode":-1,"errmsg":"系统繁忙 %d"}`, n))
					sent = append(sent, z)
					resp, _ := jsonAnswer(req, 200, z)
					resp.Header.Set("Content-Encoding", "gzip")
					return resp, nil
				}))
				tc := newCall(tt.idempotent)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				got := readAll(t, resp)
				if tc.Attempts != tt.wantAttempts {
					t.Errorf("Attempts = %d, want %d", tc.Attempts, tt.wantAttempts)
				}
				if tc.Outcome != call.ServerError || tc.Reason != "system_busy" {
					t.Errorf("Outcome, Reason = %s, %q, want server_error, system_busy", tc.Outcome, tc.Reason)
				}
				if got != sent[len(sent)-1] {
					t.Errorf("client got %q, want the last answer's gzip bytes %q", got, sent[len(sent)-1])
				}
				if ce := resp.Header.Get("Content-Encoding"); ce != "gzip" {
					t.Errorf("Content-Encoding = %q, want gzip", ce)
				}
			})
		})
	}
}

// TestInspectLargeAnswer: an answer larger than InspectBytes is classified by
// its prefix and forwarded whole, prefix and rest, byte for byte; a small
// error answer before it is classified and retried.
func TestInspectLargeAnswer(t *testing.T) {
	large := `{"errcode":0,"errmsg":"ok","result":{"list":"` + strings.Repeat("0123456789abcdef", 600) + `"}}`
	// Chunks of 7 bytes, so the 64-byte prefix ends inside one.
	var chunks []chunk
	for s := large; len(s) > 0; {
		n := min(7, len(s))
		chunks = append(chunks, chunk{data: s[:n]})
		s = s[n:]
	}
	tests := []struct {
		name          string
		contentLength int64
	}{
		{"known length", int64(len(large))},
		{"unknown length", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var bodies []*fakeBody
				p := basePolicy()
				p.InspectBytes = 64
				tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					if n == 1 {
						resp, fb := jsonAnswer(req, 200, `{"errcode":-1,"errmsg":"系统繁忙"}`)
						bodies = append(bodies, fb)
						return resp, nil
					}
					resp, fb := answer(req, 200, "application/json", chunks...)
					resp.ContentLength = tt.contentLength
					bodies = append(bodies, fb)
					return resp, nil
				}), p)
				tc := newCall(true)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodGet, tc, nil))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				if tc.Attempts != 2 || tc.Outcome != call.Success {
					t.Errorf("Attempts = %d, Outcome = %s, want 2, success", tc.Attempts, tc.Outcome)
				}
				if resp.ContentLength != tt.contentLength {
					t.Errorf("ContentLength = %d, want %d", resp.ContentLength, tt.contentLength)
				}
				if got := readAll(t, resp); got != large {
					t.Errorf("client got %d bytes, want the %d sent (first difference at %d)", len(got), len(large), firstDiff(got, large))
				}
				if !bodies[0].closed.Load() {
					t.Error("the retried answer's body was not closed")
				}
				if !bodies[1].closed.Load() {
					t.Error("closing the client's body did not close the upstream's")
				}
			})
		})
	}
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestInspectSkipsEmptyAnswers: a HEAD answer and a 204 or 304 have no body
// to read; the loop does not read one. Each fake body here holds an errcode
// -1 that would be retried if it were read.
func TestInspectSkipsEmptyAnswers(t *testing.T) {
	tests := []struct {
		name   string
		method string
		status int
	}{
		{"HEAD", http.MethodHead, 200},
		{"204", http.MethodPost, 204},
		{"304", http.MethodGet, 304},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var fb *fakeBody
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					wroteHeaders(req)
					var resp *http.Response
					resp, fb = answer(req, tt.status, "application/json", chunk{data: `{"errcode":-1,"errmsg":"busy"}`})
					return resp, nil
				}))
				tc := newCall(true)
				resp, err := do(tr, newRequest(t, t.Context(), tt.method, tc, nil))
				if err != nil {
					t.Fatalf("RoundTrip: %v", err)
				}
				defer resp.Body.Close()
				if got := fb.reads.Load(); got != 0 {
					t.Errorf("the loop read the body %d times, want 0", got)
				}
				if tc.Attempts != 1 || resp.StatusCode != tt.status {
					t.Errorf("Attempts = %d, status %d, want 1, %d", tc.Attempts, resp.StatusCode, tt.status)
				}
			})
		})
	}
}

var errReset = errors.New("read tcp 10.0.0.1:1234->203.0.113.1:443: read: connection reset by peer")

// TestInspectBrokenBody: a connection that breaks while the loop reads the
// answer's prefix came after the request was sent: retried only when
// idempotent.
func TestInspectBrokenBody(t *testing.T) {
	tests := []struct {
		name         string
		idempotent   bool
		wantAttempts int
		wantReasons  []string
	}{
		{"idempotent", true, 2, []string{"reset", "success"}},
		{"non-idempotent", false, 1, []string{"reset"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var up upstream
				var broken *fakeBody
				tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
					if n > 1 {
						return ok(req)
					}
					wroteHeaders(req)
					resp, fb := answer(req, 200, "application/json", chunk{data: `{"errcode":0,"err`})
					fb.err = errReset
					broken = fb
					return resp, nil
				}))
				obs := observe(tr)
				tc := newCall(tt.idempotent)
				resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, tc, nil))
				if tt.idempotent {
					if err != nil {
						t.Fatalf("RoundTrip: %v", err)
					}
					readAll(t, resp)
				} else {
					re := asRetryError(t, err)
					if re.Outcome != call.AfterSend || !errors.Is(err, errReset) {
						t.Errorf("err = %v (outcome %s), want after_send wrapping the read error", err, re.Outcome)
					}
				}
				if tc.Attempts != tt.wantAttempts || up.hits() != tt.wantAttempts {
					t.Errorf("Attempts = %d, upstream saw %d, want %d", tc.Attempts, up.hits(), tt.wantAttempts)
				}
				if diff := cmp.Diff(tt.wantReasons, reasons(*obs)); diff != "" {
					t.Errorf("observed reasons (-want +got):\n%s", diff)
				}
				if !broken.closed.Load() {
					t.Error("the broken answer's body was not closed")
				}
			})
		})
	}
}
