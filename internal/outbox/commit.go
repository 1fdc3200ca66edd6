package outbox

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Group commit. Every write (Put, Update, Retry, Delete, a drop) is an op
// that joins the pending list. When no commit is running, the op's own
// goroutine becomes the leader: it takes the pending ops (at most
// maxBatchOps, maxBatchBytes), applies them in one bbolt transaction and
// commits it (one write and fsync for all), then hands the lead to the
// first op that arrived meanwhile, or stops leading. So a lone write waits
// for one fsync, and writes that arrive during a commit share the next one:
// the cost of an fsync is spread over as many sends as arrive while it
// runs, with no timer (bbolt's DB.Batch waits up to 10 ms for company
// first, which caps a lone writer at about 100 sends a second). Each op's
// caller returns when the commit that carried it has.
//
// Ops apply in the leader's goroutine, in order, in one transaction, so an
// op sees the writes of those before it. An op that fails (the send is
// gone, the bounds are full) writes nothing, and the others go on. A commit
// that fails (a full disk, an I/O error) fails every op it carried and
// changes nothing: bbolt's previous state stays, and the index is changed
// only once a commit has succeeded.

const (
	maxBatchOps   = 1000
	maxBatchBytes = 64 << 20
)

type op struct {
	// apply runs in the batch's transaction (s.mu not held); when it
	// returns an error it has written nothing and reserved nothing.
	apply func(tx *bolt.Tx) error
	// done runs once the commit succeeded, undo once it failed after
	// apply succeeded; both with s.mu held. Either may be nil.
	done, undo func()
	res        error // the caller's answer once committed (ErrNotFound for a send dropped as damaged)
	size       int   // bytes written, to cap a batch

	err  error
	wake chan struct{}
	lead bool
}

// run commits o, in a batch with whatever writes arrive meanwhile.
func (s *Store) run(o *op) error {
	o.wake = make(chan struct{})
	s.cmu.Lock()
	if s.closed {
		s.cmu.Unlock()
		return ErrClosed
	}
	s.pending = append(s.pending, o)
	if s.leading {
		s.cmu.Unlock()
		<-o.wake
		if !o.lead {
			return o.result()
		}
	} else {
		s.leading = true
		s.cmu.Unlock()
	}
	s.lead(o)
	return o.result()
}

func (o *op) result() error {
	if o.err != nil {
		return o.err
	}
	return o.res
}

// lead commits a batch from the pending list (self is its first op), wakes
// its ops and hands the lead on.
func (s *Store) lead(self *op) {
	s.cmu.Lock()
	n, size := 0, 0
	for n < len(s.pending) && n < maxBatchOps && (n == 0 || size+s.pending[n].size <= maxBatchBytes) {
		size += s.pending[n].size
		n++
	}
	batch := make([]*op, n)
	copy(batch, s.pending)
	rest := copy(s.pending, s.pending[n:])
	clear(s.pending[rest:])
	s.pending = s.pending[:rest]
	s.cmu.Unlock()

	s.commit(batch)
	for _, o := range batch {
		if o != self {
			close(o.wake)
		}
	}

	s.cmu.Lock()
	if len(s.pending) > 0 {
		next := s.pending[0]
		next.lead = true
		s.cmu.Unlock()
		close(next.wake)
		return
	}
	s.leading = false
	s.idle.Broadcast()
	s.cmu.Unlock()
}

// commit applies batch in one transaction and commits it, with the
// prunings due.
func (s *Store) commit(batch []*op) {
	var applied []*op
	var pruned func()
	var took time.Duration
	err := guard(func() error {
		tx, err := s.db.Begin(true)
		if err != nil {
			return err
		}
		defer func() {
			if tx != nil {
				_ = tx.Rollback()
			}
		}()
		for _, o := range batch {
			if o.err = o.apply(tx); o.err == nil {
				applied = append(applied, o)
			}
		}
		pruned = s.prune(tx)
		if len(applied) == 0 && pruned == nil {
			return nil
		}
		if s.testHookCommit != nil {
			s.testHookCommit()
		}
		start := time.Now()
		err = tx.Commit()
		took = time.Since(start)
		tx = nil
		return err
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		werr := fmt.Errorf("outbox: writing to %s: %w", s.path, bare(err))
		for _, o := range applied {
			if o.undo != nil {
				o.undo()
			}
			o.err = werr
		}
		for _, o := range batch {
			if o.err == nil { // the op that panicked
				o.err = werr
			}
		}
		return
	}
	if len(applied) == 0 && pruned == nil {
		return
	}
	for _, o := range applied {
		if o.done != nil {
			o.done()
		}
	}
	if pruned != nil {
		pruned()
	}
	s.commits.Add(1)
	s.committed.Add(int64(len(applied)))
	s.commitNanos.Add(int64(took))
}

// errDamaged is a panic in bbolt, or a fault reading the mapped file: the
// file is damaged (or truncated under the store).
var errDamaged = errors.New("the store file is damaged")

// guard runs f, turning a panic, or a fault reading the memory-mapped
// file, into an error.
func guard(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (%v)", errDamaged, r)
		}
	}()
	return f()
}
