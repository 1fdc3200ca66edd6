package dingtalktest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// maxSeenBodies bounds duplicate detection memory per path.
const maxSeenBodies = 1 << 20

func isTokenPath(path string) bool {
	return path == dingtalk.PathGetToken || path == dingtalk.PathOAuth2Token
}

// serveHTTP runs the pipeline: secret check, token endpoints, script, QPS
// limit, chaos, then auth and the handler (in normal).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p, ok := s.enter()
	if !ok {
		abort(w)
		return
	}
	defer s.inflight.Done()
	defer p.handlers.Done()
	// The request ends with its listening period (StopListening): Hang,
	// Latency and EndlessChunked stop there, unexecuted.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(p.ctx, cancel)()
	r = r.WithContext(ctx)

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return // the client went away mid-body
	}
	if len(body) > maxBody {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if p.ctx.Err() != nil {
		abort(w) // the listener stopped while this request was read
		return
	}
	path := r.URL.Path
	token := isTokenPath(path)
	leak := !token && s.containsSecret(r, body)
	now := s.opts.Now()

	s.mu.Lock()
	s.c.total++
	s.c.hits[path]++
	s.recordLocked(r, body)
	if leak {
		s.c.leaks++
	}
	if token {
		s.c.tokenFetches++
	}
	f, have := s.popScriptLocked(path)
	if !have && !token && s.qpsLimit > 0 && s.qpsRejectLocked(path, now) {
		s.c.throttled++
		f, have = Throttle(), true
	}
	var quotaUsed, quotaLimit int
	if !token && s.opts.ForeignToken != "" && requestToken(r) == s.opts.ForeignToken {
		// Another organisation's token: its quota, spent.
		have, quotaUsed, quotaLimit = true, 10001, 10000
	}
	if !have && !token && s.opts.MonthlyQuota > 0 && s.metered(path) {
		s.c.metered++
		if s.c.metered > s.opts.MonthlyQuota {
			s.c.quotaRejected[path]++
			quotaUsed, quotaLimit = s.c.metered, s.opts.MonthlyQuota
		}
	}
	if !have && quotaLimit == 0 && s.chaos.appliesTo(path) {
		f, _ = s.chaos.pick(s.rng.Float64()) // no pick is the zero Fault, OK
	}
	s.mu.Unlock()
	if quotaLimit > 0 {
		s.quotaSpent(w, path, quotaUsed, quotaLimit)
		return
	}

	s.apply(w, r, body, f)
}

func (s *Server) recordLocked(r *http.Request, body []byte) {
	rs := s.c.requests[r.URL.Path]
	if len(rs) >= maxRecorded {
		rs = append(rs[:0:0], rs[len(rs)-maxRecorded+1:]...)
	}
	s.c.requests[r.URL.Path] = append(rs, Request{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
	})
}

func (s *Server) popScriptLocked(path string) (Fault, bool) {
	q := s.scripts[path]
	if len(q) == 0 {
		return Fault{}, false
	}
	f := q[0]
	if len(q) == 1 {
		delete(s.scripts, path)
	} else {
		s.scripts[path] = q[1:]
	}
	return f, true
}

func (s *Server) qpsRejectLocked(path string, now time.Time) bool {
	st := s.qps[path]
	if st == nil {
		st = &qpsWindow{}
		s.qps[path] = st
	}
	if now.Before(st.penalty) {
		return true
	}
	if sec := now.Unix(); sec != st.second {
		st.second, st.count = sec, 0
	}
	st.count++
	if st.count > s.qpsLimit {
		st.penalty = now.Add(dingtalk.ThrottlePenalty * time.Second)
		return true
	}
	return false
}

func (s *Server) containsSecret(r *http.Request, body []byte) bool {
	secret := s.opts.AppSecret
	has := func(v string) bool { return strings.Contains(v, secret) }
	if has(r.URL.Path) || has(r.URL.RawPath) || has(r.URL.RawQuery) || has(r.RequestURI) {
		return true
	}
	if q, err := url.QueryUnescape(r.URL.RawQuery); err == nil && has(q) {
		return true
	}
	for k, vs := range r.Header {
		if has(k) {
			return true
		}
		for _, v := range vs {
			if has(v) {
				return true
			}
		}
	}
	if bytes.Contains(body, []byte(secret)) {
		return true
	}
	if b, err := url.QueryUnescape(string(body)); err == nil && has(b) {
		return true
	}
	return false
}

// normal answers r as DingTalk would with no fault: token endpoints, the
// robot webhook, then auth and the path's handler.
func (s *Server) normal(w http.ResponseWriter, r *http.Request, body []byte) {
	path := r.URL.Path
	switch path {
	case dingtalk.PathGetToken:
		s.getToken(w, r)
		return
	case dingtalk.PathOAuth2Token:
		s.oauth2Token(w, body)
		return
	case dingtalk.PathRobotSend:
		s.robotSend(w, r, body)
		return
	}
	if !s.auth(w, r) {
		return
	}
	h, send := lookupRoute(path)
	if h == nil {
		s.answerError(w, path, errNotFound)
		return
	}
	if s.opts.Gzip && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		rec := &recorder{header: http.Header{}}
		h(s, rec, r, body, func() { s.execute(path, body, send) })
		rec.gzipTo(w)
		return
	}
	h(s, w, r, body, func() { s.execute(path, body, send) })
}

// recorder keeps an answer to send it compressed.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// gzipTo writes the kept answer to w, gzip-compressed.
func (r *recorder) gzipTo(w http.ResponseWriter) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(r.body.Bytes())
	zw.Close()
	for k, vv := range r.header {
		w.Header()[k] = vv
	}
	w.Header().Set("Content-Encoding", "gzip")
	w.Header().Set("Content-Length", strconv.Itoa(z.Len()))
	w.WriteHeader(r.status)
	w.Write(z.Bytes())
}

// execute counts one execution of path; a send whose body was executed before
// on the same path is also a duplicate.
func (s *Server) execute(path string, body []byte, send bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.executeLocked(path, body, send, "", "")
}

// executeLocked counts one execution of path. A send is also counted per
// message (see Deliveries): robot is the robot's token and msgUUID its
// msgUuid, both "" elsewhere.
func (s *Server) executeLocked(path string, body []byte, send bool, robot, msgUUID string) {
	s.c.execs[path]++
	if !send {
		return
	}
	sum := sha256.Sum256(body)
	s.deliverLocked(path, body, sum, robot, msgUUID)
	seen := s.seen[path]
	if seen == nil {
		seen = make(map[[sha256.Size]byte]struct{})
		s.seen[path] = seen
	}
	if _, dup := seen[sum]; dup {
		s.c.duplicates++
	} else if len(seen) < maxSeenBodies {
		seen[sum] = struct{}{}
	}
}
