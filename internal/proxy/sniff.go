package proxy

import (
	"bytes"
	"context"
	"net"
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

// sniffConn notes whether a line starting "content-length" (any case) ever
// came in on the connection. A match inside a body is a false alarm that
// costs a reconnect; a real header line is never missed.
type sniffConn struct {
	net.Conn
	matched int // bytes of pattern matched so far, across reads
	sawCL   atomic.Bool
}

var clPattern = []byte("\ncontent-length")

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.sawCL.Load() {
		c.scan(p[:n])
	}
	return n, err
}

// scan advances the match over b. The pattern's first byte, '\n', occurs
// nowhere else in it, so a mismatch restarts at 1 on '\n' and at 0 otherwise.
func (c *sniffConn) scan(b []byte) {
	m := c.matched
	for len(b) > 0 {
		if m == 0 {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				break
			}
			b, m = b[i+1:], 1
			continue
		}
		ch := b[0]
		b = b[1:]
		lc := ch
		if 'A' <= lc && lc <= 'Z' {
			lc += 'a' - 'A'
		}
		switch {
		case lc == clPattern[m]:
			if m++; m == len(clPattern) {
				c.sawCL.Store(true)
				c.matched = 0
				return
			}
		case ch == '\n':
			m = 1
		default:
			m = 0
		}
	}
	c.matched = m
}

// chunkedMustClose reports whether a chunked request's connection must close
// after its answer: when its connection sent a Content-Length line, or when
// it did not come through Listener and so cannot be told apart.
func chunkedMustClose(ctx context.Context) bool {
	sc, ok := ctx.Value(sniffKey{}).(*sniffConn)
	return !ok || sc.sawCL.Load()
}
