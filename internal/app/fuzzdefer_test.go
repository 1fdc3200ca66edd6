package app_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// FuzzDeferredRawRequest drives raw HTTP/1.1 request bytes through the
// real listener and the whole app with defer on (the robot's route and
// work notices; the outbox under outbox.max_bytes 4MiB), metrics, and logs
// at debug, while DingTalk refuses connections, so that whatever may be
// kept is. It fails on a recovered panic (in serving or in bookkeeping),
// on a 502 "internal error", on a deferred answer that is not a send kept
// in the outbox or not in the success shape, on an outbox past its bound
// (or a route past half of it), and on a token or the secret in an
// answer, a log line, GET /outbox, GET /outbox/<id> or /metrics.
//
// Seeds: testdata/fuzz/FuzzDeferredRawRequest; make fuzz runs it.
func FuzzDeferredRawRequest(f *testing.F) {
	s, logs := deferStack(f, 4<<20)
	secrets := []string{hostileRobotToken, hostileClientToken, dingtalktest.DefaultRobotToken, dingtalktest.DefaultAppSecret}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	admin := s.app.AdminHandler()
	get := func(p string) (int, string) {
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		return rec.Code, rec.Body.String()
	}
	leaks := func(t *testing.T, raw []byte, where, text string) {
		for _, sec := range secrets {
			if strings.Contains(text, sec) {
				t.Fatalf("%q: %s shows a token or the secret", raw, where)
			}
		}
	}
	// A client may write a token's bytes where no token goes (its path,
	// which names the route of a path with none configured, in the logs
	// and as a metric label); from then on /metrics holds them by the
	// client's own doing, and is no longer looked at.
	labelsHeld := false

	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 64<<10 {
			return
		}
		answers := rawExchange(t, s.proxy.Listener.Addr().String(), raw)
		waitFor(t, "requests in flight to end", func() bool { return s.app.Inflight() == 0 })
		placed := tokensPlaced(raw, secrets)
		labelsHeld = labelsHeld || !placed
		for _, e := range logs.TakeAll() {
			if strings.Contains(e.Message, "panic") || strings.Contains(e.Message, "bookkeeping failed") {
				t.Fatalf("%q: logged %q %v", raw, e.Message, e.ContextMap())
			}
			buf, err := enc.EncodeEntry(e.Entry, e.Context)
			if err != nil {
				t.Fatal(err)
			}
			if placed {
				leaks(t, raw, "the log line "+e.Message, buf.String())
			}
			buf.Free()
		}
		for _, a := range answers {
			if a.status == http.StatusBadGateway && bytes.Contains(a.body, []byte("internal error")) {
				t.Fatalf("%q: answered %d %s", raw, a.status, a.body)
			}
			leaks(t, raw, "the answer", string(a.body))
			id := deferredIDOf(a.body)
			if id == "" {
				continue
			}
			var v map[string]any
			if a.status != http.StatusOK || json.Unmarshal(a.body, &v) != nil || v["dingproxy_deferred"] != id ||
				(v["errcode"] != nil && (v["errcode"] != float64(0) || v["errmsg"] != "ok")) {
				t.Fatalf("%q: a deferred answer not in a success shape: %d %s", raw, a.status, a.body)
			}
			code, doc := get("/outbox/" + id)
			if code != http.StatusOK {
				t.Fatalf("%q: answered deferred as %s, and GET /outbox/<id> says %d %s", raw, id, code, doc)
			}
			leaks(t, raw, "GET /outbox/<id>", doc)
		}
		st := s.app.Outbox().Stats()
		if st.QueuedBytes > st.MaxBytes {
			t.Fatalf("%q: the outbox holds %d bytes queued, past %d", raw, st.QueuedBytes, st.MaxBytes)
		}
		for route, r := range st.Routes {
			if r.QueuedBytes > st.MaxBytes/2 {
				t.Fatalf("%q: route %q holds %d bytes queued, past half of %d", raw, route, r.QueuedBytes, st.MaxBytes)
			}
		}
		_, body := get("/outbox")
		leaks(t, raw, "GET /outbox", body)
		if !labelsHeld {
			_, body := get("/metrics")
			leaks(t, raw, "GET /metrics", body)
		}
	})
}

// tokensPlaced says whether each of secrets that raw holds stands where a
// token goes: right after "access_token=" (a query) or a header's
// "access-token:" (a token header, spaces allowed).
func tokensPlaced(raw []byte, secrets []string) bool {
	for _, sec := range secrets {
		rest := raw
		for {
			i := bytes.Index(rest, []byte(sec))
			if i < 0 {
				break
			}
			before := bytes.ToLower(bytes.TrimRight(rest[:i], " \t"))
			if !bytes.HasSuffix(before, []byte("access_token=")) && !bytes.HasSuffix(before, []byte("access-token:")) {
				return false
			}
			rest = rest[i+len(sec):]
		}
	}
	return true
}
