package outbox

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// Repair of a damaged store file. The sends that read back (they parse,
// open under this store's key and are within bounds) are copied into a
// fresh file, following the file's own tree: first from its first key
// forward until the damage, then from its last key backward until the
// damage, so one damaged page costs only the sends on it. Stale copies of
// sends in pages bbolt had freed are never read: a send delivered or
// deleted must not come back. The damaged file is then moved aside as
// outbox.db.damaged-<time> (nothing is deleted: an operator can look into
// it), and the fresh file takes its place.

func (s *Store) repair(db *bolt.DB, why error) error {
	newPath := s.path + ".new"
	fail := func(err error) error {
		if db != nil {
			db.Close()
		}
		return err
	}
	if err := os.Remove(newPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("outbox: cannot remove the unfinished repair %s: %w", newPath, bare(err)))
	}
	ndb, err := bolt.Open(newPath, 0o600, &bolt.Options{Timeout: s.lockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fail(fmt.Errorf("outbox: cannot make a fresh store file %s to repair %s: %w", newPath, s.path, bare(err)))
	}
	abandon := func(err error) error {
		ndb.Close()
		os.Remove(newPath)
		return fail(err)
	}
	if err := s.create(ndb); err != nil {
		return abandon(err)
	}
	if db == nil {
		// bbolt could not open it for writing: read what a read-only open
		// can (nothing, if both its meta pages are damaged).
		db, _ = boltOpen(s.path, true, s.lockTimeout)
	}
	sv := salvage{dropped: map[string]int{}, walked: map[rawID]bool{}}
	if db != nil {
		if err := sv.run(s, db, ndb); err != nil {
			return abandon(err)
		}
		db.Close()
		db = nil
	} else {
		sv.walkFailed = true
	}
	if sv.walkFailed {
		if err := sv.scan(s, ndb); err != nil {
			return abandon(err)
		}
	}
	if err := ndb.Close(); err != nil {
		os.Remove(newPath)
		return fmt.Errorf("outbox: cannot write the repaired store %s: %w", newPath, bare(err))
	}
	aside := s.path + ".damaged-" + time.Now().UTC().Format("20060102T150405.000Z")
	if err := os.Rename(s.path, aside); err != nil {
		return fmt.Errorf("outbox: cannot move the damaged store %s aside: %w", s.path, bare(err))
	}
	if err := os.Rename(newPath, s.path); err != nil {
		return fmt.Errorf("outbox: cannot put the repaired store in place of %s: %w", s.path, bare(err))
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("outbox: cannot sync %s: %w", s.dir, bare(err))
	}
	dropped := 0
	fields := []zap.Field{zap.String("file", s.path), zap.String("moved_aside", aside), zap.String("damage", why.Error()), zap.Int("kept", sv.kept)}
	for _, w := range []string{DropUnreadable, DropSealed, DropBounds} {
		dropped += sv.dropped[w]
		if sv.dropped[w] > 0 {
			fields = append(fields, zap.Int(w, sv.dropped[w]))
		}
	}
	if len(sv.droppedIDs) > 0 {
		fields = append(fields, zap.Strings("dropped_ids", sv.droppedIDs))
	}
	fields = append(fields, zap.Bool("damaged_pages_skipped", sv.walkFailed), zap.Int("recovered_unknown", sv.recoveredUnknown), zap.Int("recovered_finished", sv.recoveredFinished))
	msg := fmt.Sprintf("outbox: the store file was damaged: the %d sends that read back were kept in a fresh file, %d that did not were dropped (and any on damaged pages), and the damaged file was moved aside", sv.kept, dropped)
	if sv.recoveredUnknown > 0 {
		msg += fmt.Sprintf("; %d queued sends found only by scanning its pages are kept as unknown, never resent by themselves: they may have been delivered or deleted already (GET /outbox lists them; retry those to send)", sv.recoveredUnknown)
	}
	s.log.Error(msg, fields...)
	if s.obs != nil {
		s.obs.Dropped(DropFile)
		for w, n := range sv.dropped {
			for range n {
				s.obs.Dropped(w)
			}
		}
	}
	return nil
}

type salvage struct {
	kept    int
	dropped map[string]int
	// droppedIDs are the ids of the first dropped sends (at most
	// maxDroppedIDs), for the log: what a client was told was kept and is
	// gone.
	droppedIDs []string
	walkFailed bool // the walk met damage (a panic or fault) and skipped it
	walked     map[rawID]bool

	recoveredUnknown, recoveredFinished int // by the page scan

	batch      []kvPair
	batchBytes int
}

type kvPair struct{ k, v []byte }

// maxDroppedIDs bounds the ids the repair's log line names: a file of junk
// keys must not make a log line of megabytes.
const maxDroppedIDs = 100

