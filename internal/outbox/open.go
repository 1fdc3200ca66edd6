package outbox

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

const (
	fileName      = "outbox.db"
	keyFileName   = "outbox.key"
	formatVersion = "1"
)

var (
	bucketMeta = []byte("meta")
	keyVersion = []byte("version")
	keyCanary  = []byte("canary")
)

// Open opens (or creates) the store under o.Dir. Its errors name what is
// wrong in words: the directory cannot be made or written, another process
// holds the store (ErrInUse), the store was sealed under another secret
// (ErrOtherSecret: refused and left as it is). A damaged store file (it
// does not parse, is truncated, or lost its canary) is not an error: the
// sends that read back are copied into a fresh file (repair.go: a queued
// send found only by scanning the damaged pages comes back Unknown), the
// damaged one is moved aside as outbox.db.damaged-<time>, and what was
// kept and dropped is logged. Records that do not read back in a sound
// file are dropped and logged.
func Open(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("outbox: no directory given (outbox.dir is empty)")
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.KeepDelivered <= 0 {
		o.KeepDelivered = DefaultKeepDelivered
	}
	if o.KeepDead <= 0 {
		o.KeepDead = DefaultKeepDead
	}
	if o.MaxFinished <= 0 {
		o.MaxFinished = DefaultMaxFinished
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := prepareDir(o.Dir); err != nil {
		return nil, err
	}
	path := filepath.Join(o.Dir, fileName)
	secret := []byte(o.AppSecret)
	if o.AppSecret == "" {
		var err error
		if secret, err = keyFile(o.Dir, path); err != nil {
			return nil, err
		}
	}
	sl, err := newSealer(secret, o.AppKey)
	if err != nil {
		return nil, err
	}
	s := &Store{
		dir: o.Dir, path: path, sealer: sl, log: o.Logger, obs: o.Observer, now: time.Now,
		maxBytes: o.MaxBytes, keepDelivered: o.KeepDelivered, keepDead: o.KeepDead,
		maxFinished: o.MaxFinished, lockTimeout: o.LockTimeout,
	}
	s.idle = sync.NewCond(&s.cmu)
	if err := s.openFile(true); err != nil {
		return nil, err
	}
	if err := s.pruneNow(); err != nil {
		s.log.Warn("outbox: pruning finished sends at open failed", zap.Error(err))
	}
	return s, nil
}

// prepareDir makes dir if missing and checks that it is a writable
// directory.
func prepareDir(dir string) error {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return fmt.Errorf("outbox: %s is not a directory", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("outbox: cannot create the directory %s: %w", dir, bare(err))
	}
	f, err := os.CreateTemp(dir, ".writable-*")
	if err != nil {
		return fmt.Errorf("outbox: the directory %s is not writable: %w", dir, bare(err))
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("outbox: the directory %s is not writable: %w", dir, bare(err))
	}
	return nil
}

// bare is a path error's cause ("permission denied"), the path being named
// by the caller.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// keyFile returns the key sealing the store when no app secret is set: 32
// random bytes in dir/outbox.key, made with the store.
func keyFile(dir, dbPath string) ([]byte, error) {
	p := filepath.Join(dir, keyFileName)
	for range 2 {
		b, err := os.ReadFile(p)
		if err == nil {
			if len(b) != 32 {
				return nil, fmt.Errorf("outbox: the key file %s is damaged (%d bytes, not 32); with no app secret set, the store is sealed with it", p, len(b))
			}
			return b, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("outbox: cannot read the key file %s: %w", p, bare(err))
		}
		if fi, err := os.Stat(dbPath); err == nil && fi.Size() > 0 {
			return nil, fmt.Errorf("outbox: %s exists but its key file %s is missing: with no app secret set, the store is sealed with that file (restore it, or set the app secret the store was written under)", dbPath, p)
		}
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // made meanwhile: read it
		}
		if err != nil {
			return nil, fmt.Errorf("outbox: cannot create the key file %s: %w", p, bare(err))
		}
		_, err = f.Write(key)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = syncDir(dir)
		}
		if err != nil {
			os.Remove(p)
			return nil, fmt.Errorf("outbox: cannot write the key file %s: %w", p, bare(err))
		}
		return key, nil
	}
	return nil, fmt.Errorf("outbox: cannot read the key file %s", p)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// boltOpen opens path with bbolt, guarded: a panic or a fault in bbolt (a
// damaged file) is errDamaged, and the file bbolt had opened is closed.
func boltOpen(path string, readOnly bool, timeout time.Duration) (*bolt.DB, error) {
	var f *os.File
	opts := &bolt.Options{
		Timeout:      timeout,
		ReadOnly:     readOnly,
		FreelistType: bolt.FreelistMapType,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			var err error
			f, err = os.OpenFile(name, flag, perm)
			return f, err
		},
	}
	var db *bolt.DB
	err := guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if errors.Is(err, errDamaged) && f != nil {
		f.Close()
	}
	return db, err
}

