package outbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"
)

// A record is a send's key (its 16-byte ID) and value:
//
//	version (1 byte) | uvarint len(head) | head | nonce (12) | AES-GCM(secret)
//	head:   queue route method path (each uvarint length + bytes), state
//	        (1 byte), flags (1 byte: 1 sending), attempts, status
//	        (uvarints), reason, kept, due, updated (varint Unix nanoseconds)
//	secret: query, header (uvarint count, then each name and its values),
//	        body, answer, facts
//
// The secret part is sealed under a key derived from the app secret
// (HKDF-SHA256, the app key in its info) with associated data naming the
// outbox, the send's ID and the whole head: a record moved under another ID,
// or whose head was altered, does not open.

// hkdfInfo names what the derived key is for, and its version.
const hkdfInfo = "dingproxy outbox v1"

const recordVersion = 1

// Bounds of a kept send, checked when it is kept and when it is read back.
const (
	MaxAnswer       = 64 << 10 // DingTalk's answer is cut to this
	maxReason       = 1 << 10  // the reason is cut to this
	maxName         = 1 << 10  // queue and route
	maxMethod       = 32
	maxPath         = 16 << 10
	maxQuery        = 64 << 10
	maxHeaderBytes  = 256 << 10
	maxHeaderNames  = 256
	maxHeaderValues = 64 // per name
	maxBody         = 64 << 20
	maxAttempts     = 1 << 20
	maxFacts        = 4 << 10
	maxSpan         = 400 * 24 * time.Hour // between kept and due
)

