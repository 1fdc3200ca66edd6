package outbox

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// Store is the alone-mode outbox: one bbolt file under Options.Dir. Its
// methods are safe for concurrent use.
type Store struct {
	db     *bolt.DB
	dir    string
	path   string
	sealer *sealer
	log    *zap.Logger
	obs    Observer
	ids    idGen
	now    func() time.Time

	maxBytes                int64
	keepDelivered, keepDead time.Duration
	maxFinished             int
	lockTimeout             time.Duration

	mu sync.Mutex // guards ix
	ix *index

	cmu     sync.Mutex // guards the commit queue
	idle    *sync.Cond // on cmu: no commit running
	pending []*op
	leading bool
	closed  bool

	// What the commits cost, for benchmarks.
	commits, committed, commitNanos atomic.Int64
	// testHookCommit, if set, runs in each commit before it writes.
	testHookCommit func()
}

var bucketSends = []byte("sends")

// Put keeps sd as a queued send and returns its ID. It returns nil only once
// the send is on disk (fsync'd); concurrent Puts share one fsync. It sets
// sd.ID, sd.Updated, sd.State (Queued) and sd.Kept when zero, and cuts
// sd.Reason and sd.Answer to their bounds. Errors:
// ErrFull past the bounds (MaxBytes in all, half of it per route, a
// quarter per queue),
// ErrInvalid for a send that cannot be kept as it is, or the disk's error
// (a full disk): then nothing is kept, and nothing kept before is lost.
//
// ctx is heeded until the send is handed to a commit; after that Put waits
// for the commit's outcome (one fsync), so that a caller never believes a
// kept send was not kept.
func (s *Store) Put(ctx context.Context, sd *Send) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	now := s.now()
	if sd.State == "" {
		sd.State = Queued
	}
	if sd.State != Queued {
		return "", fmt.Errorf("%w: state %q (a send is kept queued)", ErrInvalid, sd.State)
	}
	if sd.Kept.IsZero() {
		sd.Kept = now
	}
	sd.Updated = now
	sd.Reason = cut(sd.Reason, maxReason)
	sd.Answer = cutBytes(sd.Answer, MaxAnswer)
	id := s.ids.next(now)
	ids := id.String()
	val, err := s.sealer.encode(ids, sd)
	if err != nil {
		return "", err
	}
	queue, route, kept, due := sd.Queue, sd.Route, sd.Kept, sd.Due
	c := charge(len(id) + len(val))
	o := &op{size: len(val)}
	o.apply = func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		if b.Get(id[:]) != nil {
			return fmt.Errorf("outbox: the new ID %s is taken", ids) // IDs increase: never
		}
		s.mu.Lock()
		fits := s.ix.fits(queue, route, c, s.maxBytes)
		s.mu.Unlock()
		if !fits {
			return ErrFull
		}
		if err := b.Put(id[:], val); err != nil {
			return err
		}
		s.mu.Lock()
		s.ix.reserve(queue, route, c)
		s.mu.Unlock()
		return nil
	}
	o.done = func() { s.ix.addQueued(queue, route, id, kept, due, c) }
	o.undo = func() { s.ix.unreserve(queue, route, c) }
	if err := s.run(o); err != nil {
		return "", err
	}
	sd.ID = ids
	return ids, nil
}

