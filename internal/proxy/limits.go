package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// badPath says what is wrong with a request path that could mean another
// path to DingTalk than to dingproxy's own routing and idempotency rules:
// dot segments, encoded or back slashes, control characters. "" means none.
// DingTalk's APIs use none of them.
func badPath(u *url.URL) string {
	if !strings.HasPrefix(u.Path, "/") {
		return "request path must start with /"
	}
	if raw := u.RawPath; raw != "" {
		for i := 0; i+2 < len(raw); i++ {
			if raw[i] == '%' && (raw[i+1] == '2' && (raw[i+2] == 'f' || raw[i+2] == 'F') ||
				raw[i+1] == '5' && (raw[i+2] == 'c' || raw[i+2] == 'C')) {
				return "request path has an encoded slash or backslash"
			}
		}
	}
	p := u.Path
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c < 0x20 || c == 0x7f:
			return "request path has a control character"
		case c == '\\':
			return "request path has a backslash"
		case c == '.' && p[i-1] == '/': // p starts with "/"
			// "." or ".." as a whole segment.
			rest := p[i+1:]
			if rest == "" || rest[0] == '/' || rest == "." || strings.HasPrefix(rest, "./") {
				return "request path has a dot segment (. or ..)"
			}
		}
	}
	return ""
}

// Errors of a client's request body.
var (
	// errBodyStalled: the client paused longer than server.body_read_timeout.
	errBodyStalled = errors.New("request body stalled")
	// errBodyTooLarge: the body passed server.max_request_body_bytes.
	errBodyTooLarge = errors.New("request body too large")
)

// clientBody is a client's request body under server.body_read_timeout
// and server.max_request_body_bytes. It keeps the first error of the
// client's side, so that an attempt that failed because the client's body
// did can be answered as the client's fault.
type clientBody struct {
	// mu serialises reads: the upstream transport's writer may still be
	// reading when the handler drains what is left.
	mu    sync.Mutex
	body  io.ReadCloser
	rc    http.ResponseController
	idle  time.Duration
	limit int64 // 0: none
	read  int64
	// armed is whether a read deadline is set on the connection.
	armed bool

	eof atomic.Bool
	err atomic.Pointer[error]
	// waiting is the deadline of the read in progress (Unix ns), 0 when
	// no read waits on the client.
	waiting atomic.Int64
	// until, when set (Unix ns), is a time no read may wait past.
	until atomic.Int64
}

func newClientBody(w http.ResponseWriter, body io.ReadCloser, idle time.Duration, limit int64) *clientBody {
	b := &clientBody{body: body, idle: idle, limit: limit}
	b.rc = *http.NewResponseController(w) // a copy: no allocation of its own
	// Left to itself, net/http reads up to 256 KiB of an unread body
	// before it sends an answer, with no deadline. This body is read here,
	// under its limits, or drained after the answer.
	b.rc.EnableFullDuplex()
	return b
}

