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

// Entry is a kept answer: the read cache's, or the stale fallbacks'.
type Entry struct {
	Status int
	Header http.Header
	Body   []byte
	Stored time.Time
}

// LRU keeps answers, least recently used first out, bounded in the bytes
// of their bodies: the read cache and the stale fallbacks each have one.
type LRU struct {
	max   int // bytes held at most
	mu    sync.Mutex
	ll    *list.List // of *staleItem, most recent at the front
	items map[[sha256.Size]byte]*list.Element
	bytes int
}

type staleItem struct {
	key [sha256.Size]byte
	e   Entry
}

// NewLRU is an answer cache of at most max bytes of bodies.
func NewLRU(max int) *LRU {
	return &LRU{max: max, ll: list.New(), items: make(map[[sha256.Size]byte]*list.Element)}
}

// Put keeps e under k. Entries age as their readers say (Get's ttl); the
// LRU drops the least recently used past its bytes.
func (c *LRU) Put(k [sha256.Size]byte, e Entry, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		it := el.Value.(*staleItem)
		c.bytes -= len(it.e.Body)
		it.e = e
		c.bytes += len(e.Body)
		c.ll.MoveToFront(el)
	} else {
		c.items[k] = c.ll.PushFront(&staleItem{key: k, e: e})
		c.bytes += len(e.Body)
	}
	for c.bytes > c.max {
		el := c.ll.Back()
		it := el.Value.(*staleItem)
		c.ll.Remove(el)
		delete(c.items, it.key)
		c.bytes -= len(it.e.Body)
	}
}

// Peek returns the entry for k if it is no older than ttl.
func (c *LRU) Peek(k [sha256.Size]byte, ttl time.Duration) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return Entry{}, false
	}
	it := el.Value.(*staleItem)
	if time.Since(it.e.Stored) > ttl {
		return Entry{}, false
	}
	c.ll.MoveToFront(el)
	return it.e, true
}
