package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// NewUpstreamTransport is the bottom of the chain, tuned for a proxy that
// talks to two hosts: many idle connections per host, HTTP/2 where offered,
// and no compression of its own, so answers pass through as DingTalk sent them.
func NewUpstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	t.IdleConnTimeout = 90 * time.Second
	t.ForceAttemptHTTP2 = true
	t.DisableCompression = true
	t.Proxy = nil // a sidecar talks to DingTalk directly; HTTP_PROXY would bypass the pod's egress policy silently
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return copyConn{c}, nil
	}
	return t
}

// copyConn is a connection whose ReadFrom copies through a small pooled
// buffer. http.Transport writes a request body that is not buffered with
// the connection's ReadFrom; net.TCPConn's allocates 32 KiB per call, which
// a crowd of slow streamed uploads would pay each. (Over TLS the body goes
// through tls.Conn instead, which has no ReadFrom.)
type copyConn struct{ net.Conn }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

func (c copyConn) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	return io.CopyBuffer(struct{ io.Writer }{c.Conn}, r, *buf)
}