func (b *clientBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if errp := b.err.Load(); errp != nil {
		return 0, *errp
	}
	if b.eof.Load() {
		return 0, io.EOF
	}
	if b.limit > 0 && int64(len(p)) > b.limit-b.read+1 {
		p = p[:b.limit-b.read+1] // one byte past the limit tells
	}
	if b.idle > 0 {
		// Each read may wait at most idle for the client; a failure to set
		// it (a ResponseWriter that cannot) leaves the read unbounded.
		d := time.Now().Add(b.idle).UnixNano()
		if u := b.until.Load(); u != 0 && u < d {
			d = u
		}
		b.armed = b.rc.SetReadDeadline(time.Unix(0, d)) == nil
		if b.armed {
			b.waiting.Store(d)
		}
	}
	n, err := b.body.Read(p)
	b.waiting.Store(0)
	b.read += int64(n)
	switch {
	case b.limit > 0 && b.read > b.limit:
		n -= int(b.read - b.limit)
		b.read = b.limit
		err = errBodyTooLarge
	case err == io.EOF:
		b.eof.Store(true)
		b.disarm()
		return n, err
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		err = errBodyStalled
	}
	if err != nil {
		// The deadline stays: whatever reads the connection next must fail
		// at once, not wait.
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// disarm clears the read deadline once the body is done: net/http reads on
// in the background after a body's end, and a deadline passing then would
// cancel the request.
func (b *clientBody) disarm() {
	if b.armed {
		b.rc.SetReadDeadline(time.Time{})
		b.armed = false
	}
}

// done reports whether the body has been read to its end or failed.
func (b *clientBody) done() bool { return b.eof.Load() || b.err.Load() != nil }

func (b *clientBody) Close() error { return b.body.Close() }

// drain reads what the client still sends of a body nobody will use: the
// answer went out before the body was all sent (an attempt failed midway,
// a fallback answered). Without it net/http would close the connection
// with the body unread, and a client still writing would see a broken pipe
// instead of its answer. The body's limits bound the bytes, drainFor the
// time.
func (b *clientBody) drain() {
	b.until.Store(time.Now().Add(drainFor).UnixNano())
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	for {
		if _, err := b.Read(*bp); err != nil {
			return
		}
	}
}

// drainFor bounds how long a handler takes in an unused body after its
// answer; past it, net/http closes the connection.
const drainFor = 10 * time.Second

// Failed is the first error of the client's side, nil if none. A read
// waiting past its deadline counts as a stall before the read returns:
// net/http cancels the request as the read fails, so whoever sees the
// cancellation may look before the read has said why. A deadline with no
// read waiting on it means nothing: then it is DingTalk that is slow to
// take the body, not the client to send it.
func (b *clientBody) Failed() error {
	if errp := b.err.Load(); errp != nil {
		return *errp
	}
	if w := b.waiting.Load(); w != 0 && time.Now().UnixNano() >= w {
		return errBodyStalled
	}
	return nil
}

// clientBodyStatus is the answer to a request whose body failed. The
// connection is closed after it: the rest of the body is not worth waiting
// for, and the stream is no longer in step with the client.
func clientBodyStatus(w http.ResponseWriter, err error) (int, string) {
	w.Header().Set("Connection", "close")
	switch {
	case errors.Is(err, errBodyStalled):
		return http.StatusRequestTimeout, "dingproxy: the request body stalled for longer than server.body_read_timeout"
	case errors.Is(err, errBodyTooLarge):
		return http.StatusRequestEntityTooLarge, "dingproxy: the request body is larger than server.max_request_body_bytes"
	default:
		// Not err's text: a network error names the pod's address.
		return http.StatusBadRequest, "dingproxy: the request body ended early or is malformed"
	}
}

func tooLargeMsg(limit int64) string {
	return "dingproxy: the request body is larger than server.max_request_body_bytes (" + strconv.FormatInt(limit, 10) + ")"
}

// redactPanic prints a panic's value for the log without the secret, the
// shared token or any access_token query value it may hold. (The stack
// trace holds function names and lines, no values.)
func (px *Proxy) redactPanic(v any) string {
	var msg string
	if err, ok := v.(error); ok {
		msg = dingtalk.RedactError(err).Error()
	} else {
		msg = fmt.Sprint(v)
	}
	secrets := []string{px.opts.AppSecret}
	if px.opts.Tokens != nil {
		tok, _ := px.opts.Tokens.Peek()
		secrets = append(secrets, tok)
	}
	for _, sec := range secrets {
		if sec != "" {
			msg = strings.ReplaceAll(msg, sec, dingtalk.Redacted)
			msg = strings.ReplaceAll(msg, url.QueryEscape(sec), dingtalk.Redacted)
		}
	}
	return dingtalk.RedactQueryValues(msg, dingtalk.QueryAccessToken, "appsecret")
}