// Update records sd's State, Attempts, Reason (cut to 1 KiB), Status and
// Answer (cut to MaxAnswer) for the queued send sd.ID, durably, and clears
// its Sending mark; the rest of
// sd is not read (a send's content never changes once kept), and Updated is
// set to now. A send that stays Queued keeps no Answer. A send that becomes
// Delivered no longer holds its Query, Header and Body (no token is kept
// longer than needed); a Dead or Unknown one keeps them for Retry. A
// Delivered, Dead or Unknown send no longer counts against MaxBytes.
// Errors: ErrNotFound, ErrNotQueued (its outcome was recorded before),
// ErrInvalid, or the disk's.
func (s *Store) Update(sd *Send) error {
	if stateCode(sd.State) == 0 {
		if _, _, ok := canonicalID(sd.ID); !ok {
			return ErrNotFound
		}
		return fmt.Errorf("%w: state %q", ErrInvalid, sd.State)
	}
	now := s.now()
	err := s.edit(sd.ID, len(sd.Answer)+len(sd.Reason), func(b *bolt.Bucket, key rawID, ids string, cur *Send, o *op) error {
		if cur.State != Queued {
			return ErrNotQueued
		}
		nx := *cur
		nx.State, nx.Attempts, nx.Status, nx.Sending = sd.State, sd.Attempts, sd.Status, false
		nx.Reason = cut(sd.Reason, maxReason)
		nx.Answer = cutBytes(sd.Answer, MaxAnswer)
		nx.Updated = now
		switch nx.State {
		case Queued:
			nx.Answer = nil
		case Delivered:
			nx.Query, nx.Header, nx.Body = "", nil, nil
		}
		size, err := s.write(b, key, ids, &nx)
		if err != nil {
			return err
		}
		if nx.State == Queued {
			o.done = func() { s.ix.recharge(cur.Queue, key, charge(int(size)), false) }
		} else {
			o.done = func() {
				s.ix.removeQueued(cur.Queue, key)
				s.ix.addFinished(cur.Route, key, nx.State, now, size)
			}
		}
		return nil
	})
	if err == nil {
		sd.Updated = now
	}
	return err
}

// Begin marks the queued send id as being sent, durably (one fsync,
// shared with concurrent writes), before an attempt goes: if the process
// stops before Update records the outcome, the next Open makes it Unknown,
// so that a send that may have executed is never sent again. Errors:
// ErrNotFound, ErrNotQueued, or the disk's.
func (s *Store) Begin(id string) error {
	now := s.now()
	return s.edit(id, 0, func(b *bolt.Bucket, key rawID, ids string, cur *Send, o *op) error {
		if cur.State != Queued {
			return ErrNotQueued
		}
		nx := *cur
		nx.Sending, nx.Updated = true, now
		size, err := s.write(b, key, ids, &nx)
		if err != nil {
			return err
		}
		o.done = func() { s.ix.recharge(cur.Queue, key, charge(int(size)), true) }
		return nil
	})
}

// Delete forgets the send id, whatever its state but one: a send its
// courier marked as being sent (ErrSending) may reach DingTalk whatever the
// store says, and is forgotten only once its outcome is recorded.
func (s *Store) Delete(id string) error { return s.delete(id, false) }

// Forget forgets the send id whatever its state, one being sent included:
// for a copy its owner holds itself (the fleet's held sends), never an
// operator's call.
func (s *Store) Forget(id string) error { return s.delete(id, true) }

func (s *Store) delete(id string, evenSending bool) error {
	key, _, ok := canonicalID(id)
	if !ok {
		return ErrNotFound
	}
	o := &op{}
	o.apply = func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		v := b.Get(key[:])
		if v == nil {
			return ErrNotFound
		}
		h, herr := decodeHead(v)
		if herr == nil && h.Sending && !evenSending {
			return ErrSending
		}
		if err := b.Delete(key[:]); err != nil {
			return err
		}
		o.done = func() {
			switch {
			case herr == nil && h.State == Queued:
				if _, found := s.ix.removeQueued(h.Queue, key); found {
					return
				}
			case herr == nil:
				if s.ix.removeFinished(key) {
					return
				}
			}
			s.ix.forget(key)
		}
		return nil
	}
	return s.run(o)
}

