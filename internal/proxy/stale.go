package proxy

import (
	"container/list"
	"crypto/sha256"
	"net/http"
	"sync"
	"time"
)

// Bounds of the stale cache: it never holds more than staleMaxBytes of
// answers, nor one answer over maxStaleBody.
const (
	maxStaleBody  = 256 << 10
	staleMaxBytes = 32 << 20
)

type staleEntry struct {
	status int
	header http.Header
	body   []byte
	stored time.Time
}

// staleCache keeps the last good answers for stale fallbacks, least recently
// used first out, bounded in bytes.
type staleCache struct {
	max   int // bytes held at most
	mu    sync.Mutex
	ll    *list.List // of *staleItem, most recent at the front
	items map[[sha256.Size]byte]*list.Element
	bytes int
}

type staleItem struct {
	key [sha256.Size]byte
	e   staleEntry
}

func newStaleCache() *staleCache { return newLRU(staleMaxBytes) }

// newLRU is an answer cache of at most max bytes of bodies.
func newLRU(max int) *staleCache {
	return &staleCache{max: max, ll: list.New(), items: make(map[[sha256.Size]byte]*list.Element)}
}

func (c *staleCache) put(k [sha256.Size]byte, e staleEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		it := el.Value.(*staleItem)
		c.bytes -= len(it.e.body)
		it.e = e
		c.bytes += len(e.body)
		c.ll.MoveToFront(el)
	} else {
		c.items[k] = c.ll.PushFront(&staleItem{key: k, e: e})
		c.bytes += len(e.body)
	}
	for c.bytes > c.max {
		el := c.ll.Back()
		it := el.Value.(*staleItem)
		c.ll.Remove(el)
		delete(c.items, it.key)
		c.bytes -= len(it.e.body)
	}
}

// get returns the entry for k if it is no older than ttl.
func (c *staleCache) get(k [sha256.Size]byte, ttl time.Duration) (staleEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return staleEntry{}, false
	}
	it := el.Value.(*staleItem)
	if time.Since(it.e.stored) > ttl {
		return staleEntry{}, false
	}
	c.ll.MoveToFront(el)
	return it.e, true
}
