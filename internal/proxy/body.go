package proxy

import (
	"bytes"
	"io"
	"net/http"
)

// Why a body was not buffered, as Facts.NotBuffered says.
const (
	NotBufferedTooLarge  = "too_large"
	NotBufferedBufferCap = "buffer_cap"
)

// Buffered is how many bytes request-body buffers hold now.
func (px *Proxy) Buffered() int64 { return px.buffered.Load() }

// reserve takes n bytes of the buffer cap, or reports that they are not left.
func (px *Proxy) reserve(n, limit int64) bool {
	for {
		used := px.buffered.Load()
		if used+n > limit {
			return false
		}
		if px.buffered.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// readBody buffers r's body for replay when it is at most pol.MaxBodyBytes
// and the global cap pol.MaxBufferedBytes has room for it; held is what it
// took of the cap, to be given back when the request is done. Otherwise the
// body is left to stream once (its read part put back in front of the rest)
// and notBuffered says why. Reading grows the buffer chunk by chunk, each
// reserved before it is read, so a body of unknown length holds no more of
// the cap than it has sent.
func (px *Proxy) readBody(r *http.Request, pol *Policy) (body []byte, held int64, notBuffered string, err error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, 0, "", nil
	}
	if r.ContentLength > pol.MaxBodyBytes {
		return nil, 0, NotBufferedTooLarge, nil
	}
	if r.ContentLength > 0 {
		// Known length: reserve it all at once, read it in one buffer.
		if !px.reserve(r.ContentLength, pol.MaxBufferedBytes) {
			return nil, 0, NotBufferedBufferCap, nil
		}
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, r.ContentLength, "", err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		return b, r.ContentLength, "", nil
	}
	const chunk = 32 << 10
	var b []byte
	for {
		if len(b) == cap(b) {
			grow := int64(min(max(int64(cap(b)), chunk), pol.MaxBodyBytes+1-int64(cap(b))))
			if grow <= 0 || !px.reserve(grow, pol.MaxBufferedBytes) {
				why := NotBufferedBufferCap
				if int64(len(b)) > pol.MaxBodyBytes || grow <= 0 {
					why = NotBufferedTooLarge
				}
				px.streamRest(r, b)
				return nil, held, why, nil
			}
			held += grow
			nb := make([]byte, len(b), int64(cap(b))+grow)
			copy(nb, b)
			b = nb
		}
		n, rerr := r.Body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, held, "", rerr
		}
		if int64(len(b)) > pol.MaxBodyBytes {
			px.streamRest(r, b)
			return nil, held, NotBufferedTooLarge, nil
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.TransferEncoding = nil
	if len(b) == 0 {
		return nil, held, "", nil
	}
	return b, held, "", nil
}

// streamRest puts the part of r's body already read back in front of the
// rest, to be streamed once.
func (px *Proxy) streamRest(r *http.Request, read []byte) {
	if len(read) == 0 {
		return
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(read), r.Body), r.Body}
}
