package proxy

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync/atomic"
)

// A chunked request that also carried a Content-Length may be a smuggling
// attempt (RFC 9112 section 6.1): the server must close the connection after
// answering it. net/http drops the Content-Length before a handler sees the
// request, so the listener's connections watch their own bytes for a
// Content-Length header line instead. A connection that never sent one keeps
// its chunked requests alive (the official Node SDK sends every POST body
// chunked); one that did closes after its next chunked request.

// Listener wraps ln so that the handler can tell a plain chunked request
// from one that also carried a Content-Length. Serve with a Server whose
// ConnContext is ConnContext.
func Listener(ln net.Listener) net.Listener { return sniffListener{ln} }

// ConnContext is the http.Server hook that hands a connection's watcher to
// its requests.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*sniffConn); ok {
		return context.WithValue(ctx, sniffKey{}, sc)
	}
	return ctx
}

type sniffKey struct{}

type sniffListener struct{ net.Listener }

func (l sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c}, nil
}

// sniffConn notes whether a header line named Content-Length or
// Transfer-Encoding (any case, after any leading spaces or tabs, as an
// obs-fold line would have them) ever came in on the connection. A match
// inside a body is a false alarm that costs a reconnect; a real header line
// is never missed.
type sniffConn struct {
	net.Conn
	cl, te sniffMatch
}

// sniffMatch follows one pattern across reads.
type sniffMatch struct {
	m   int // bytes of the pattern matched so far
	saw atomic.Bool
}

var (
	clPattern = []byte("\ncontent-length")
	tePattern = []byte("\ntransfer-encoding")
)

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !(c.cl.saw.Load() && c.te.saw.Load()) {
		c.scan(p[:n])
	}
	return n, err
}

func (c *sniffConn) scan(b []byte) {
	for len(b) > 0 {
		if c.cl.m == 0 && c.te.m == 0 {
			// Nothing under way: skip to the next line.
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return
			}
			b = b[i:]
		}
		ch := b[0]
		b = b[1:]
		c.cl.step(clPattern, ch)
		c.te.step(tePattern, ch)
	}
}

// step advances the match by ch. The pattern's first byte, '\n', occurs
// nowhere else in it, so a mismatch restarts at 1 on '\n' and at 0
// otherwise; spaces and tabs right after the '\n' are skipped.
func (s *sniffMatch) step(pattern []byte, ch byte) {
	if s.saw.Load() {
		return
	}
	lc := ch
	if 'A' <= lc && lc <= 'Z' {
		lc += 'a' - 'A'
	}
	switch {
	case s.m == 1 && (ch == ' ' || ch == '\t'):
		// still at the start of the line
	case lc == pattern[s.m]:
		if s.m++; s.m == len(pattern) {
			s.saw.Store(true)
			s.m = 0
		}
	case ch == '\n':
		s.m = 1
	default:
		s.m = 0
	}
}

// MustClose reports whether r's connection must close after its answer
// because r's framing may be read differently by a proxy in front (RFC 9112
// section 6.1): a chunked request on a connection that sent a Content-Length
// line, or an HTTP/1.0 request (which net/http frames by Content-Length,
// ignoring Transfer-Encoding) on one that sent a Transfer-Encoding line.
// On a connection that did not come through Listener it cannot tell, and
// says so for every chunked or HTTP/1.0 request.
func MustClose(r *http.Request) bool {
	chunked := len(r.TransferEncoding) > 0
	http10 := !r.ProtoAtLeast(1, 1)
	sc, ok := r.Context().Value(sniffKey{}).(*sniffConn)
	if !ok {
		return chunked || http10
	}
	return chunked && sc.cl.saw.Load() || http10 && sc.te.saw.Load()
}
