package outbox

import (
	"errors"
	"time"
)

// What the fleet's shared outbox (internal/fleet) takes from the store: the
// same record format, sealed the same way, so that a send kept in Redis is
// as safe and as checked as one kept on disk.

// ErrAppSecret: a Sealer needs the app secret (there is none in
// pass-through mode).
var ErrAppSecret = errors.New("outbox: sealing a send for the fleet needs the app secret")

// Sealer seals and opens kept sends as the store does: AES-256-GCM under a
// key derived from the app key and secret, with the send's ID and the
// record's head as associated data.
type Sealer struct{ s *sealer }

// NewSealer is the store's sealing under appKey and appSecret.
func NewSealer(appKey, appSecret string) (*Sealer, error) {
	if appSecret == "" {
		return nil, ErrAppSecret
	}
	s, err := newSealer([]byte(appSecret), appKey)
	if err != nil {
		return nil, err
	}
	return &Sealer{s: s}, nil
}

// Seal is sd's record under id, sd checked first against the store's bounds
// (ErrInvalid) and sd.Reason and sd.Answer cut to theirs.
func (x *Sealer) Seal(id string, sd *Send) ([]byte, error) {
	if _, _, ok := canonicalID(id); !ok {
		return nil, ErrNotFound
	}
	sd.Reason = cut(sd.Reason, maxReason)
	sd.Answer = cutBytes(sd.Answer, MaxAnswer)
	return x.s.encode(id, sd)
}

// Open reads, opens and checks the record v kept under id, as the store
// does; an error is one of DropUnreadable, DropSealed or DropBounds
// (DropReason names it).
func (x *Sealer) Open(id string, v []byte) (*Send, error) {
	key, _, ok := canonicalID(id)
	if !ok {
		return nil, errUnreadable
	}
	return x.s.decode(key[:], v)
}

// Head reads a record's head only, unopened and so unauthenticated: its
// queue, route, state, times and sizes, for counting.
func Head(v []byte) (*Send, error) { return decodeHead(v) }

// DropReason is the Drop* word for an error of Open or Head.
func DropReason(err error) string { return dropWhy(err) }

// IDs gives send IDs as Put does: unique without coordination, and each
// greater than the one before.
type IDs struct{ g idGen }

// Next is a new ID.
func (i *IDs) Next(now time.Time) string { return i.g.next(now).String() }

// CanonicalID is id in the case Put gives it; ok is false when id is not
// an ID.
func CanonicalID(id string) (string, bool) {
	_, s, ok := canonicalID(id)
	return s, ok
}

// Canary is a value sealed under this key that only this key opens: the
// store keeps one in its file, and the fleet's outbox one in Redis, to tell
// sends sealed under another app secret from damaged ones.
func (x *Sealer) Canary() []byte { return x.s.canary() }

// CanaryOpens says whether v is a canary sealed under this key.
func (x *Sealer) CanaryOpens(v []byte) bool { return x.s.canaryOpens(v) }
