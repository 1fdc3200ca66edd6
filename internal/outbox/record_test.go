package outbox

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rawDB opens a closed store's file with bbolt directly, to change it
// behind the store's back.
func rawDB(t *testing.T, dir string, f func(b *bolt.Bucket)) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, fileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { f(tx.Bucket(bucketSends)); return nil }); err != nil {
		t.Fatal(err)
	}
}

func noSecretsIn(t *testing.T, where, text string) {
	t.Helper()
	for _, secret := range []string{testToken, testSecret, "alert 1"} {
		if strings.Contains(text, secret) {
			t.Errorf("%s holds %q", where, secret)
		}
	}
}

// TestSealedAtRest: the file holds no token, header value or body in the
// clear (while the route, which is not secret, is there to be found).
func TestSealedAtRest(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	id := put(t, s, robotSend("robot:a", 1))
	d := get(t, s, id)
	d.State, d.Answer = Dead, []byte(`{"errcode":310000,"errmsg":"sign not match `+testToken+`"}`)
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	put(t, s, robotSend("robot:a", 1))
	s.Close()
	raw, err := os.ReadFile(filepath.Join(h.opts.Dir, fileName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("/robot/send")) {
		t.Fatal("the route is not in the file: the search would find nothing")
	}
	noSecretsIn(t, "outbox.db", string(raw))
	if bytes.Contains(raw, []byte(`"msgtype"`)) || bytes.Contains(raw, []byte("application/json")) {
		t.Error("outbox.db holds a body or a header value in the clear")
	}
}

// TestRecordsThatDoNotReadBackAreDropped: a record moved under another ID,
// one whose head was altered, one sealed with values out of bounds, one
// that does not parse, one under a key that is not an ID and a nested
// bucket are each dropped at Open, counted by why, logged without a
// secret; the sound records stay.
func TestRecordsThatDoNotReadBackAreDropped(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	good := put(t, s, robotSend("robot:a", 1))
	victim := put(t, s, robotSend("robot:a", 2))
	altered := put(t, s, robotSend("robot:a", 3))
	sealer := s.sealer
	s.Close()

	goodKey, _ := parseID(good)
	victimKey, _ := parseID(victim)
	alteredKey, _ := parseID(altered)
	movedKey := rawID{0, 0, 0, 0, 0, 1, 9}
	outKey := rawID{0, 0, 0, 0, 0, 1, 10}
	rawDB(t, h.opts.Dir, func(b *bolt.Bucket) {
		// The good record copied under the victim's key, and a new one.
		v := bytes.Clone(b.Get(goodKey[:]))
		b.Put(victimKey[:], v)
		b.Put(movedKey[:], v)
		// Queued made dead in the clear head: the seal covers the head.
		a := bytes.Clone(b.Get(alteredKey[:]))
		hd, _, _, _ := splitRecord(a)
		i := bytes.Index(a, hd) + len(hd) - 3*10 // within the head's times
		a[i] ^= 1
		b.Put(alteredKey[:], a)
		// Sealed under the right key, but holding values out of bounds.
		bad := robotSend("robot:a", 4)
		bad.State, bad.Kept, bad.Updated, bad.Attempts = Queued, time.Unix(0, 0), time.Now(), maxAttempts+1
		bad.Due = bad.Kept.Add(time.Hour)
		b.Put(outKey[:], sealer.encodeUnchecked(outKey.String(), bad))
		// Not a record at all.
		garbageKey := rawID{0, 0, 0, 0, 0, 1, 11}
		b.Put(garbageKey[:], []byte("\x01garbage"))
		b.Put([]byte("not-an-id"), []byte("x"))
		b.CreateBucket([]byte("nested"))
	})

	s = h.open()
	if _, err := s.Get(good); err != nil {
		t.Fatalf("the sound record: %v", err)
	}
	for _, id := range []string{victim, altered, movedKey.String(), outKey.String()} {
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%s) of a dropped record: %v", id, err)
		}
	}
	want := map[string]int{DropSealed: 3, DropBounds: 1, DropUnreadable: 3}
	for why, n := range want {
		if got := h.obs.count(why); got != n {
			t.Errorf("dropped as %s: %d, want %d", why, got, n)
		}
	}
	logs := h.logText()
	if !strings.Contains(logs, "dropped at open") || !strings.Contains(logs, "sealed=3") {
		t.Errorf("the log does not say what was dropped:\n%s", logs)
	}
	for _, id := range []string{victim, altered, movedKey.String(), outKey.String()} {
		if !strings.Contains(logs, id) {
			t.Errorf("the log does not name the dropped send %s:\n%s", id, logs)
		}
	}
	noSecretsIn(t, "the log", logs)
	if st := s.Stats(); st.Routes["/robot/send"].Queued != 1 {
		t.Errorf("queued after the drops: %+v", st.Routes)
	}
	// They were deleted: a second open drops nothing more.
	s.Close()
	h.open()
	if got := h.obs.count(DropSealed); got != 3 {
		t.Errorf("a second open dropped more: %d sealed", got)
	}
}

