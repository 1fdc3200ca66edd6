//go:build !race

// The race detector multiplies memory per allocation: this test measures
// the heap, so it runs without it (make test runs it on its own).

package proxy

import (
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestLRUBoundedInMemory: 400,000 distinct answers put into a cache of
// 16 MiB hold at most 16 MiB by its own count, and its count is the heap's
// within a quarter (the accounting's entryOverhead is right): the keys and
// the bookkeeping are counted, not only the bodies.
func TestLRUBoundedInMemory(t *testing.T) {
	const max, n = 16 << 20, 400_000
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	body := []byte(`{"errcode":0,"errmsg":"ok","department":[{"id":1,"name":"总部"}],"request_id":"abc"}`)
	now := time.Now()
	before := heap()
	c := NewLRU(max)
	for i := range n {
		var k [sha256.Size]byte
		binary.BigEndian.PutUint64(k[:], uint64(i))
		c.Put(k, Entry{Status: 200, Body: append([]byte(nil), body...), Stored: now,
			Header: http.Header{"Content-Type": {"application/json;charset=utf-8"}, "X-Acs-Request-Id": {strings.Repeat("A", 36)}}}, time.Minute)
	}
	entries, bytes := c.Len()
	grown := heap() - before
	t.Logf("%d entries, %d bytes counted, heap grown %d bytes (%.2f of the count)", entries, bytes, grown, float64(grown)/float64(bytes))
	if bytes > max {
		t.Errorf("the cache counts %d bytes, over its %d", bytes, max)
	}
	if entries >= n/2 {
		t.Errorf("%d of %d entries kept in 16 MiB: the bookkeeping is not counted", entries, n)
	}
	if float64(grown) > 1.25*float64(bytes) || float64(grown) < 0.5*float64(bytes) {
		t.Errorf("heap grew %d bytes for %d counted: the count is off by more than a quarter", grown, bytes)
	}
	runtime.KeepAlive(c)
}
