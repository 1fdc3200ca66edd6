package proxy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// The read cache: a route configured with cache: <ttl> answers repeats of a
// successful read from memory for that long. A hit sends nothing (no quota,
// no pacing turn, no breaker). Concurrent misses for one key make one
// upstream call; the others wait for it and take its answer. The key is a
// digest of the method, the path, the query without any access_token, a
// digest of the body, and the app whose token the call carries (this
// proxy's app key, or a digest of the client's own token): neither the
// secret nor a token is kept. Only whole answers up to maxCachedBody are
// kept, CacheMaxBytes in all.

// HeaderCache says whether a cacheable call was answered from the cache
// ("hit") or sent ("miss").
const HeaderCache = "X-Dingproxy-Cache"

// Cache results, the values of HeaderCache and of the cache metric's label.
const (
	CacheHit  = "hit"
	CacheMiss = "miss"
)

const (
	// maxCachedBody is the largest answer kept.
	maxCachedBody = 1 << 20
	// CacheMaxBytes bounds the bodies the read cache holds in all.
	CacheMaxBytes = 64 << 20
)

// Store keeps the read cache's answers: this proxy's LRU, or the fleet's
// store decorating it.
type Store interface {
	// Peek returns the answer kept under key, no older than ttl, without
	// waiting on anything.
	Peek(key [32]byte, ttl time.Duration) (Entry, bool)
	// Get is Peek, and may also ask a store shared with other proxies
	// (bounded by its own timeout and ctx).
	Get(ctx context.Context, key [32]byte, ttl time.Duration) (Entry, bool)
	// Put keeps e under key for ttl.
	Put(key [32]byte, e Entry, ttl time.Duration)
}

// Get is Peek: an LRU is all local.
func (c *LRU) Get(_ context.Context, key [32]byte, ttl time.Duration) (Entry, bool) {
	return c.Peek(key, ttl)
}

// CacheObserver is told of every cacheable call: a hit or a miss.
type CacheObserver interface {
	CacheResult(route, result string)
}

// ReadCache is the read cache layer, the first of the request path.
type ReadCache struct {
	appKey  string
	store   Store
	obs     CacheObserver
	log     *zap.Logger
	flights flights
}

// NewReadCache returns the read cache over store; appKey names the app
// whose token the proxy injects.
func NewReadCache(appKey string, store Store, obs CacheObserver, log *zap.Logger) *ReadCache {
	return &ReadCache{appKey: appKey, store: store, obs: obs, log: log}
}

// Layer is the read cache over next: a call with a cache TTL
// (Facts.CacheTTL) is answered from the store when it can be, and its
// successful answer kept; every other call goes on as it is.
func (c *ReadCache) Layer(next call.Handler) call.Handler {
	return call.HandlerFunc(func(req *http.Request, f *call.Facts) (*http.Response, call.Report, error) {
		ttl := f.CacheTTL(req.Method)
		if ttl <= 0 {
			return next.Do(req, f)
		}
		resp, rep, err := c.through(req, f, ttl, next)
		if err == nil && resp.Header.Get(HeaderCache) == "" {
			resp.Header.Set(HeaderCache, CacheMiss) // sent: the cache's word, not DingTalk's
		}
		return resp, rep, err
	})
}

// flight is one upstream call that concurrent misses for a key wait on.
type flight struct{ done chan struct{} }

type flights struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*flight
}

// join returns the key's flight, and whether the caller leads it (makes
// the call) rather than waits on it.
func (fs *flights) join(k [sha256.Size]byte) (*flight, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fl, ok := fs.m[k]; ok {
		return fl, false
	}
	if fs.m == nil {
		fs.m = make(map[[sha256.Size]byte]*flight)
	}
	fl := &flight{done: make(chan struct{})}
	fs.m[k] = fl
	return fl, true
}

func (fs *flights) leave(k [sha256.Size]byte, fl *flight) {
	fs.mu.Lock()
	delete(fs.m, k)
	fs.mu.Unlock()
	close(fl.done)
}

// key identifies "the same read" for the cache (see above): every token
// value the proxy would act on is in it (as a digest), and so are the
// request's Accept-Encoding (the answer's bytes depend on it) and
// Content-Type (the same bytes as JSON or as a form are another call).
func (c *ReadCache) key(req *http.Request, f *call.Facts) [sha256.Size]byte {
	h := sha256.New()
	io.WriteString(h, req.Method)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.Path)
	h.Write([]byte{0})
	var own []string // the client's own token values, when it sent its own
	for part := range strings.SplitSeq(req.URL.RawQuery, "&") {
		name, val, _ := strings.Cut(part, "=")
		if name == dingtalk.QueryAccessToken || strings.Contains(name, "%") && isTokenParam(name) {
			own = append(own, val)
			continue
		}
		io.WriteString(h, part)
		h.Write([]byte{'&'})
	}
	h.Write([]byte{0})
	own = append(own, req.Header.Values(dingtalk.HeaderAccessToken)...)
	if f.Inject == dingtalk.PlaceNone && len(own) > 0 {
		// The client's own token: its app's answer, not this app's.
		for _, tok := range own {
			io.WriteString(h, "token:"+digest(tok))
			h.Write([]byte{0})
		}
	} else {
		io.WriteString(h, "app:"+c.appKey)
		h.Write([]byte{0})
	}
	for _, name := range [...]string{"Accept-Encoding", "Content-Type"} {
		for _, v := range req.Header.Values(name) {
			io.WriteString(h, strings.ToLower(strings.TrimSpace(v)))
			h.Write([]byte{','})
		}
		h.Write([]byte{0})
	}
	body := sha256.Sum256(f.Body)
	h.Write(body[:])
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// isTokenParam reports whether a raw query name decodes to access_token.
func isTokenParam(name string) bool {
	n, err := url.QueryUnescape(name)
	return err == nil && n == dingtalk.QueryAccessToken
}