var (
	minTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// The ways a record fails when read back; each is a Drop* word.
var (
	errUnreadable = errors.New(DropUnreadable)
	errSealed     = errors.New(DropSealed)
	errBounds     = errors.New(DropBounds)
)

// dropWhy is the Drop* word for a record's error.
func dropWhy(err error) string {
	switch {
	case errors.Is(err, errSealed):
		return DropSealed
	case errors.Is(err, errBounds):
		return DropBounds
	}
	return DropUnreadable
}

type sealer struct{ aead cipher.AEAD }

func newSealer(secret []byte, appKey string) (*sealer, error) {
	key, err := hkdf.Key(sha256.New, secret, nil, hkdfInfo+"\x00"+appKey, 32)
	if err != nil {
		return nil, fmt.Errorf("outbox: derive the sealing key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("outbox: cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("outbox: cipher: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func recordAD(id string, head []byte) []byte {
	ad := make([]byte, 0, len(hkdfInfo)+len(id)+len(head)+16)
	ad = append(ad, hkdfInfo+"\x00record\x00"...)
	ad = append(ad, id...)
	ad = append(ad, 0)
	return append(ad, head...)
}

// The canary, sealed when the store is created: a store whose canary does
// not open was sealed under another secret.
var (
	canaryAD    = []byte(hkdfInfo + "\x00canary")
	canaryPlain = []byte("dingproxy outbox canary")
)

func (s *sealer) seal(plain, ad []byte, dst []byte) []byte {
	n := s.aead.NonceSize()
	start := len(dst)
	dst = append(dst, make([]byte, n)...)
	if _, err := rand.Read(dst[start:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return s.aead.Seal(dst, dst[start:start+n], plain, ad)
}

func (s *sealer) open(sealed, ad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, errSealed
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, errSealed
	}
	return plain, nil
}

func (s *sealer) canary() []byte { return s.seal(canaryPlain, canaryAD, nil) }

func (s *sealer) canaryOpens(v []byte) bool {
	p, err := s.open(v, canaryAD)
	return err == nil && string(p) == string(canaryPlain)
}

// flagSending marks a queued send Begin marked as being sent.
const flagSending = 1

var stateCodes = [...]State{1: Queued, 2: Delivered, 3: Dead, 4: Unknown}

func stateCode(st State) byte {
	for i, s := range stateCodes {
		if i > 0 && s == st {
			return byte(i)
		}
	}
	return 0
}

func appendBytes(b []byte, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encode returns the record's value for sd under id (sd is checked first).
func (s *sealer) encode(id string, sd *Send) ([]byte, error) {
	if err := check(sd); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return s.encodeUnchecked(id, sd), nil
}

// encodeUnchecked is encode without the bounds check.
func (s *sealer) encodeUnchecked(id string, sd *Send) []byte {
	head := make([]byte, 0, 64+len(sd.Queue)+len(sd.Route)+len(sd.Path)+len(sd.Reason))
	head = appendString(head, sd.Queue)
	head = appendString(head, sd.Route)
	head = appendString(head, sd.Method)
	head = appendString(head, sd.Path)
	head = append(head, stateCode(sd.State))
	var flags byte
	if sd.Sending {
		flags |= flagSending
	}
	head = append(head, flags)
	head = binary.AppendUvarint(head, uint64(sd.Attempts))
	head = binary.AppendUvarint(head, uint64(sd.Status))
	head = appendString(head, sd.Reason)
	head = binary.AppendVarint(head, sd.Kept.UnixNano())
	head = binary.AppendVarint(head, sd.Due.UnixNano())
	head = binary.AppendVarint(head, sd.Updated.UnixNano())

	plain := make([]byte, 0, 40+len(sd.Query)+len(sd.Body)+len(sd.Answer)+len(sd.Facts)+headerSize(sd.Header))
	plain = appendString(plain, sd.Query)
	plain = binary.AppendUvarint(plain, uint64(len(sd.Header)))
	for name, vs := range sd.Header {
		plain = appendString(plain, name)
		plain = binary.AppendUvarint(plain, uint64(len(vs)))
		for _, v := range vs {
			plain = appendString(plain, v)
		}
	}
	plain = appendBytes(plain, sd.Body)
	plain = appendBytes(plain, sd.Answer)
	plain = appendBytes(plain, sd.Facts)

	v := make([]byte, 0, 1+binary.MaxVarintLen64+len(head)+len(plain)+s.aead.NonceSize()+s.aead.Overhead())
	v = append(v, recordVersion)
	v = binary.AppendUvarint(v, uint64(len(head)))
	v = append(v, head...)
	return s.seal(plain, recordAD(id, v), v)
}

// reader reads a record's fields, each within its bound; the first failure
// sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errUnreadable
	}
}

func (r *reader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(max int) []byte {
	n := r.uvarint(uint64(max))
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string(max int) string { return string(r.bytes(max)) }

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail()
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// splitRecord returns a value's head, whole prefix (version to head) and
// sealed part.
func splitRecord(v []byte) (head, prefix, sealed []byte, err error) {
	if len(v) < 2 || v[0] != recordVersion {
		return nil, nil, nil, errUnreadable
	}
	r := reader{b: v[1:]}
	n := r.uvarint(uint64(len(v)))
	if r.err != nil || n > uint64(len(r.b)) {
		return nil, nil, nil, errUnreadable
	}
	end := len(v) - len(r.b) + int(n)
	return v[len(v)-len(r.b) : end], v[:end], v[end:], nil
}

// decodeHead reads a value's head only, unopened (no secret part): for
// pruning and deleting, which need no more.
func decodeHead(v []byte) (*Send, error) {
	head, _, _, err := splitRecord(v)
	if err != nil {
		return nil, err
	}
	return parseHead(head)
}

func parseHead(head []byte) (*Send, error) {
	r := reader{b: head}
	sd := &Send{}
	sd.Queue = r.string(maxName)
	sd.Route = r.string(maxName)
	sd.Method = r.string(maxMethod)
	sd.Path = r.string(maxPath)
	code := r.byte()
	flags := r.byte()
	sd.Attempts = int(r.uvarint(maxAttempts))
	sd.Status = int(r.uvarint(999))
	sd.Reason = r.string(maxReason)
	sd.Kept = time.Unix(0, r.varint())
	sd.Due = time.Unix(0, r.varint())
	sd.Updated = time.Unix(0, r.varint())
	if r.err != nil || len(r.b) != 0 {
		return nil, errUnreadable
	}
	if int(code) >= len(stateCodes) || code == 0 {
		return nil, fmt.Errorf("%w: state %d", errBounds, code)
	}
	sd.State = stateCodes[code]
	if flags&^flagSending != 0 || flags&flagSending != 0 && sd.State != Queued {
		return nil, fmt.Errorf("%w: flags %#x in state %s", errBounds, flags, sd.State)
	}
	sd.Sending = flags&flagSending != 0
	return sd, nil
}

// decode reads, opens and checks the record key, v. The seal is opened
// first: a record altered or moved is errSealed; one that opens was
// written by this store, so a field that then does not parse or is past
// its bound is errBounds.
func (s *sealer) decode(key, v []byte) (*Send, error) {
	if len(key) != len(rawID{}) {
		return nil, errUnreadable
	}
	id := rawID(key).String()
	head, prefix, sealed, err := splitRecord(v)
	if err != nil {
		return nil, err
	}
	plain, err := s.open(sealed, recordAD(id, prefix))
	if err != nil {
		return nil, err
	}
	sd, err := parseHead(head)
	if err != nil {
		return nil, fmt.Errorf("%w: the head does not parse within its bounds", errBounds)
	}
	r := reader{b: plain}
	sd.ID = id
	sd.Query = r.string(maxQuery)
	names := r.uvarint(maxHeaderNames)
	if names > 0 && r.err == nil {
		sd.Header = make(http.Header, names)
		for range names {
			name := r.string(maxHeaderBytes)
			n := r.uvarint(maxHeaderValues)
			if r.err != nil {
				break
			}
			vs := make([]string, 0, n)
			for range n {
				vs = append(vs, r.string(maxHeaderBytes))
			}
			sd.Header[name] = vs
		}
	}
	sd.Body = r.bytes(maxBody)
	sd.Answer = r.bytes(MaxAnswer)
	sd.Facts = r.bytes(maxFacts)
	if r.err != nil || len(r.b) != 0 {
		// Sealed by this store yet not in its format: bounds.
		return nil, fmt.Errorf("%w: the sealed part does not parse", errBounds)
	}
	if len(sd.Body) == 0 {
		sd.Body = nil
	}
	if len(sd.Answer) == 0 {
		sd.Answer = nil
	}
	if len(sd.Facts) == 0 {
		sd.Facts = nil
	}
	if err := check(sd); err != nil {
		return nil, fmt.Errorf("%w: %v", errBounds, err)
	}
	return sd, nil
}

func headerSize(h http.Header) int {
	n := 0
	for name, vs := range h {
		n += len(name)
		for _, v := range vs {
			n += len(v)
		}
	}
	return n
}

// check says what is out of bounds in sd, if anything.
func check(sd *Send) error {
	bad := fmt.Errorf
	switch {
	case sd.Queue == "" || len(sd.Queue) > maxName:
		return bad("queue of %d bytes (1 to %d)", len(sd.Queue), maxName)
	case sd.Route == "" || len(sd.Route) > maxName:
		return bad("route of %d bytes (1 to %d)", len(sd.Route), maxName)
	case !utf8.ValidString(sd.Route):
		return bad("route not UTF-8")
	case sd.Method == "" || len(sd.Method) > maxMethod:
		return bad("method of %d bytes (1 to %d)", len(sd.Method), maxMethod)
	case len(sd.Path) > maxPath:
		return bad("path of %d bytes (at most %d)", len(sd.Path), maxPath)
	case len(sd.Query) > maxQuery:
		return bad("query of %d bytes (at most %d)", len(sd.Query), maxQuery)
	case len(sd.Header) > maxHeaderNames:
		return bad("%d header names (at most %d)", len(sd.Header), maxHeaderNames)
	case headerSize(sd.Header) > maxHeaderBytes:
		return bad("headers of %d bytes (at most %d)", headerSize(sd.Header), maxHeaderBytes)
	case len(sd.Body) > maxBody:
		return bad("body of %d bytes (at most %d)", len(sd.Body), maxBody)
	case len(sd.Facts) > maxFacts:
		return bad("facts of %d bytes (at most %d)", len(sd.Facts), maxFacts)
	case sd.Sending && sd.State != Queued:
		return bad("sending in state %s", sd.State)
	case len(sd.Answer) > MaxAnswer:
		return bad("answer of %d bytes (at most %d)", len(sd.Answer), MaxAnswer)
	case len(sd.Reason) > maxReason:
		return bad("reason of %d bytes (at most %d)", len(sd.Reason), maxReason)
	case stateCode(sd.State) == 0:
		return bad("state %q", sd.State)
	case sd.Attempts < 0 || sd.Attempts > maxAttempts:
		return bad("%d attempts (0 to %d)", sd.Attempts, maxAttempts)
	case sd.Status != 0 && (sd.Status < 100 || sd.Status > 999):
		return bad("HTTP status %d", sd.Status)
	case !inReason(sd.Kept) || !inReason(sd.Due) || !inReason(sd.Updated):
		return bad("a time out of reason (kept %v, due %v, updated %v)", sd.Kept.UTC(), sd.Due.UTC(), sd.Updated.UTC())
	case sd.Due.Sub(sd.Kept) > maxSpan || sd.Kept.Sub(sd.Due) > maxSpan:
		return bad("due %v from kept (at most %v either way)", sd.Due.Sub(sd.Kept), maxSpan)
	}
	for _, vs := range sd.Header {
		if len(vs) > maxHeaderValues {
			return bad("%d values of one header (at most %d)", len(vs), maxHeaderValues)
		}
	}
	return nil
}

func inReason(t time.Time) bool { return !t.Before(minTime) && t.Before(maxTime) }
