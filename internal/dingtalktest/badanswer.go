package dingtalktest

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Writers of the bad-answer faults: Body, Huge, BadGzip, CloseMidBody,
// EndlessChunked and Informational.

const (
	contentTypeJSON = "application/json;charset=utf-8"
	serverName      = "DingTalk/1.0.0"

	// hugePrefix and hugeSuffix frame Huge's run of x's.
	hugePrefix = `{"errcode":0,"errmsg":"ok","result":"`
	hugeSuffix = `"}`
	hugeMin    = int64(len(hugePrefix) + len(hugeSuffix))

	// closeMidBodyLength is the Content-Length CloseMidBody announces;
	// closeMidBodySent is how much of it it sends.
	closeMidBodyLength = 2000
	closeMidBodySent   = 100

	// endlessPrefix opens EndlessChunked's body.
	endlessPrefix = `{"errcode":0,"errmsg":"ok","result":[`

	// earlyHintsLink is the Link header of Informational's 103s.
	earlyHintsLink = "</static/app.css>; rel=preload; as=style"
)

var (
	// xs is a read-only run of x's that Huge writes slices of.
	xs = strings.Repeat("x", 16<<10)
	// endlessChunk is one chunk of EndlessChunked's elements.
	endlessChunk = strings.Repeat(`"x",`, 2<<10)
	// closeMidBodyPart is the start of the JSON body CloseMidBody sends.
	closeMidBodyPart = (hugePrefix + xs)[:closeMidBodySent]
	// badGzipBody is a valid gzip header (deflate, no flags, Unix) followed by
	// a deflate block of the reserved type 3, then junk.
	badGzipBody = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xffnot really gzip"
)

// executeDiscarded executes r normally (auth, then the handler) and discards
// its answer, so a fault can answer in its own way.
func (s *Server) executeDiscarded(r *http.Request, body []byte) {
	s.normal(&discardWriter{h: make(http.Header)}, r, body)
}

// discardWriter swallows the answer of a request executed by a fault that
// answers in its own way.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// setHeader sets the headers of a bad answer: Server, Content-Type (none if
// ct is ""), and Content-Length unless length is negative.
func setHeader(w http.ResponseWriter, ct string, length int64) {
	h := w.Header()
	h.Set("Server", serverName)
	if ct == "" {
		h["Content-Type"] = nil // stops net/http sniffing one
	} else {
		h.Set("Content-Type", ct)
	}
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
}

// writeBody answers Body: exactly status, Content-Type and body.
func writeBody(w http.ResponseWriter, status int, ct, body string) {
	setHeader(w, ct, int64(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// writeHuge answers Huge: a success body of exactly n bytes, written from xs.
func writeHuge(w http.ResponseWriter, n int64) {
	setHeader(w, contentTypeJSON, n)
	w.WriteHeader(http.StatusOK)
	if _, err := io.WriteString(w, hugePrefix); err != nil {
		return
	}
	for left := n - hugeMin; left > 0; {
		chunk := xs[:min(left, int64(len(xs)))]
		if _, err := io.WriteString(w, chunk); err != nil {
			return // the client went away or the server closed
		}
		left -= int64(len(chunk))
	}
	_, _ = io.WriteString(w, hugeSuffix)
}

// closeMidBody answers CloseMidBody. It writes the response itself on the
// hijacked connection, since net/http cannot hijack after a flush. Where it
// cannot hijack (HTTP/2) it sends the part through w and resets the stream.
func closeMidBody(w http.ResponseWriter) {
	setHeader(w, contentTypeJSON, closeMidBodyLength)
	rc := http.NewResponseController(w)
	conn, bw, err := rc.Hijack()
	if err != nil {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, closeMidBodyPart)
		_ = rc.Flush()
		panic(http.ErrAbortHandler)
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = bw.WriteString("HTTP/1.1 200 OK\r\n")
	_ = w.Header().Write(bw)
	_, _ = bw.WriteString("\r\n" + closeMidBodyPart)
	_ = bw.Flush()
}

// endless answers EndlessChunked: it writes and flushes chunks until the
// client goes away, the server closes or a write fails, then aborts the
// connection so the body is never terminated. Writes block while the client
// does not read; closing the connection (as Close does) unblocks them.
func (s *Server) endless(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	hook := s.testHookEndlessDone
	s.mu.Unlock()
	if hook != nil {
		defer hook()
	}
	setHeader(w, contentTypeJSON, -1)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for chunk := endlessPrefix; ; chunk = endlessChunk {
		if _, err := io.WriteString(w, chunk); err != nil {
			break
		}
		if err := rc.Flush(); err != nil {
			break
		}
		select {
		case <-r.Context().Done():
		case <-s.closing:
		default:
			continue
		}
		break
	}
	panic(http.ErrAbortHandler)
}

// informational answers Informational: n 103 Early Hints, then normally.
func (s *Server) informational(w http.ResponseWriter, r *http.Request, body []byte, n int) {
	if n > 0 {
		w.Header().Set("Link", earlyHintsLink)
		for range n {
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Del("Link")
	}
	s.normal(w, r, body)
}