func digest(s string) string {
	d := sha256.Sum256([]byte(s))
	return string(d[:])
}

// cached answers req from the cache entry e.
func cached(req *http.Request, e Entry) *http.Response {
	h := make(http.Header, len(e.Header)+3)
	copyHeader(h, e.Header)
	h.Set(HeaderCache, CacheHit)
	h.Set("Age", strconv.Itoa(int(time.Since(e.Stored)/time.Second)))
	h.Set(HeaderAttempts, "0")
	return &http.Response{
		StatusCode: e.Status, Status: strconv.Itoa(e.Status) + " " + http.StatusText(e.Status),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(e.Body)), ContentLength: int64(len(e.Body)),
		Request: req,
	}
}

// hit answers req from e, counted as a hit.
func (c *ReadCache) hit(req *http.Request, f *call.Facts, e Entry) (*http.Response, call.Report, error) {
	c.result(f, CacheHit)
	return cached(req, e), call.Report{}, nil
}

// through answers req from the cache, or sends it (once for all the
// concurrent misses of its key) down next and keeps a successful answer.
func (c *ReadCache) through(req *http.Request, f *call.Facts, ttl time.Duration, next call.Handler) (*http.Response, call.Report, error) {
	k := c.key(req, f)
	if e, ok := c.store.Peek(k, ttl); ok {
		return c.hit(req, f, e)
	}
	fl, lead := c.flights.join(k)
	if !lead {
		select {
		case <-fl.done:
		case <-req.Context().Done():
			return nil, call.Report{}, context.Cause(req.Context())
		}
		if e, ok := c.store.Peek(k, ttl); ok {
			return c.hit(req, f, e)
		}
		// The leader's answer was not one to keep: this call makes its own.
		c.result(f, CacheMiss)
		return next.Do(req, f)
	}
	defer c.flights.leave(k, fl)
	if e, ok := c.store.Get(req.Context(), k, ttl); ok {
		return c.hit(req, f, e)
	}
	c.result(f, CacheMiss)
	resp, rep, err := next.Do(req, f)
	if err != nil || rep.Outcome != call.Success || resp.StatusCode != http.StatusOK || resp.ContentLength > maxCachedBody {
		return resp, rep, err
	}
	// Read the answer whole (it is small) so the waiting misses can have it;
	// one longer than maxCachedBody goes on as it came.
	var buf bytes.Buffer
	n, rerr := io.CopyN(&buf, resp.Body, maxCachedBody+1)
	if rerr == io.EOF && wholeJSON(resp.Header, buf.Bytes()) { // whole, and all of it: keep it
		h := resp.Header.Clone()
		h.Del(HeaderAttempts)
		h.Del(HeaderCache)
		c.store.Put(k, Entry{Status: resp.StatusCode, Header: h, Body: bytes.Clone(buf.Bytes()), Stored: time.Now()}, ttl)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(buf.Bytes()))
		resp.ContentLength = n
		return resp, rep, nil
	}
	if rerr == io.EOF { // whole, but not an answer to keep: hand it on
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(buf.Bytes()))
		resp.ContentLength = n
		return resp, rep, nil
	}
	// Too long (the rest follows), or it broke off (its error follows):
	// hand on what came, as it came.
	var rest io.Reader = resp.Body
	if rerr != nil {
		rest = errReader{rerr}
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf.Bytes()), rest), resp.Body}
	return resp, rep, nil
}

// wholeJSON reports whether body (in the encoding header names) is one
// whole JSON document: an answer cut short, or in an encoding the proxy
// cannot read, is not kept (it might be kept as a success for a whole TTL).
func wholeJSON(header http.Header, body []byte) bool {
	switch header.Get("Content-Encoding") {
	case "", "identity":
		return json.Valid(body)
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return false
		}
		plain, err := io.ReadAll(io.LimitReader(zr, maxCachedBody+1))
		return err == nil && len(plain) <= maxCachedBody && json.Valid(plain)
	}
	return false
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (c *ReadCache) result(f *call.Facts, result string) {
	if c.obs != nil {
		call.Bookkeep(c.log, "cache", func() { c.obs.CacheResult(f.Route, result) })
	}
}