// damagedOpen says whether bbolt's Open failed because of the file's
// content (not its permissions, its lock or the disk).
func damagedOpen(err error) bool {
	return errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrVersionMismatch) ||
		errors.Is(err, bolterrors.ErrChecksum) || errors.Is(err, errDamaged) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// openFile opens the store's file, repairing it once if damaged.
func (s *Store) openFile(mayRepair bool) error {
	db, err := boltOpen(s.path, false, s.lockTimeout)
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return fmt.Errorf("%w: %s is locked by another process for more than %v (another dingproxy with the same outbox.dir?)", ErrInUse, s.path, s.lockTimeout)
	case err != nil && !damagedOpen(err):
		return fmt.Errorf("outbox: cannot open %s: %w", s.path, bare(err))
	}
	why := err
	if err == nil {
		l, err := s.load(db)
		if err == nil {
			s.install(db, l)
			return nil
		}
		if !errors.Is(err, errDamaged) {
			db.Close()
			return err
		}
		why = err
	}
	if !mayRepair {
		if db != nil {
			db.Close()
		}
		return fmt.Errorf("outbox: %s is damaged even after its repair: %w", s.path, why)
	}
	if err := s.repair(db, why); err != nil {
		return err
	}
	return s.openFile(false)
}

// loaded is what load read from a sound file.
type loaded struct {
	ix       *index
	bad      []badRecord
	last     rawID
	finished []finishedRec
	// stopped are queued sends marked Sending: the process stopped while
	// they were being sent. They open as Unknown.
	stopped []*Send
}

// ReasonStopped is the reason of a send that was being sent when the
// process stopped: it may have executed, so it is not sent again.
const ReasonStopped = "the proxy stopped while this send was being sent: it may have executed, so it is not sent again"

type finishedRec struct {
	route   string
	id      rawID
	state   State
	updated time.Time
	size    int64
}

// load checks the file's format and canary (making them in a new file),
// and reads and checks every record. A file that is truncated, lost its
// canary, or makes bbolt panic or fault is errDamaged.
func (s *Store) load(db *bolt.DB) (*loaded, error) {
	fi, err := os.Stat(s.path)
	if err != nil {
		return nil, fmt.Errorf("outbox: %s: %w", s.path, bare(err))
	}
	fresh := false
	err = guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			if tx.Size() > fi.Size() {
				return fmt.Errorf("%w: truncated (%d bytes, its pages need %d)", errDamaged, fi.Size(), tx.Size())
			}
			fresh = tx.Bucket(bucketMeta) == nil && tx.Bucket(bucketSends) == nil
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if fresh {
		if err := s.create(db); err != nil {
			return nil, err
		}
	}
	l := &loaded{ix: newIndex()}
	err = guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			if err := s.checkMeta(tx); err != nil {
				return err
			}
			b := tx.Bucket(bucketSends)
			if b == nil {
				return fmt.Errorf("%w: no sends bucket", errDamaged)
			}
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				l.read(s.sealer, k, v)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// create makes a new file's buckets, format version and canary.
func (s *Store) create(db *bolt.DB) error {
	err := db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketSends); err != nil {
			return err
		}
		if err := m.Put(keyVersion, []byte(formatVersion)); err != nil {
			return err
		}
		return m.Put(keyCanary, s.sealer.canary())
	})
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("outbox: cannot create the store in %s: %w", s.path, bare(err))
	}
	return nil
}

// checkMeta checks the format version and the canary.
func (s *Store) checkMeta(tx *bolt.Tx) error {
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return fmt.Errorf("%w: no meta bucket", errDamaged)
	}
	if v := m.Get(keyVersion); string(v) != formatVersion {
		if len(v) > 0 && len(v) <= 8 && v[0] > formatVersion[0] && v[0] <= '9' {
			return fmt.Errorf("outbox: %s is in format %q, newer than this dingproxy reads (%s): refused, left as it is", s.path, v, formatVersion)
		}
		return fmt.Errorf("%w: no format version", errDamaged)
	}
	c := m.Get(keyCanary)
	if c == nil {
		return fmt.Errorf("%w: no canary", errDamaged)
	}
	if !s.sealer.canaryOpens(c) {
		return fmt.Errorf("%w: %s was written under another app.secret or app.key (or, with no app secret, another %s): refused, and left as it is; set the secret it was written under, or move it aside to start empty", ErrOtherSecret, s.path, keyFileName)
	}
	return nil
}

