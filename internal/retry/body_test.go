package retry_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"
)

var errClosed = errors.New("read on a closed request body")

// closeOnCloseReader is a request body whose Close really ends it, as a
// net/http server's request body does: a later Read fails. (io.NopCloser
// would hide the body-reuse trap.)
type closeOnCloseReader struct {
	r      *bytes.Reader
	closed atomic.Bool
}

func (b *closeOnCloseReader) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errClosed
	}
	return b.r.Read(p)
}

func (b *closeOnCloseReader) Close() error {
	b.closed.Store(true)
	return nil
}

// TestEveryAttemptGetsAFreshBody is the body-reuse trap (STYLE B.7 #1, Caddy
// #6259): the transport reads and closes a request body, so a retry that
// hands the same reader on sends nothing, or only the rest.
func TestEveryAttemptGetsAFreshBody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		payload := []byte(`{"userid":"u1","msg":"hello"}`)
		var up upstream
		var got []string
		var checks []string
		tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
			wroteHeaders(req)
			if req.ContentLength != int64(len(payload)) {
				checks = append(checks, "ContentLength wrong")
			}
			if req.GetBody == nil {
				checks = append(checks, "GetBody nil")
			} else {
				for range 2 {
					rc, err := req.GetBody()
					if err != nil {
						checks = append(checks, "GetBody: "+err.Error())
						continue
					}
					b, err := io.ReadAll(rc)
					rc.Close()
					if err != nil || !bytes.Equal(b, payload) {
						checks = append(checks, "GetBody returned "+string(b))
					}
				}
			}
			var b []byte
			var err error
			if n == 1 {
				// Read part of the body, then close it: the transport
				// gave up on the connection mid-send.
				b = make([]byte, 5)
				_, err = io.ReadFull(req.Body, b)
			} else {
				b, err = io.ReadAll(req.Body)
			}
			if err != nil {
				checks = append(checks, "attempt body: "+err.Error())
			}
			req.Body.Close()
			got = append(got, string(b))
			if n < 3 {
				resp, _ := jsonAnswer(req, 503, `{"errcode":-1,"errmsg":"busy"}`)
				return resp, nil
			}
			return ok(req)
		}))
		tc := newCall(true)
		tc.Body = payload
		client := &closeOnCloseReader{r: bytes.NewReader(payload)}
		req := newRequest(t, t.Context(), http.MethodPost, tc, client)
		req.ContentLength = -1 // the client's upload was chunked; the buffer's length is known
		resp, err := do(tr, req)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		readAll(t, resp)
		if tc.Attempts != 3 {
			t.Fatalf("Attempts = %d, want 3", tc.Attempts)
		}
		want := []string{string(payload[:5]), string(payload), string(payload)}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("bodies the attempts received (-want +got):\n%s", diff)
		}
		if len(checks) > 0 {
			t.Errorf("attempt requests: %q", checks)
		}
	})
}

// TestStreamedBodyIsSentOnce: a body too large to buffer (Replayable false)
// is sent once, and its attempt is not repeated even when that would
// otherwise be allowed.
func TestStreamedBodyIsSentOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		payload := bytes.Repeat([]byte("z"), 4096)
		var up upstream
		var got []byte
		tr := newTestTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
			wroteHeaders(req)
			got, _ = io.ReadAll(req.Body)
			req.Body.Close()
			resp, _ := jsonAnswer(req, 503, `{"errcode":-1,"errmsg":"busy"}`)
			return resp, nil
		}))
		tc := newCall(true)
		tc.Replayable = false
		req := newRequest(t, t.Context(), http.MethodPost, tc, &closeOnCloseReader{r: bytes.NewReader(payload)})
		resp, err := do(tr, req)
		if err != nil {
			t.Fatalf("RoundTrip: %v", err)
		}
		readAll(t, resp)
		if tc.Attempts != 1 || up.hits() != 1 {
			t.Errorf("Attempts = %d, upstream saw %d, want 1", tc.Attempts, up.hits())
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("upstream got %d bytes, want the client's %d", len(got), len(payload))
		}
	})
}
