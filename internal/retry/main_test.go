package retry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// roundTripperFunc is the fake upstream of the unit tests: inside a synctest
// bubble there are no sockets, only this.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// handler answers attempt n (1-based) of a fake upstream.
type handler func(n int, req *http.Request) (*http.Response, error)

// upstream records the attempts that reached the fake RoundTripper.
type upstream struct {
	mu    sync.Mutex
	reqs  []*http.Request
	times []time.Time
}

// rt returns the fake RoundTripper. As net/http's transport does, it fails a
// request whose context is already done without sending anything.
func (u *upstream) rt(h handler) roundTripperFunc {
	return func(req *http.Request) (*http.Response, error) {
		if err := req.Context().Err(); err != nil {
			return nil, err
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, req)
		u.times = append(u.times, time.Now())
		n := len(u.reqs)
		u.mu.Unlock()
		return h(n, req)
	}
}

func (u *upstream) hits() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// gaps returns the time between consecutive attempts.
func (u *upstream) gaps() []time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	var d []time.Duration
	for i := 1; i < len(u.times); i++ {
		d = append(d, u.times[i].Sub(u.times[i-1]))
	}
	return d
}

// wroteHeaders tells the attempt loop that req's headers left, as net/http's
// transport does once it has written them. A fake that does not call it
// emulates a dial that failed before anything was sent.
func wroteHeaders(req *http.Request) {
	if tr := httptrace.ContextClientTrace(req.Context()); tr != nil && tr.WroteHeaders != nil {
		tr.WroteHeaders()
	}
}

// hang waits, as a request DingTalk never answers, until the attempt's
// context is done.
func hang(req *http.Request) (*http.Response, error) {
	<-req.Context().Done()
	return nil, req.Context().Err()
}

// chunk is a piece of a fake answer's body, ready delay after the previous.
type chunk struct {
	delay time.Duration
	data  string
}

var errReadAfterClose = errors.New("http: read on closed response body")

// fakeBody is a response body that behaves as net/http's: it streams its
// chunks, fails with the request context's error once that context is done
// (even mid-wait), and fails after Close.
type fakeBody struct {
	ctx    context.Context
	chunks []chunk
	cur    string
	err    error // after the last chunk; io.EOF when nil
	reads  atomic.Int32
	closed atomic.Bool
}

func (b *fakeBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errReadAfterClose
	}
	b.reads.Add(1)
	for b.cur == "" {
		if err := b.ctx.Err(); err != nil {
			return 0, err
		}
		if len(b.chunks) == 0 {
			if b.err != nil {
				return 0, b.err
			}
			return 0, io.EOF
		}
		c := b.chunks[0]
		if c.delay > 0 {
			t := time.NewTimer(c.delay)
			select {
			case <-t.C:
			case <-b.ctx.Done():
				t.Stop()
				return 0, b.ctx.Err()
			}
		}
		b.cur, b.chunks = c.data, b.chunks[1:]
	}
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

func (b *fakeBody) Close() error {
	b.closed.Store(true)
	return nil
}

// answer is a fake response to req whose body streams chunks. Its length is
// unknown (-1) unless the caller sets it.
func answer(req *http.Request, status int, contentType string, chunks ...chunk) (*http.Response, *fakeBody) {
	body := &fakeBody{ctx: req.Context(), chunks: chunks}
	h := http.Header{}
	if contentType != "" {
		h.Set("Content-Type", contentType)
	}
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          body,
		ContentLength: -1,
		Request:       req,
	}, body
}

// jsonAnswer is an answer whose whole JSON body arrives at once with a
// Content-Length, as DingTalk's small answers do.
func jsonAnswer(req *http.Request, status int, body string) (*http.Response, *fakeBody) {
	resp, fb := answer(req, status, "application/json; charset=utf-8", chunk{data: body})
	resp.ContentLength = int64(len(body))
	return resp, fb
}

func ok(req *http.Request) (*http.Response, error) {
	wroteHeaders(req)
	resp, _ := jsonAnswer(req, 200, `{"errcode":0,"errmsg":"ok"}`)
	return resp, nil
}

// basePolicy is a policy with small, deterministic-enough waits.
func basePolicy() retry.Policy {
	return retry.Policy{
		MaxAttempts:     3,
		BackoffBase:     100 * time.Millisecond,
		BackoffMax:      time.Second,
		ThrottlePenalty: time.Second,
	}
}

// testCall is a request's facts and, once do has run it, the loop's
// report of it.
type testCall struct {
	retry.Facts
	retry.Report
}

type testCallKey struct{}

// newRequest returns a request carrying c's facts and body (the client's own
// body, already buffered into c by the caller when replayable).
func newRequest(t *testing.T, ctx context.Context, method string, c *testCall, body io.Reader) *http.Request {
	t.Helper()
	if c != nil {
		ctx = context.WithValue(retry.WithFacts(ctx, &c.Facts), testCallKey{}, c)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://oapi.dingtalk.com/topapi/v2/user/get", body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func newCall(idempotent bool) *testCall {
	return &testCall{Facts: retry.Facts{API: "/topapi/v2/user/get", Route: "/topapi/v2/user/get", Upstream: dingtalk.OAPI, Idempotent: idempotent, Replayable: true}}
}

// do runs req through tr's loop (as RoundTrip does, with the request's
// facts) and keeps the loop's report in the request's testCall, if any.
func do(tr *retry.Transport, req *http.Request) (*http.Response, error) {
	tc, _ := req.Context().Value(testCallKey{}).(*testCall)
	if tc == nil {
		return tr.RoundTrip(req)
	}
	resp, rep, err := tr.Do(req, &tc.Facts)
	tc.Report = rep
	return resp, err
}

// readAll reads and closes resp's body, failing the test on a read error.
func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("reading the answer's body after %d bytes: %v", len(b), err)
	}
	return string(b)
}

// observed is one Observe call.
type observed struct {
	Attempt int
	Reason  string
	D       time.Duration
}

// observe installs an Observe hook on tr and returns what it saw.
func observe(tr *retry.Transport) *[]observed {
	var mu sync.Mutex
	var got []observed
	tr.Observe = func(_ *retry.Facts, n int, reason string, _ dingtalk.Result, d time.Duration) {
		mu.Lock()
		got = append(got, observed{n, reason, d})
		mu.Unlock()
	}
	return &got
}

func reasons(obs []observed) []string {
	var r []string
	for _, o := range obs {
		r = append(r, o.Reason)
	}
	return r
}

// asRetryError returns err as a *retry.Error, failing the test if it is not.
func asRetryError(t *testing.T, err error) *retry.Error {
	t.Helper()
	var re *retry.Error
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want a *retry.Error", err, err)
	}
	return re
}

func newTestTransport(rt http.RoundTripper) *retry.Transport {
	return retry.NewTransport(rt, basePolicy())
}