// drop counts key k as dropped for why, and names it in the log when it is
// a send's id.
func (sv *salvage) drop(k []byte, why string) {
	sv.dropped[why]++
	if len(k) == len(rawID{}) && len(sv.droppedIDs) < maxDroppedIDs {
		sv.droppedIDs = append(sv.droppedIDs, rawID(k).String())
	}
}

func (sv *salvage) run(s *Store, old, ndb *bolt.DB) error {
	var otherSecret bool
	_ = guard(func() error {
		return old.View(func(tx *bolt.Tx) error {
			if m := tx.Bucket(bucketMeta); m != nil {
				if c := m.Get(keyCanary); c != nil && !s.sealer.canaryOpens(c) {
					otherSecret = true
				}
			}
			return nil
		})
	})
	if otherSecret {
		return fmt.Errorf("%w: %s is damaged, and was written under another app.secret or app.key (or, with no app secret, another %s): refused, and left as it is", ErrOtherSecret, s.path, keyFileName)
	}
	var writeErr error
	var last []byte // the last key the forward walk read
	take := func(k, v []byte) bool {
		if v == nil {
			sv.drop(k, DropUnreadable)
			return true
		}
		if _, err := s.sealer.decode(k, v); err != nil {
			sv.drop(k, dropWhy(err))
			return true
		}
		sv.walked[rawID(k)] = true
		sv.kept++
		writeErr = sv.add(ndb, bytes.Clone(k), bytes.Clone(v))
		return writeErr == nil
	}
	walk := func(forward bool) error {
		return guard(func() error {
			return old.View(func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketSends)
				if b == nil {
					return nil
				}
				c := b.Cursor()
				if forward {
					for k, v := c.First(); k != nil && take(k, v); k, v = c.Next() {
						last = bytes.Clone(k)
					}
					return nil
				}
				for k, v := c.Last(); k != nil && (last == nil || bytes.Compare(k, last) > 0) && take(k, v); k, v = c.Prev() {
				}
				return nil
			})
		})
	}
	if err := walk(true); errors.Is(err, errDamaged) {
		sv.walkFailed = true
		_ = walk(false)
	}
	if writeErr != nil {
		return fmt.Errorf("outbox: repairing %s: %w", s.path, writeErr)
	}
	if err := sv.flush(ndb); err != nil {
		return fmt.Errorf("outbox: repairing %s: %w", s.path, err)
	}
	return nil
}

func (sv *salvage) add(ndb *bolt.DB, k, v []byte) error {
	sv.batch = append(sv.batch, kvPair{k, v})
	sv.batchBytes += len(k) + len(v)
	if len(sv.batch) >= 1000 || sv.batchBytes >= 16<<20 {
		return sv.flush(ndb)
	}
	return nil
}

// scan is the second pass (scan.go): the newest version of each send the
// walk did not find, a queued one made Unknown.
func (sv *salvage) scan(s *Store, ndb *bolt.DB) error {
	type found struct {
		sd  *Send
		val []byte
	}
	newest := map[rawID]found{}
	err := scanPages(s.path, func(k, v []byte) {
		if len(k) != len(rawID{}) || sv.walked[rawID(k)] {
			return
		}
		sd, err := s.sealer.decode(k, v)
		if err != nil {
			return // junk, or not this store's
		}
		old, ok := newest[rawID(k)]
		if ok && (old.sd.Updated.After(sd.Updated) || old.sd.Updated.Equal(sd.Updated) && sd.State == Queued) {
			return
		}
		if sd.State != Queued {
			sd.Query, sd.Header, sd.Body, sd.Answer = "", nil, nil, nil // not needed to choose
		}
		newest[rawID(k)] = found{sd, bytes.Clone(v)}
	})
	if err != nil {
		return fmt.Errorf("outbox: scanning the damaged %s: %w", s.path, err)
	}
	now := s.now()
	for id, f := range newest {
		val := f.val
		if f.sd.State == Queued {
			sd := f.sd
			sd.State, sd.Updated = Unknown, now
			sd.Reason = "recovered from a damaged store file: it may have been delivered or deleted already; retry it to send it"
			v, err := s.sealer.encode(sd.ID, sd)
			if err != nil {
				continue
			}
			val = v
			sv.recoveredUnknown++
		} else {
			sv.recoveredFinished++
		}
		if err := sv.add(ndb, bytes.Clone(id[:]), val); err != nil {
			return fmt.Errorf("outbox: repairing %s: %w", s.path, err)
		}
	}
	if err := sv.flush(ndb); err != nil {
		return fmt.Errorf("outbox: repairing %s: %w", s.path, err)
	}
	return nil
}

func (sv *salvage) flush(ndb *bolt.DB) error {
	if len(sv.batch) == 0 {
		return nil
	}
	err := ndb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		for _, p := range sv.batch {
			if err := b.Put(p.k, p.v); err != nil {
				return err
			}
		}
		return nil
	})
	sv.batch, sv.batchBytes = sv.batch[:0], 0
	return err
}
