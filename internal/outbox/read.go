package outbox

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// Reading kept sends back. Every record read is opened and checked; one
// that does not read back is dropped (deleted, if it is still as it was
// read) and reported to the log and the Observer, and its reader goes on
// as if it were not there.

// Heads returns the oldest queued send of each queue, for delivery: at most
// max of them, the queues whose heads are oldest first. A head that does
// not read back is dropped (and reported), and its queue's next send is
// its head.
func (s *Store) Heads(max int) ([]*Send, error) {
	if max <= 0 {
		return nil, nil
	}
	for pass := 0; ; pass++ {
		s.mu.Lock()
		hs := s.ix.heads(max)
		s.mu.Unlock()
		var out []*Send
		var bad []badRecord
		err := s.view(func(b *bolt.Bucket) error {
			for _, h := range hs {
				v := b.Get(h.id[:])
				if v == nil {
					continue // delivered or deleted since
				}
				sd, err := s.sealer.decode(h.id[:], v)
				if err != nil {
					bad = append(bad, badRecord{key: h.id, val: bytes.Clone(v), why: dropWhy(err)})
					continue
				}
				if sd.State == Queued {
					out = append(out, sd)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(bad) == 0 || pass == 8 {
			return out, nil
		}
		if err := s.drop(bad); err != nil {
			return out, nil // dropped next time
		}
	}
}

// Expired returns the queued sends due at or before now, wherever they
// are in their queues (at most max; none being sent), and when the next
// of the others falls due (zero with none): a send is found dead on time
// even behind others.
func (s *Store) Expired(now time.Time, max int) ([]*Send, time.Time, error) {
	s.mu.Lock()
	ids, next := s.ix.expired(now, max)
	s.mu.Unlock()
	out, err := s.read(ids, false)
	return out, next, err
}

// Queue returns the oldest queued sends of queue, at most max, in their
// order (for merging). A send that does not read back ends the list there
// (and is dropped).
func (s *Store) Queue(queue string, max int) ([]*Send, error) {
	if max <= 0 {
		return nil, nil
	}
	s.mu.Lock()
	ids := s.ix.first(queue, max)
	s.mu.Unlock()
	return s.read(ids, true)
}

// read returns the queued sends ids that read back (those that do not are
// dropped), skipping any being sent; with stopAtBad, the list ends at the
// first that does not read back.
func (s *Store) read(ids []rawID, stopAtBad bool) ([]*Send, error) {
	var out []*Send
	var bad []badRecord
	err := s.view(func(b *bolt.Bucket) error {
		for _, id := range ids {
			v := b.Get(id[:])
			if v == nil {
				continue
			}
			sd, err := s.sealer.decode(id[:], v)
			if err != nil {
				bad = append(bad, badRecord{key: id, val: bytes.Clone(v), why: dropWhy(err)})
				if stopAtBad {
					return nil
				}
				continue
			}
			if sd.State == Queued && !sd.Sending {
				out = append(out, sd)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		_ = s.drop(bad)
	}
	return out, nil
}

// Get returns the kept send id (queued, delivered, dead or unknown, until
// pruned), or ErrNotFound.
func (s *Store) Get(id string) (*Send, error) {
	key, _, ok := canonicalID(id)
	if !ok {
		return nil, ErrNotFound
	}
	var sd *Send
	var bad []badRecord
	err := s.view(func(b *bolt.Bucket) error {
		v := b.Get(key[:])
		if v == nil {
			return ErrNotFound
		}
		var err error
		if sd, err = s.sealer.decode(key[:], v); err != nil {
			bad = append(bad, badRecord{key: key, val: bytes.Clone(v), why: dropWhy(err)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		_ = s.drop(bad)
		return nil, ErrNotFound
	}
	return sd, nil
}

// view reads the sends in a read transaction, guarded: a damaged file is
// an error, not a crash.
func (s *Store) view(f func(b *bolt.Bucket) error) error {
	err := guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error { return f(tx.Bucket(bucketSends)) })
	})
	switch {
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return ErrClosed
	case errors.Is(err, errDamaged):
		return fmt.Errorf("outbox: reading %s: %w", s.path, err)
	}
	return err
}

// badRecord is a record that did not read back.
type badRecord struct {
	key    rawID
	val    []byte // as read at run time: deleted only if still so
	rawKey []byte // at open: the key as stored (it may not be 16 bytes)
	bucket bool   // at open: a nested bucket, not a record
	why    string
}

// drop deletes records that did not read back, and reports them.
func (s *Store) drop(bad []badRecord) error {
	var gone []badRecord
	o := &op{}
	o.apply = func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		gone = gone[:0]
		for _, r := range bad {
			if v := b.Get(r.key[:]); v != nil && bytes.Equal(v, r.val) {
				if err := b.Delete(r.key[:]); err != nil {
					return err
				}
				gone = append(gone, r)
			}
		}
		return nil
	}
	o.done = func() {
		for _, r := range gone {
			s.ix.forget(r.key)
		}
	}
	if err := s.run(o); err != nil {
		return err
	}
	for _, r := range gone {
		s.reportDropped(r.key.String(), r.why)
	}
	return nil
}

func (s *Store) reportDropped(id, why string) {
	if why == "" {
		return
	}
	s.log.Warn("outbox: a kept send did not read back and was dropped", zap.String("id", id), zap.String("why", why))
	if s.obs != nil {
		s.obs.Dropped(why)
	}
}

// Waiting says whether queue holds a send not yet finished: queued, being
// sent, or being kept (a Put in commit). A live send to a robot whose
// queue is waiting is kept behind it, so that each robot's sends go in the
// order they came.
func (s *Store) Waiting(queue string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.ix.queues[queue]
	return q != nil && (len(q.ents) > 0 || q.bytes > 0)
}
