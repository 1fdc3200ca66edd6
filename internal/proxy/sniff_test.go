package proxy

import (
	"strings"
	"testing"
)

// TestSniffScan: a Content-Length line is found in any case and however the
// bytes are split across reads; look-alikes are not.
func TestSniffScan(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", true},
		{"POST / HTTP/1.1\r\nHost: x\r\ncONTENT-lENGTH: 4\r\n\r\n", true},
		{"POST / HTTP/1.1\nContent-Length: 4\n\n", true},
		{"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nX-Content-Length: 4\r\n\r\n", false},
		{"POST / HTTP/1.1\r\nContent\rLength: 4\r\n\r\n", false}, // '\r' is not '-'
		{"Content-Length: 4 on the request line", false},
		{"POST / HTTP/1.1\r\n\nContent-Length: 1\r\n", true},
		{"POST / HTTP/1.1\r\nX-A: a\r\n Content-Length: 4\r\n", true}, // obs-fold
		{"POST / HTTP/1.1\r\nX-A: a\r\n\t\tcontent-length: 4\r\n", true},
	} {
		for split := 0; split <= len(tc.in); split++ {
			c := &sniffConn{}
			c.scan([]byte(tc.in[:split]))
			c.scan([]byte(tc.in[split:]))
			if got := c.cl.saw.Load(); got != tc.want {
				t.Errorf("%q split at %d: saw Content-Length %v, want %v", tc.in, split, got, tc.want)
				break
			}
		}
		// One byte a read.
		c := &sniffConn{}
		for i := range len(tc.in) {
			c.scan([]byte{tc.in[i]})
		}
		if got := c.cl.saw.Load(); got != tc.want {
			t.Errorf("%q byte by byte: %v, want %v", tc.in, got, tc.want)
		}
	}
}

func BenchmarkSniffScan(b *testing.B) {
	body := []byte(strings.Repeat("{\"userid\":\"manager4220\",\"language\":\"zh_CN\"}\n", 1<<10))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		c := &sniffConn{}
		c.scan(body)
	}
}

// TestSniffTransferEncoding: the same for Transfer-Encoding lines, tracked
// on their own.
func TestSniffTransferEncoding(t *testing.T) {
	c := &sniffConn{}
	c.scan([]byte("POST / HTTP/1.0\r\nHost: x\r\nTransfer-"))
	c.scan([]byte("ENCODING: chunked\r\n\r\n"))
	if !c.te.saw.Load() || c.cl.saw.Load() {
		t.Errorf("TE %v CL %v, want TE only", c.te.saw.Load(), c.cl.saw.Load())
	}
}