// Retry puts a dead or unknown send back in the queue. It keeps its ID, and
// so its place: by ID, i.e. by arrival, it is delivered before the sends
// kept after it in its queue (usually first). Its attempts are kept; its
// reason, status and answer are cleared; it is due again after as long as
// it had at first (Due − Kept), from now. Errors: ErrNotFound, ErrNotDead
// (queued or delivered), ErrFull (it does not fit in the bounds now).
func (s *Store) Retry(id string) error {
	now := s.now()
	return s.edit(id, 0, func(b *bolt.Bucket, key rawID, ids string, cur *Send, o *op) error {
		if cur.State != Dead && cur.State != Unknown {
			return ErrNotDead
		}
		nx := *cur
		nx.State, nx.Reason, nx.Status, nx.Answer, nx.Updated, nx.Sending = Queued, "", 0, nil, now, false
		nx.Due = now.Add(max(cur.Due.Sub(cur.Kept), 0))
		val, err := s.sealer.encode(ids, &nx)
		if err != nil {
			return err
		}
		c := charge(len(key) + len(val))
		s.mu.Lock()
		fits := s.ix.fits(cur.Queue, cur.Route, c, s.maxBytes)
		s.mu.Unlock()
		if !fits {
			return ErrFull
		}
		if err := b.Put(key[:], val); err != nil {
			return err
		}
		s.mu.Lock()
		s.ix.reserve(cur.Queue, cur.Route, c)
		s.mu.Unlock()
		o.done = func() {
			s.ix.removeFinished(key)
			s.ix.addQueued(cur.Queue, cur.Route, key, cur.Kept, nx.Due, c)
		}
		o.undo = func() { s.ix.unreserve(cur.Queue, cur.Route, c) }
		return nil
	})
}

// edit runs change on the send id as it stands, in one commit of size
// extra bytes: change sees its record read back (one that does not read
// back is dropped and reported, and the edit answers ErrNotFound), writes
// it, and sets what the commit does to the index once durable.
func (s *Store) edit(id string, size int, change func(b *bolt.Bucket, key rawID, ids string, cur *Send, o *op) error) error {
	key, ids, ok := canonicalID(id)
	if !ok {
		return ErrNotFound
	}
	o := &op{size: size}
	var dropped string
	o.apply = func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		cur, err := s.current(b, key, o, &dropped)
		if err != nil || cur == nil {
			return err
		}
		return change(b, key, ids, cur, o)
	}
	err := s.run(o)
	s.reportDropped(ids, dropped)
	return err
}

// write seals nx and puts it under key; size is what the record takes.
func (s *Store) write(b *bolt.Bucket, key rawID, ids string, nx *Send) (size int64, err error) {
	val, err := s.sealer.encode(ids, nx)
	if err != nil {
		return 0, err
	}
	if err := b.Put(key[:], val); err != nil {
		return 0, err
	}
	return int64(len(key) + len(val)), nil
}

// current reads the send key in a commit's transaction. A record that does
// not read back is deleted there, and the op answers ErrNotFound (*dropped
// says why); cur is then nil.
func (s *Store) current(b *bolt.Bucket, key rawID, o *op, dropped *string) (*Send, error) {
	v := b.Get(key[:])
	if v == nil {
		return nil, ErrNotFound
	}
	cur, err := s.sealer.decode(key[:], v)
	if err == nil {
		return cur, nil
	}
	if derr := b.Delete(key[:]); derr != nil {
		return nil, derr
	}
	*dropped = dropWhy(err)
	o.res = ErrNotFound
	o.done = func() { s.ix.forget(key) }
	return nil, nil
}

// Stats returns the counts by route and state, the oldest queued send's age
// by route and the bytes held.
func (s *Store) Stats() Stats {
	now := s.now()
	s.mu.Lock()
	st := Stats{
		Routes:        s.ix.stats(now),
		QueuedBytes:   s.ix.queuedBytes,
		FinishedBytes: s.ix.finBytes,
		MaxBytes:      s.maxBytes,
	}
	s.mu.Unlock()
	if fi, err := os.Stat(s.path); err == nil {
		st.FileBytes = fi.Size()
	}
	return st
}

// Close waits for the commits under way and closes the file. Writes after
// it are ErrClosed.
func (s *Store) Close() error {
	s.cmu.Lock()
	if s.closed {
		s.cmu.Unlock()
		return nil
	}
	s.closed = true
	for s.leading {
		s.idle.Wait()
	}
	s.cmu.Unlock()
	return s.db.Close()
}

// Path is the store's file.
func (s *Store) Path() string { return s.path }

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func cutBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n:n]
	}
	return b
}
