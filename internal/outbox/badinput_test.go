package outbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs with opts on a new temporary directory, for
// the tests of a read-only or full file system. Only root can: the others
// get "".
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		return ""
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Logf("mount -t tmpfs -o %s: %v %s", opts, err, out)
		return ""
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// readOnlyDir is a directory this process cannot write: mode 0500 for a
// user, a read-only tmpfs for root (whom modes do not stop).
func readOnlyDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		return dir
	}
	dir := mountTmpfs(t, "ro,size=1m")
	if dir == "" {
		t.Skip("root without mount: no directory root cannot write")
	}
	return dir
}

// TestDirNotWritable: an outbox.dir that cannot be written, is a file, or
// cannot be made is an Open error naming the directory and the problem in
// words; nothing is made.
func TestDirNotWritable(t *testing.T) {
	ro := readOnlyDir(t)
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, want string }{
		{ro, "is not writable"},
		{filepath.Join(ro, "outbox"), "cannot create the directory"},
		{file, "is not a directory"},
		{filepath.Join(file, "outbox"), "cannot create the directory"},
	} {
		h := newHarness(t, c.dir)
		_, err := Open(h.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("Open(%s): %v, want an error naming it and saying %q", c.dir, err, c.want)
			continue
		}
		t.Logf("Open(%s): %v", c.dir, err)
	}
	if entries, _ := os.ReadDir(ro); len(entries) != 0 {
		t.Errorf("Open left %d entries in the read-only directory", len(entries))
	}
}

// TestInUse: a second Open of a store another holds is ErrInUse after the
// lock timeout, not a hang; once the first closes, it opens.
func TestInUse(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	id := put(t, s, robotSend("q", 1))
	_, err := Open(h.opts)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "another dingproxy") {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	s.Close()
	get(t, h.open(), id)
}

