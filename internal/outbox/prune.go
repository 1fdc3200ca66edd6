package outbox

import (
	bolt "go.etcd.io/bbolt"
)

// Pruning. Queued sends stay until they are delivered, dead, unknown or
// deleted. Finished ones are kept for Get (a work notice's task_id in
// GET /outbox/<id>) and, when dead or unknown, for Retry, then pruned:
//
//   - a delivered send KeepDelivered (24 h) after its delivery;
//   - a dead or unknown send KeepDead (7 days) after it became so;
//   - and whenever more than MaxFinished (100,000) finished sends are kept,
//     or they hold more than MaxBytes, the oldest delivered ones first, then
//     the oldest dead and unknown ones, until they are within both.
//
// So the file holds at most about twice MaxBytes of records. Pruning rides
// on the commits (at most maxPrunePerCommit deletions each) and runs at
// Open; a store with no writes prunes nothing until its next write.

// prune deletes the finished sends due for pruning in tx, and returns what
// to change in the index once tx is committed (nil: nothing due).
func (s *Store) prune(tx *bolt.Tx) func() {
	s.mu.Lock()
	due := s.ix.pruneDue(s.now(), s.keepDelivered, s.keepDead, s.maxFinished, s.maxBytes)
	s.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	b := tx.Bucket(bucketSends)
	for _, e := range due {
		v := b.Get(e.id[:])
		if v == nil {
			continue
		}
		if h, err := decodeHead(v); err == nil && h.State == Queued {
			continue // retried in this very commit
		}
		if err := b.Delete(e.id[:]); err != nil {
			return nil
		}
	}
	return func() {
		for _, e := range due {
			if s.ix.fin[e.id] == e {
				s.ix.removeFinished(e.id)
			}
		}
	}
}

// pruneNow commits the prunings due, if any (at Open).
func (s *Store) pruneNow() error {
	s.mu.Lock()
	due := len(s.ix.pruneDue(s.now(), s.keepDelivered, s.keepDead, s.maxFinished, s.maxBytes))
	s.mu.Unlock()
	if due == 0 {
		return nil
	}
	return s.run(&op{apply: func(*bolt.Tx) error { return nil }})
}
