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

// entryOverhead is what an entry costs beyond its body and header bytes:
// its key (twice: the map's and the item's), the list element, the item,
// the map's share, the header map and the body's slice header, rounded up.
// Measured with TestLRUBoundedInMemory.
const entryOverhead = 650

// size is what e costs the cache, in bytes.
func (e *Entry) size() int {
	n := entryOverhead + len(e.Body)
	for k, vv := range e.Header {
		n += len(k) + 16
		for _, v := range vv {
			n += len(v) + 16
		}
	}
	return n
}

// LRU keeps answers, least recently used first out, bounded in what they
// cost in memory (bodies, headers, keys and bookkeeping): the read cache
// and the stale fallbacks each have one. An entry past its time to live is
// never answered, and goes at the next Put that finds it at the back.
type LRU struct {
	max   int // bytes held at most
	mu    sync.Mutex
	ll    *list.List // of *lruItem, most recent at the front
	items map[[sha256.Size]byte]*list.Element
	bytes int
}

type lruItem struct {
	key     [sha256.Size]byte
	e       Entry
	size    int
	expires time.Time // zero: only as old as its reader allows
}

// NewLRU is an answer cache of at most max bytes.
func NewLRU(max int) *LRU {
	return &LRU{max: max, ll: list.New(), items: make(map[[sha256.Size]byte]*list.Element)}
}

// Put keeps e under k for ttl (zero: as long as room allows; its reader
// says how old it may be). An entry larger than the whole cache is not
// kept.
func (c *LRU) Put(k [sha256.Size]byte, e Entry, ttl time.Duration) {
	it := &lruItem{key: k, e: e, size: e.size()}
	if ttl > 0 {
		it.expires = e.Stored.Add(ttl)
	}
	if it.size > c.max {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.removeLocked(el)
	}
	c.items[k] = c.ll.PushFront(it)
	c.bytes += it.size
	// The least recently used go first while over the bound; and a few
	// expired ones at the back go at every Put, so a cache of entries
	// nobody reads again empties as they expire.
	for n := 0; c.ll.Len() > 0; n++ {
		back := c.ll.Back()
		bi := back.Value.(*lruItem)
		if c.bytes <= c.max && (n >= 4 || bi.expires.IsZero() || now.Before(bi.expires)) {
			break
		}
		c.removeLocked(back)
	}
}

func (c *LRU) removeLocked(el *list.Element) {
	it := el.Value.(*lruItem)
	c.ll.Remove(el)
	delete(c.items, it.key)
	c.bytes -= it.size
}

// Peek returns the entry for k if it is no older than ttl (and not past
// its own time to live).
func (c *LRU) Peek(k [sha256.Size]byte, ttl time.Duration) (Entry, bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return Entry{}, false
	}
	it := el.Value.(*lruItem)
	if now.Sub(it.e.Stored) > ttl || !it.expires.IsZero() && !now.Before(it.expires) {
		if !it.expires.IsZero() && !now.Before(it.expires) {
			c.removeLocked(el)
		}
		return Entry{}, false
	}
	c.ll.MoveToFront(el)
	return it.e, true
}

// Len is how many entries the cache holds, and what they cost in bytes.
func (c *LRU) Len() (entries, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len(), c.bytes
}
