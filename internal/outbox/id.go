package outbox

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"strings"
	"sync"
	"time"
)

// A send's ID is 128 bits: the milliseconds since the Unix epoch (48 bits,
// big-endian) then 80 random bits, written as 26 characters of Crockford's
// base32 (the alphabet is in ASCII order, so the strings sort as the
// numbers do). Within a process each ID is greater than the one before,
// even within one millisecond or when the clock steps back, and a store
// starts its IDs past the greatest it holds, so IDs are in arrival order
// across restarts too; the random bits make them unique without
// coordination. On disk a send's key is the 16 bytes.

// idLen is the length of an ID's text.
const idLen = 26

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var crockfordIndex = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i, c := range []byte(crockford) {
		t[c] = int8(i)
		t[bytes.ToLower([]byte{c})[0]] = int8(i)
	}
	return t
}()

type rawID [16]byte

// String is the ID's text: 26 characters, the first at most '7'.
func (id rawID) String() string {
	hi, lo := binary.BigEndian.Uint64(id[:8]), binary.BigEndian.Uint64(id[8:])
	var out [idLen]byte
	for i := idLen - 1; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// parseID reads an ID's text (either case); ok is false for anything else.
func parseID(s string) (id rawID, ok bool) {
	if len(s) != idLen {
		return id, false
	}
	var hi, lo uint64
	for i := 0; i < idLen; i++ {
		v := crockfordIndex[s[i]]
		if v < 0 {
			return id, false
		}
		if i == 0 && v > 7 {
			return id, false // past 128 bits
		}
		hi = hi<<5 | lo>>59
		lo = lo<<5 | uint64(v)
	}
	binary.BigEndian.PutUint64(id[:8], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return id, true
}

// ValidID says whether s is an ID's text, as Put gives them.
func ValidID(s string) bool {
	_, ok := parseID(s)
	return ok
}

// canonicalID is s in the case Put gives it, if s is an ID.
func canonicalID(s string) (rawID, string, bool) {
	id, ok := parseID(s)
	if !ok {
		return id, "", false
	}
	return id, strings.ToUpper(s), true
}

// idGen gives increasing IDs.
type idGen struct {
	mu   sync.Mutex
	last rawID
}

// seen makes the next IDs greater than id (the greatest a store holds).
func (g *idGen) seen(id rawID) {
	g.mu.Lock()
	if bytes.Compare(id[:], g.last[:]) > 0 {
		g.last = id
	}
	g.mu.Unlock()
}

// next returns a new ID for now: its time and random bits, or, when that is
// not greater than the last one given (the same millisecond, a clock that
// stepped back), the last one plus a random step of at most 2^32.
func (g *idGen) next(now time.Time) rawID {
	var id rawID
	ms := uint64(now.UnixMilli())
	binary.BigEndian.PutUint16(id[:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(id[2:6], uint32(ms))
	_, _ = rand.Read(id[6:]) // crypto/rand does not fail on supported platforms
	g.mu.Lock()
	defer g.mu.Unlock()
	if bytes.Compare(id[:], g.last[:]) <= 0 {
		id = g.last
		lo := binary.BigEndian.Uint64(id[8:])
		var r [4]byte
		_, _ = rand.Read(r[:])
		step := uint64(binary.BigEndian.Uint32(r[:])) + 1
		sum := lo + step
		binary.BigEndian.PutUint64(id[8:], sum)
		if sum < lo { // carry
			hi := binary.BigEndian.Uint64(id[:8]) + 1
			binary.BigEndian.PutUint64(id[:8], hi)
		}
	}
	g.last = id
	return id
}
