package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/retry"
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

// cacheTTL is how long req's answer may be served again: the route's
// cache, for an idempotent call whose body was read whole; 0 for none.
func (px *Proxy) cacheTTL(req *http.Request, f *retry.Facts) time.Duration {
	if !px.policy.Load().cached || !f.Idempotent || !f.Replayable || f.TokenEndpoint || req.Method == http.MethodHead {
		return 0
	}
	return px.routeFor(req, f).Cache
}

// cacheKey identifies "the same read" for the cache (see above).
func (px *Proxy) cacheKey(req *http.Request, f *retry.Facts) [sha256.Size]byte {
	h := sha256.New()
	io.WriteString(h, req.Method)
	h.Write([]byte{0})
	io.WriteString(h, req.URL.Path)
	h.Write([]byte{0})
	app := px.opts.AppKey
	q := req.URL.RawQuery
	for part := range strings.SplitSeq(q, "&") {
		name, val, _ := strings.Cut(part, "=")
		if name == dingtalk.QueryAccessToken {
			if val != "" && f.Inject == dingtalk.PlaceNone {
				app = "token:" + digest(val) // the client's own token: its app's answer
			}
			continue
		}
		io.WriteString(h, part)
		h.Write([]byte{'&'})
	}
	h.Write([]byte{0})
	if tok := req.Header.Get(dingtalk.HeaderAccessToken); tok != "" && f.Inject == dingtalk.PlaceNone {
		app = "token:" + digest(tok)
	}
	io.WriteString(h, app)
	h.Write([]byte{0})
	body := sha256.Sum256(f.Body)
	h.Write(body[:])
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func digest(s string) string {
	d := sha256.Sum256([]byte(s))
	return string(d[:])
}

// cached answers req from the cache entry e.
func cached(req *http.Request, e staleEntry) *http.Response {
	h := make(http.Header, len(e.header)+3)
	copyHeader(h, e.header)
	h.Set(HeaderCache, CacheHit)
	h.Set("Age", strconv.Itoa(int(time.Since(e.stored)/time.Second)))
	h.Set(HeaderAttempts, "0")
	return &http.Response{
		StatusCode: e.status, Status: strconv.Itoa(e.status) + " " + http.StatusText(e.status),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(e.body)), ContentLength: int64(len(e.body)),
		Request: req,
	}
}

// throughCache answers req from the cache, or sends it (once for all the
// concurrent misses of its key) with send and keeps a successful answer.
func (t transport) throughCache(req *http.Request, f *retry.Facts, ttl time.Duration,
	send func() (*http.Response, retry.Report, error)) (*http.Response, retry.Report, error) {
	px := t.px
	k := px.cacheKey(req, f)
	if e, ok := px.reads.get(k, ttl); ok {
		px.cacheResult(f, CacheHit)
		return cached(req, e), retry.Report{}, nil
	}
	fl, lead := px.flights.join(k)
	if !lead {
		select {
		case <-fl.done:
		case <-req.Context().Done():
			return nil, retry.Report{}, context.Cause(req.Context())
		}
		if e, ok := px.reads.get(k, ttl); ok {
			px.cacheResult(f, CacheHit)
			return cached(req, e), retry.Report{}, nil
		}
		// The leader's answer was not one to keep: this call makes its own.
		px.cacheResult(f, CacheMiss)
		resp, rep, err := send()
		if err == nil {
			resp.Header.Set(HeaderCache, CacheMiss)
		}
		return resp, rep, err
	}
	defer px.flights.leave(k, fl)
	if sc := px.opts.SharedCache; sc != nil {
		if status, h, body, stored, ok := sc.Get(req.Context(), k, ttl); ok {
			e := staleEntry{status: status, header: h, body: body, stored: stored}
			px.reads.put(k, e)
			px.cacheResult(f, CacheHit)
			return cached(req, e), retry.Report{}, nil
		}
	}
	px.cacheResult(f, CacheMiss)
	resp, rep, err := send()
	if err != nil {
		return resp, rep, err
	}
	resp.Header.Set(HeaderCache, CacheMiss)
	if rep.Outcome != retry.Success || resp.StatusCode != http.StatusOK || resp.ContentLength > maxCachedBody {
		return resp, rep, nil
	}
	// Read the answer whole (it is small) so the waiting misses can have it;
	// one longer than maxCachedBody goes on as it came.
	var buf bytes.Buffer
	n, rerr := io.CopyN(&buf, resp.Body, maxCachedBody+1)
	if rerr == io.EOF { // whole: keep it
		h := resp.Header.Clone()
		h.Del(HeaderAttempts)
		h.Del(HeaderCache)
		e := staleEntry{status: resp.StatusCode, header: h, body: bytes.Clone(buf.Bytes()), stored: time.Now()}
		px.reads.put(k, e)
		if sc := px.opts.SharedCache; sc != nil {
			sc.Put(k, e.status, e.header, e.body, e.stored, ttl)
		}
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

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (px *Proxy) cacheResult(f *retry.Facts, result string) {
	if px.opts.OnCache != nil {
		retry.Bookkeep(px.log, "cache", func() { px.opts.OnCache(f.Route, result) })
	}
}
