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

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
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
		MaxAttempts: 3,
		BackoffBase: 100 * time.Millisecond,
		BackoffMax:  time.Second,
	}
}

// penalty is DingTalk's block after a throttle answer, which a retry waits
// out in pacing (dingtalk.Penalty).
const penalty = dingtalk.ThrottlePenalty * time.Second

// fastPacer paces at rates no test reaches: only penalties hold calls.
func fastPacer() *pacing.Pacer { return pacing.New(pacing.Settings{PerAPIQPS: 1e6, GlobalQPS: 1e6}) }

// testCall is a request's facts and, once do has run it, the loop's
// report of it.
type testCall struct {
	call.Facts
	call.Report
}

type testCallKey struct{}

// newRequest returns a request carrying c's facts and body (the client's own
// body, already buffered into c by the caller when replayable).
func newRequest(t *testing.T, ctx context.Context, method string, c *testCall, body io.Reader) *http.Request {
	t.Helper()
	if c != nil {
		ctx = context.WithValue(call.WithFacts(ctx, &c.Facts), testCallKey{}, c)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://oapi.dingtalk.com/topapi/v2/user/get", body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func newCall(idempotent bool) *testCall {
	return &testCall{Facts: call.Facts{API: "/topapi/v2/user/get", Route: "/topapi/v2/user/get", Upstream: dingtalk.OAPI, Idempotent: idempotent, Replayable: true}}
}

// do runs req through tr's loop with the request's facts (or, without a
// testCall, the facts of a bodiless read) and keeps the loop's report in
// the request's testCall, if any.
func do(tr *transport, req *http.Request) (*http.Response, error) {
	tc, _ := req.Context().Value(testCallKey{}).(*testCall)
	if tc == nil {
		f := &call.Facts{API: req.URL.Path, Route: req.URL.Path,
			Idempotent: req.Method == http.MethodGet || req.Method == http.MethodHead,
			Replayable: req.Body == nil || req.Body == http.NoBody}
		resp, _, err := tr.path().Do(req, f)
		return resp, err
	}
	resp, rep, err := tr.path().Do(req, &tc.Facts)
	tc.Report = rep
	return resp, err
}

// transport is the attempt loop as the proxy runs it, over a fake upstream:
// the loop layer over a stand-in for the token layer (Prepare), over the
// send. Its fields are set before its first call.
type transport struct {
	rt     http.RoundTripper
	policy retry.Policy
	// Budget caps retries (nil: none).
	Budget *retry.Budget
	// Gate, if set, is the loop's gate and is asked before each attempt.
	Gate func(*call.Facts) error
	// Prepare, if set, readies each attempt (a clone of the request): it
	// puts a token in and returns it, or fails, and nothing is sent.
	Prepare func(req *http.Request, f *call.Facts) (token string, err error)
	// OnTokenInvalid is told of a prepared token DingTalk rejected.
	OnTokenInvalid func(tok string)
	// Observe, if set, is told of every attempt sent.
	Observe func(f *call.Facts, n int, reason string, r dingtalk.Result, d time.Duration)
	// Pacer, if set, paces the attempts (below the loop, as in the proxy):
	// a throttled API waits out DingTalk's penalty there.
	Pacer *pacing.Pacer

	once sync.Once
	loop *retry.Loop
	h    call.Handler
}

func newTestTransport(rt http.RoundTripper) *transport { return newTransport(rt, basePolicy()) }

func newTransport(rt http.RoundTripper, p retry.Policy) *transport {
	return &transport{rt: rt, policy: p}
}

func (tr *transport) SetPolicy(p retry.Policy) { tr.policy = p }
func (tr *transport) Policy() retry.Policy     { return tr.policy }

// path builds the chain on first use.
func (tr *transport) path() call.Handler {
	tr.once.Do(func() {
		o := retry.Options{Budget: tr.Budget, Observer: testObserver{tr}}
		var layers []call.Layer
		if tr.Pacer != nil {
			pace := pacing.NewLayer(tr.Pacer, nil, nil)
			o.Turns = pace
			layers = append(layers, pace.Wrap)
		}
		if tr.Gate != nil {
			g := gateFunc(tr.Gate)
			o.Gate = g
			layers = append(layers, call.Recheck(g))
		}
		tr.loop = retry.NewLoop(tr.policy, o)
		if tr.Prepare != nil {
			layers = append(layers, tr.prepare)
		}
		tr.h = call.Chain(append([]call.Layer{tr.loop.Layer}, layers...)...)(tr.loop.Send(tr.rt))
	})
	return tr.h
}

// prepare is the stand-in for the token layer.
func (tr *transport) prepare(next call.Handler) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		areq := req.Clone(req.Context())
		tok, err := tr.Prepare(areq, f)
		if err != nil {
			return call.Fail(call.Refused(call.ReasonTokenUnavailable), err)
		}
		resp, rep, err := next.Do(areq, f)
		if rep.Outcome == call.TokenInvalid && tok != "" && tr.OnTokenInvalid != nil {
			tr.OnTokenInvalid(tok)
		}
		return resp, rep, err
	})
}

type gateFunc func(*call.Facts) error

func (g gateFunc) Closed(f *call.Facts) error { return g(f) }

// testObserver hands attempts to the transport's Observe.
type testObserver struct{ tr *transport }

func (o testObserver) Attempted(f *call.Facts, n int, rep call.Report) {
	if o.tr.Observe != nil {
		o.tr.Observe(f, n, rep.Reason, rep.Result, rep.Took)
	}
}
func (testObserver) Retrying(*call.Facts, string, time.Duration) {}
func (testObserver) BudgetExhausted(*call.Facts, call.Report)    {}

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

// observed is one Observe tc.
type observed struct {
	Attempt int
	Reason  string
	D       time.Duration
}

// observe installs an Observe hook on tr and returns what it saw.
func observe(tr *transport) *[]observed {
	var mu sync.Mutex
	var got []observed
	tr.Observe = func(_ *call.Facts, n int, reason string, _ dingtalk.Result, d time.Duration) {
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

// asRetryError returns err as a *call.Error, failing the test if it is not.
func asRetryError(t *testing.T, err error) *call.Error {
	t.Helper()
	var re *call.Error
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want a *call.Error", err, err)
	}
	return re
}