// TestFullDisk: on a full file system Put returns the disk's error (not
// ErrFull, not a crash), every send kept before stays, in the running store
// and after a reopen, and Puts succeed again once there is room.
func TestFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "size=2m")
	if dir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root and must test the full disk: a small tmpfs could not be mounted")
		}
		t.Skip("needs root to mount a small tmpfs; the full disk is tested as root (CI runs as root)")
	}
	// Room to give back later.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 512<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, filepath.Join(dir, "outbox"))
	s := h.open()
	var kept []string
	var putErr error
	for i := 0; i < 10_000; i++ {
		sd := robotSend(fmt.Sprint("robot:", i%50), i)
		sd.Body = make([]byte, 4<<10)
		rand.Read(sd.Body) // does not compress: tmpfs holds it all
		id, err := s.Put(context.Background(), sd)
		if err != nil {
			putErr = err
			break
		}
		kept = append(kept, id)
	}
	if putErr == nil {
		t.Fatal("10,000 sends of 4 KiB fitted in 2 MiB")
	}
	if errors.Is(putErr, ErrFull) || !errors.Is(putErr, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk: %v, want the disk's error (ENOSPC)", putErr)
	}
	t.Logf("after %d sends kept: %v", len(kept), putErr)
	if len(kept) == 0 {
		t.Fatal("nothing fitted")
	}
	// A few more tries fail the same, and change nothing.
	for i := range 3 {
		if _, err := s.Put(context.Background(), robotSend("robot:more", i)); err == nil {
			kept = append(kept, "") // it fitted after all: fine, not lost
		}
	}
	checkAll := func(s *Store) {
		t.Helper()
		n := 0
		for _, id := range kept {
			if id == "" {
				continue
			}
			if _, err := s.Get(id); err != nil {
				t.Fatalf("kept send %s lost: %v", id, err)
			}
			n++
		}
		if got := s.Stats().Routes["/robot/send"].Queued; got < n {
			t.Fatalf("stats count %d queued, want at least %d", got, n)
		}
	}
	checkAll(s)
	s.Close()
	s = h.open()
	checkAll(s)
	if h.obs.count(DropFile)+h.obs.count(DropUnreadable)+h.obs.count(DropSealed) != 0 {
		t.Fatalf("the reopen after a full disk dropped something: %v", h.obs.n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	sd := robotSend("robot:after", 1)
	sd.Body = make([]byte, 4<<10)
	kept = append(kept, put(t, s, sd))
	s.Close()
	checkAll(h.open())
}

// checkSalvage opens a damaged store: Open succeeds, the damaged file is
// moved aside (whole), the log says so, and every send that came back is
// one of kept (ID → its number), intact: queued if the walk of the file's
// tree found it, unknown if only the page scan did. deleted are sends
// deleted before the damage: none may come back queued. It returns how
// many came back queued and unknown.
func checkSalvage(t *testing.T, h *harness, kept map[string]int, deleted []string, damagedSize int64) (queued, unknown int) {
	t.Helper()
	s := h.open()
	aside, _ := filepath.Glob(filepath.Join(h.opts.Dir, fileName+".damaged-*"))
	if len(aside) != 1 {
		t.Fatalf("damaged files moved aside: %v, want 1", aside)
	}
	if fi, err := os.Stat(aside[0]); err != nil || fi.Size() != damagedSize {
		t.Fatalf("the damaged file moved aside: %v %v, want %d bytes", fi, err, damagedSize)
	}
	if h.obs.count(DropFile) != 1 || !strings.Contains(h.logText(), "damaged") || !strings.Contains(h.logText(), aside[0]) {
		t.Fatalf("the repair was not reported: %v\n%s", h.obs.n, h.logText())
	}
	noSecretsIn(t, "the log", h.logText())
	for id, i := range kept {
		sd, err := s.Get(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(sd.Body) == 0 || sd.Body[0] != byte(i) || !strings.Contains(sd.Query, fmt.Sprint("&n=", i)) {
			t.Fatalf("send %s came back altered", id)
		}
		switch sd.State {
		case Queued:
			queued++
		case Unknown:
			if !strings.Contains(sd.Reason, "damaged") {
				t.Fatalf("a recovered send's reason: %q", sd.Reason)
			}
			unknown++
		default:
			t.Fatalf("send %s came back %s", id, sd.State)
		}
	}
	for _, id := range deleted {
		if sd, err := s.Get(id); err == nil && sd.State == Queued {
			t.Fatalf("deleted send %s came back queued", id)
		}
	}
	st := s.Stats().Routes["/robot/send"]
	if st.Queued != queued {
		t.Fatalf("stats: %d queued, %d sends read back queued", st.Queued, queued)
	}
	heads, err := s.Heads(100)
	if err != nil {
		t.Fatal(err)
	}
	if queued > 0 && len(heads) == 0 {
		t.Fatal("sends came back queued but Heads gives none")
	}
	// A put works, and the next open is clean.
	put(t, s, robotSend("robot:after", 1))
	s.Close()
	h.open()
	if h.obs.count(DropFile) != 1 {
		t.Fatal("the repaired file was repaired again")
	}
	return queued, unknown
}

// TestGarbageFile: a store file that is not a store at all (random bytes,
// too short) is moved aside, and the store starts empty; one whose meta
// pages are both zeroed (bbolt cannot open it) keeps its sends, found by
// the page scan, as unknown.
func TestGarbageFile(t *testing.T) {
	t.Run("random", func(t *testing.T) {
		h := newHarness(t, t.TempDir())
		b := make([]byte, 64<<10)
		rand.Read(b)
		os.WriteFile(filepath.Join(h.opts.Dir, fileName), b, 0o600)
		if q, u := checkSalvage(t, h, nil, nil, int64(len(b))); q+u != 0 {
			t.Fatalf("%d sends from random bytes", q+u)
		}
	})
	t.Run("meta pages zeroed", func(t *testing.T) {
		h, kept := storeWith(t, 50, 200)
		path := filepath.Join(h.opts.Dir, fileName)
		f, _ := os.OpenFile(path, os.O_WRONLY, 0)
		f.WriteAt(make([]byte, 8192), 0)
		f.Close()
		fi, _ := os.Stat(path)
		q, u := checkSalvage(t, h, kept, nil, fi.Size())
		if q != 0 || u != len(kept) {
			t.Fatalf("%d queued and %d unknown from a file with no meta page, want 0 and %d", q, u, len(kept))
		}
	})
	t.Run("short", func(t *testing.T) {
		h := newHarness(t, t.TempDir())
		os.WriteFile(filepath.Join(h.opts.Dir, fileName), []byte("not a store"), 0o600)
		checkSalvage(t, h, nil, nil, 11)
	})
}

// storeWith makes a store holding n sends (with bodies of size bytes, so
// that they span many pages) and closes it; it returns the harness and
// the sends (ID → number).
func storeWith(t *testing.T, n, size int) (*harness, map[string]int) {
	t.Helper()
	h := newHarness(t, t.TempDir())
	s := h.open()
	kept := map[string]int{}
	for i := range n {
		sd := robotSend(fmt.Sprint("robot:", i%7), i)
		sd.Body = bytes.Repeat([]byte{byte(i)}, size)
		kept[put(t, s, sd)] = i
	}
	s.Close()
	return h, kept
}

// TestTruncatedFile: a store file cut short (a copy cut off, a disk that
// lost its end) keeps the sends on the pages that remain.
func TestTruncatedFile(t *testing.T) {
	h, kept := storeWith(t, 400, 1500)
	path := filepath.Join(h.opts.Dir, fileName)
	fi, _ := os.Stat(path)
	cut := fi.Size() / 2
	if err := os.Truncate(path, cut); err != nil {
		t.Fatal(err)
	}
	q, u := checkSalvage(t, h, kept, nil, cut)
	t.Logf("from a file cut to half: %d of %d sends came back queued, %d unknown", q, len(kept), u)
	if q+u == 0 || q+u == len(kept) {
		t.Fatalf("%d of %d sends came back: want some, not all", q+u, len(kept))
	}
}

// TestDamagedPages: pages overwritten in the middle of the file (a torn
// write, a bad sector) cost the sends on them; the others come back, and
// no send deleted before the damage comes back queued (a stale copy in a
// freed page is at most unknown).
func TestDamagedPages(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	kept := map[string]int{}
	var deleted []string
	for i := range 400 {
		sd := robotSend(fmt.Sprint("robot:", i%7), i)
		sd.Body = bytes.Repeat([]byte{byte(i)}, 1500)
		id := put(t, s, sd)
		if i%2 == 0 {
			kept[id] = i
			continue
		}
		if err := s.Delete(id); err != nil { // its pages freed, maybe still holding it
			t.Fatal(err)
		}
		deleted = append(deleted, id)
	}
	s.Close()
	path := filepath.Join(h.opts.Dir, fileName)
	fi, _ := os.Stat(path)
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	junk := make([]byte, 3*4096)
	rand.Read(junk)
	at := fi.Size() / 2 / 4096 * 4096
	f.WriteAt(junk, at)
	f.Close()
	q, u := checkSalvage(t, h, kept, deleted, fi.Size())
	t.Logf("after 3 pages were overwritten at %d: %d of %d sends came back queued, %d unknown", at, q, len(kept), u)
	if q+u < len(kept)/2 {
		t.Fatalf("only %d of %d came back", q+u, len(kept))
	}
}

// TestOpenIsQuickToRefuse: the lock wait is bounded by LockTimeout (a
// second process gets an error, not a hang).
func TestOpenIsQuickToRefuse(t *testing.T) {
	h := newHarness(t, t.TempDir())
	h.open()
	h.opts.LockTimeout = 50 * time.Millisecond
	done := make(chan error, 1)
	go func() { _, err := Open(h.opts); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrInUse) {
			t.Fatalf("%v, want ErrInUse", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Open hangs on a held store")
	}
}

// TestRepairNamesDroppedSends: the repair's log names the sends it
// dropped by id, at most maxDroppedIDs of them, and never a key that is not
// an id.
func TestRepairNamesDroppedSends(t *testing.T) {
	sv := &salvage{dropped: map[string]int{}}
	var first rawID
	for i := range maxDroppedIDs + 50 {
		var k rawID
		k[14], k[15] = byte(i>>8), byte(i)
		if i == 0 {
			first = k
		}
		sv.drop(k[:], DropSealed)
	}
	sv.drop([]byte("not-an-id"), DropUnreadable)
	if got := sv.dropped[DropSealed] + sv.dropped[DropUnreadable]; got != maxDroppedIDs+51 {
		t.Fatalf("counted %d drops, want %d", got, maxDroppedIDs+51)
	}
	if len(sv.droppedIDs) != maxDroppedIDs || sv.droppedIDs[0] != first.String() {
		t.Fatalf("named %d dropped ids (first %v), want %d starting with %s", len(sv.droppedIDs), sv.droppedIDs[:1], maxDroppedIDs, first)
	}
	for _, id := range sv.droppedIDs {
		if !ValidID(id) {
			t.Fatalf("named %q, not an id", id)
		}
	}
}