// TestHeadsDropsARecordDamagedUnderIt: a queue's head damaged in the file
// while the store runs is dropped and reported by Heads, which gives the
// queue's next send instead; Heads does not fail or crash.
func TestHeadsDropsARecordDamagedUnderIt(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	first := robotSend("robot:a", 1)
	first.Route = "/robot/send-damaged-marker"
	bad := put(t, s, first)
	next := put(t, s, robotSend("robot:a", 2))
	path := filepath.Join(h.opts.Dir, fileName)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("damaged-marker")
	for off := 0; ; {
		i := bytes.Index(raw[off:], marker)
		if i < 0 {
			break
		}
		off += i
		f.WriteAt([]byte("DAMAGED"), int64(off)) // the mapped file sees it
		off += len(marker)
	}
	f.Close()
	heads, err := s.Heads(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(heads) != 1 || heads[0].ID != next {
		t.Fatalf("heads %v, want the queue's next send %s", heads, next)
	}
	if h.obs.count(DropSealed) != 1 || !strings.Contains(h.logText(), bad) {
		t.Fatalf("the damaged head was not reported: %v\n%s", h.obs.n, h.logText())
	}
	if _, err := s.Get(bad); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of the dropped head: %v", err)
	}
}

// TestFileTruncatedUnderARunningStore: the file cut short while the store
// runs (another program, a disk that failed) makes reads fail with an
// error naming the damage, not crash the process (a fault reading the
// mapped file is caught); the next Open repairs it.
func TestFileTruncatedUnderARunningStore(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	var ids []string
	for i := range 200 {
		sd := robotSend(fmt.Sprint("robot:", i%7), i)
		sd.Body = bytes.Repeat([]byte("b"), 2000)
		ids = append(ids, put(t, s, sd))
	}
	if err := os.Truncate(filepath.Join(h.opts.Dir, fileName), 8192); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ids[len(ids)-1]); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Get from a truncated file: %v, want an error saying it is damaged", err)
	}
	if _, err := s.Heads(10); err == nil {
		t.Fatal("Heads from a truncated file succeeded")
	}
	s.Close()
	s = h.open()
	if h.obs.count(DropFile) != 1 {
		t.Fatalf("the truncated file was not repaired at the next Open: %v", h.obs.n)
	}
	put(t, s, robotSend("robot:after", 1))
}

// TestOtherSecretRefused: a store sealed under another app secret, or
// another app key, is refused with ErrOtherSecret, naming the file, and
// left byte for byte as it was; under its own secret it opens with its
// sends.
func TestOtherSecretRefused(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	id := put(t, s, robotSend("robot:a", 1))
	s.Close()
	path := filepath.Join(h.opts.Dir, fileName)
	sum := func() [32]byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	before := sum()
	for name, change := range map[string]func(*Options){
		"secret":    func(o *Options) { o.AppSecret = "another-secret" },
		"app key":   func(o *Options) { o.AppKey = "anotherapp" },
		"no secret": func(o *Options) { o.AppSecret = "" },
	} {
		o := h.opts
		change(&o)
		_, err := Open(o)
		if !errors.Is(err, ErrOtherSecret) && name != "no secret" {
			t.Fatalf("%s: %v, want ErrOtherSecret", name, err)
		}
		if name == "no secret" && (err == nil || !strings.Contains(err.Error(), keyFileName)) {
			t.Fatalf("no secret for a store sealed with one: %v, want an error naming %s", err, keyFileName)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: the error does not name the file: %v", name, err)
		}
		noSecretsIn(t, "the error", err.Error())
		if sum() != before {
			t.Fatalf("%s: the file changed", name)
		}
	}
	s = h.open()
	get(t, s, id)
}

// TestNoSecretUsesAKeyFile: with no app secret the store is sealed with a
// random key in outbox.key (0600); it reopens with it, refuses a secret
// set later (ErrOtherSecret), and says so when the key file is gone.
func TestNoSecretUsesAKeyFile(t *testing.T) {
	h := newHarness(t, t.TempDir())
	h.opts.AppSecret = ""
	s := h.open()
	id := put(t, s, robotSend("robot:a", 1))
	s.Close()
	kf := filepath.Join(h.opts.Dir, keyFileName)
	fi, err := os.Stat(kf)
	if err != nil || fi.Size() != 32 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	s = h.open()
	get(t, s, id)
	s.Close()
	o := h.opts
	o.AppSecret = testSecret
	if _, err := Open(o); !errors.Is(err, ErrOtherSecret) {
		t.Fatalf("a secret set later: %v, want ErrOtherSecret", err)
	}
	if err := os.Rename(kf, kf+".bak"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(h.opts); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("key file gone: %v, want an error saying it is missing", err)
	}
	if _, err := os.Stat(kf); err == nil {
		t.Fatal("Open made a new key file for a store sealed with another")
	}
	os.WriteFile(kf, []byte("short"), 0o600)
	if _, err := Open(h.opts); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("short key file: %v", err)
	}
}

// TestNewerFormatRefused: a store written in a newer format is refused,
// not read or repaired.
func TestNewerFormatRefused(t *testing.T) {
	h := newHarness(t, t.TempDir())
	h.open().Close()
	db, err := bolt.Open(filepath.Join(h.opts.Dir, fileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("2")) })
	db.Close()
	if _, err := Open(h.opts); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer format: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(h.opts.Dir, "*.damaged-*")); len(m) != 0 {
		t.Fatal("a newer store was treated as damaged")
	}
}