// read checks one record and indexes it, or notes it as bad.
func (l *loaded) read(sl *sealer, k, v []byte) {
	var id rawID
	copy(id[:], k)
	if v == nil { // a nested bucket: not the store's
		l.bad = append(l.bad, badRecord{key: id, rawKey: bytes.Clone(k), bucket: true, why: DropUnreadable})
		return
	}
	sd, err := sl.decode(k, v)
	if err != nil {
		l.bad = append(l.bad, badRecord{key: id, rawKey: bytes.Clone(k), why: dropWhy(err)})
		return
	}
	if bytes.Compare(id[:], l.last[:]) > 0 {
		l.last = id
	}
	size := int64(len(k) + len(v))
	if sd.State == Queued && sd.Sending {
		l.stopped = append(l.stopped, sd)
		return
	}
	if sd.State == Queued {
		c := charge(int(size))
		l.ix.reserve(sd.Queue, sd.Route, c)
		l.ix.addQueued(sd.Queue, sd.Route, id, sd.Kept, sd.Due, c)
		return
	}
	l.finished = append(l.finished, finishedRec{sd.Route, id, sd.State, sd.Updated, size})
}

// install makes db and what load read the store's, dropping the bad
// records.
func (s *Store) install(db *bolt.DB, l *loaded) {
	slices.SortFunc(l.finished, func(a, b finishedRec) int { return a.updated.Compare(b.updated) })
	for _, f := range l.finished {
		l.ix.addFinished(f.route, f.id, f.state, f.updated, f.size)
	}
	s.db, s.ix = db, l.ix
	s.ids.seen(l.last)
	if len(l.bad) > 0 {
		s.dropAtOpen(l.bad)
	}
	if len(l.stopped) > 0 {
		s.settleStopped(l.stopped)
	}
	if s.ix.queuedBytes > s.maxBytes {
		s.log.Warn("outbox: the queued sends hold more than outbox.max_bytes (was it lowered?): new sends are refused until they drain",
			zap.Int64("queued_bytes", s.ix.queuedBytes), zap.Int64("max_bytes", s.maxBytes))
	}
}

// settleStopped records the sends that were being sent when the process
// stopped as Unknown, durably, before anything is delivered.
func (s *Store) settleStopped(sends []*Send) {
	now := s.now()
	type rec struct {
		sd   *Send
		size int64
	}
	var done []rec
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		done = done[:0]
		for _, sd := range sends {
			nx := *sd
			nx.State, nx.Sending, nx.Reason, nx.Updated = Unknown, false, ReasonStopped, now
			key, _, _ := canonicalID(sd.ID)
			val := s.sealer.encodeUnchecked(sd.ID, &nx)
			if err := b.Put(key[:], val); err != nil {
				return err
			}
			done = append(done, rec{&nx, int64(len(key) + len(val))})
		}
		return nil
	})
	if err != nil {
		// Not rewritten: they stay marked, out of the queue (never
		// delivered), and the next open tries again.
		s.log.Error("outbox: sends that were being sent when the proxy stopped could not be marked unknown; they are held back",
			zap.Int("sends", len(sends)), zap.Error(err))
		return
	}
	for _, r := range done {
		key, _, _ := canonicalID(r.sd.ID)
		s.ix.addFinished(r.sd.Route, key, Unknown, now, r.size)
	}
	s.log.Warn("outbox: sends that were being sent when the proxy stopped are unknown (they may have executed) and are not sent again",
		zap.Int("sends", len(sends)))
}

// dropAtOpen deletes the records that did not read back, and says so.
func (s *Store) dropAtOpen(bad []badRecord) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSends)
		for _, r := range bad {
			if r.bucket {
				if err := b.DeleteBucket(r.rawKey); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
					return err
				}
				continue
			}
			if err := b.Delete(r.rawKey); err != nil {
				return err
			}
		}
		return nil
	})
	counts := map[string]int{}
	var ids []string
	for _, r := range bad {
		counts[r.why]++
		if s.obs != nil {
			s.obs.Dropped(r.why)
		}
		if !r.bucket && len(r.rawKey) == len(rawID{}) && len(ids) < maxDroppedIDs {
			ids = append(ids, rawID(r.rawKey).String())
		}
	}
	fields := []zap.Field{zap.Int("dropped", len(bad)), zap.String("file", s.path)}
	for _, why := range []string{DropUnreadable, DropSealed, DropBounds} {
		if counts[why] > 0 {
			fields = append(fields, zap.Int(why, counts[why]))
		}
	}
	if len(ids) > 0 {
		fields = append(fields, zap.Strings("dropped_ids", ids))
	}
	if err != nil {
		fields = append(fields, zap.NamedError("delete_error", err))
	}
	s.log.Warn("outbox: kept sends that did not read back were dropped at open (unreadable: damaged; sealed: altered or moved under another id; bounds: a value out of bounds)", fields...)
}
