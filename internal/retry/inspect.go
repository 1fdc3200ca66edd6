package retry

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

// inspect reads up to limit bytes of resp's body to classify it, and puts
// what it read back in front of the rest, so the client gets every byte as
// DingTalk sent it. A gzip-encoded body is decoded for classification only.
func inspect(resp *http.Response, method string, limit int) (dingtalk.Result, error) {
	ct := resp.Header.Get("Content-Type")
	if method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified || resp.ContentLength == 0 || !inspectable(ct) {
		return dingtalk.Classify(resp.StatusCode, ct, nil), nil
	}
	size := limit
	if resp.ContentLength > 0 && resp.ContentLength < int64(limit) {
		size = int(resp.ContentLength)
	}
	// Answers of unknown length get a pooled buffer of the whole limit,
	// given back when the body is closed; small known ones an exact one.
	var pooled *[]byte
	var buf []byte
	if size >= minPooled {
		pooled = inspectBuffers.Get().(*[]byte)
		if cap(*pooled) < size {
			*pooled = make([]byte, size)
		}
		buf = (*pooled)[:size]
	} else {
		buf = make([]byte, size)
	}
	n, complete, err := readPrefix(resp.Body, buf)
	if err != nil {
		if pooled != nil {
			inspectBuffers.Put(pooled)
		}
		return dingtalk.Result{}, err
	}
	if !complete && resp.ContentLength > 0 && int64(n) == resp.ContentLength {
		complete = true
	}
	buf = buf[:n]
	pb := &prefixBody{closer: resp.Body, pooled: pooled}
	pb.prefix.Reset(buf)
	if complete {
		pb.Reader = &pb.prefix
	} else {
		pb.Reader = io.MultiReader(&pb.prefix, resp.Body)
	}
	resp.Body = pb
	decoded := buf
	switch resp.Header.Get("Content-Encoding") {
	case "", "identity":
	case "gzip", "x-gzip":
		decoded = gunzipPrefix(buf, limit)
	default:
		decoded = nil // classified by status alone
	}
	return dingtalk.Classify(resp.StatusCode, ct, decoded), nil
}

// readPrefix fills buf from body, and reports whether the body ended within
// it. Only a clean end (io.EOF) counts: a body cut short (a connection closed
// before Content-Length or the last chunk, io.ErrUnexpectedEOF) is an error,
// so the attempt fails as a reset after sending rather than passing on half
// an answer as if it were whole.
func readPrefix(body io.Reader, buf []byte) (n int, complete bool, err error) {
	for n < len(buf) {
		m, err := body.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// inspectable reports whether a body of this type can hold a DingTalk error.
func inspectable(contentType string) bool {
	if contentType == "" {
		return true
	}
	// The media type without parameters, as mime.ParseMediaType would
	// read it but without allocating: this runs on every answer.
	mt := contentType
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	mt = strings.TrimSpace(mt)
	if slash := strings.IndexByte(mt, '/'); slash <= 0 || slash == len(mt)-1 {
		return true // not a media type: look, as for none
	}
	for _, t := range [...]string{"application/json", "text/json", "text/plain", "text/html", "application/problem+json"} {
		if strings.EqualFold(mt, t) {
			return true
		}
	}
	return false
}

// gunzipPrefix decodes as much of a gzip stream's start as it can, up to limit.
func gunzipPrefix(b []byte, limit int) []byte {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	out, _ := io.ReadAll(io.LimitReader(zr, int64(limit)))
	return out
}

// prefixBody is an answer's body with its inspected prefix put back. A
// pooled prefix buffer goes back to the pool on Close; reads after Close
// fail rather than see a buffer that another answer may be filling.
type prefixBody struct {
	io.Reader
	prefix bytes.Reader
	closer io.Closer
	pooled *[]byte
	closed atomic.Bool
}

func (b *prefixBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	return b.Reader.Read(p)
}

func (b *prefixBody) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	err := b.closer.Close()
	if b.pooled != nil {
		b.prefix.Reset(nil)
		inspectBuffers.Put(b.pooled)
		b.pooled = nil
	}
	return err
}

var errBodyClosed = errors.New("retry: read on a closed answer body")

// minPooled is the least inspection buffer taken from the pool: smaller
// ones cost less to allocate than to pool.
const minPooled = 4 << 10

var inspectBuffers = sync.Pool{New: func() any { b := make([]byte, 0, DefaultInspectBytes); return &b }}
