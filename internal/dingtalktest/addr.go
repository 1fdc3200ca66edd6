package dingtalktest

import (
	"net"
	"sync"
	"testing"
)

// DeadAddr returns a loopback "host:port" on which nothing listens, so a dial
// is refused (the request is certainly not sent). It listens on 127.0.0.1:0
// and closes the listener; another process could take the port in between,
// which is unlikely within one test.
func DeadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dingtalktest: DeadAddr: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("dingtalktest: DeadAddr: %v", err)
	}
	return addr
}

// BrokenAddr returns a loopback "host:port" that accepts connections and
// closes each at once, without reading or answering: a dial succeeds but the
// request fails. It stops with t.Cleanup.
func BrokenAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dingtalktest: BrokenAddr: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}
