package fleet

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// sharedOutbox is a shared outbox on srv over a local store of its own; its
// lease and reads are driven by the test (Start is not called).
func sharedOutbox(t *testing.T, url string, maxBytes int64, errs *errCounts) *Outbox {
	t.Helper()
	f := newFleet(t, url, testSecret, errs)
	st, err := outbox.Open(outbox.Options{Dir: filepath.Join(t.TempDir(), "outbox"), AppKey: testKey, AppSecret: testSecret,
		MaxBytes: maxBytes, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	x, err := f.NewOutbox(OutboxOptions{Local: st, MaxBytes: maxBytes, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	waitUp(t, f)
	return x
}

func waitUp(t *testing.T, f *Fleet) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f.Up() {
		if time.Now().After(deadline) {
			t.Fatal("Redis not up")
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func kept(queue string, body int) *outbox.Send {
	return &outbox.Send{Queue: queue, Route: "/topapi/x", Method: http.MethodPost, Path: "/topapi/x",
		Query: "access_token=t", Body: make([]byte, body), Due: time.Now().Add(time.Hour)}
}

// A holder whose lease another proxy took can neither mark nor record a
// send: the new holder claims the pending entry, finds the mark the old
// one left (unknown), and its own writes go through.
func TestFleetOutboxFencedTakeOver(t *testing.T) {
	srv := redistest.Start(t)
	a := sharedOutbox(t, srv.URL(), 0, nil)
	b := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	b.lease()
	if !a.Holding() || b.Holding() {
		t.Fatalf("holding: a %v, b %v; want a only", a.Holding(), b.Holding())
	}
	if hs, _ := b.Heads(10); len(hs) != 0 {
		t.Fatalf("a proxy without the lease has %d heads", len(hs))
	}
	id, err := b.Put(context.Background(), kept("q", 10)) // kept by any proxy
	if err != nil {
		t.Fatal(err)
	}
	a.pull()
	hs, err := a.Heads(10)
	if err != nil || len(hs) != 1 || hs[0].ID != id {
		t.Fatalf("the holder's heads: %v %v", hs, err)
	}
	if err := a.Begin(id); err != nil {
		t.Fatal(err)
	}
	// a stalls past its lease; b takes it.
	if _, err := srv.Do("DEL", a.kLease); err != nil {
		t.Fatal(err)
	}
	b.lease()
	if !b.Holding() {
		t.Fatal("b did not take the free lease")
	}
	done := *hs[0]
	done.State = outbox.Delivered
	if err := a.Update(&done); !errors.Is(err, errLease) {
		t.Fatalf("the old holder's Update = %v, want errLease", err)
	}
	if err := a.Begin(id); err == nil {
		t.Fatal("the old holder marked a send after losing its lease")
	}
	hs, err = b.Heads(10)
	if err != nil || len(hs) != 1 || !hs[0].Sending {
		t.Fatalf("the new holder's heads: %+v %v; want the send marked as being sent", hs, err)
	}
	u := *hs[0]
	u.State = outbox.Unknown
	if err := b.Update(&u); err != nil {
		t.Fatal(err)
	}
	sd, err := a.Get(id)
	if err != nil || sd.State != outbox.Unknown {
		t.Fatalf("the send as any proxy reads it: %+v %v; want unknown", sd, err)
	}
	if n, _ := srv.Do("XLEN", a.kStream); n != "0" {
		t.Errorf("the stream holds %s entries once the send is finished", n)
	}
	if n, _ := srv.Do("XPENDING", a.kStream, outboxGroup); n[:1] != "0" {
		t.Errorf("pending entries left: %s", n)
	}
}

// outbox.max_bytes and the per-queue share hold across proxies: what one
// proxy kept counts against what another may keep; a finished send gives
// its share back; a counter replaced with junk is rebuilt, not zeroed.
func TestFleetOutboxBoundsShared(t *testing.T) {
	srv := redistest.Start(t)
	errs := &errCounts{}
	const max = 16 << 10 // a queue's share: 4 KiB
	a := sharedOutbox(t, srv.URL(), max, errs)
	b := sharedOutbox(t, srv.URL(), max, nil)
	var ids []string
	for i, x := range []*Outbox{a, b, a} {
		id, err := x.Put(context.Background(), kept("q", 1500))
		if i < 2 && err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if i == 2 && !errors.Is(err, outbox.ErrFull) {
			t.Fatalf("a third 1.6 KiB send in a 4 KiB share: %v, want ErrFull", err)
		}
		if err == nil {
			ids = append(ids, id)
		}
	}
	if _, err := b.Put(context.Background(), kept("other", 1500)); err != nil {
		t.Fatalf("another queue is not full: %v", err)
	}
	// Junk in the counters: rebuilt from the charges, so still full.
	if _, err := srv.Do("HSET", a.kBytes, "all", "junk"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(context.Background(), kept("q", 1500)); !errors.Is(err, outbox.ErrFull) {
		t.Fatalf("after junk in the counters: %v, want ErrFull", err)
	}
	if errs.get(OpOutbox) == 0 {
		t.Error("the junk counter was not counted")
	}
	// Delivered: its share is given back.
	a.lease()
	a.pull()
	hs, _ := a.Queue("q", 10)
	if len(hs) != 2 || hs[0].ID != ids[0] || hs[1].ID != ids[1] {
		t.Fatalf("queue q: %v, want %v in order", hs, ids)
	}
	if err := a.Begin(ids[0]); err != nil {
		t.Fatal(err)
	}
	d := *hs[0]
	d.State = outbox.Delivered
	if err := a.Update(&d); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(context.Background(), kept("q", 1500)); err != nil {
		t.Fatalf("after a delivery: %v", err)
	}
}

// A keep whose answer from Redis is lost, and whose settling does not get
// through for a second either, is kept here, held: the deferred answer is
// right (the send is kept), and no courier sees the local copy until
// Redis answers. Then exactly one copy is left to deliver: Redis's (the
// keep ran late) or the local one (the tombstone is written: it never
// will). Stalled by SIGSTOP, the keep and the settling run once Redis goes
// on, in either order; stalled by CLIENT PAUSE WRITE, the keep never runs
// (its connection is gone when Redis would run it).
func TestFleetOutboxKeepNotKnown(t *testing.T) {
	for _, tc := range []struct {
		name          string
		stall, resume func(t *testing.T, srv *redistest.Server)
		wantRedis     string // "1" kept in Redis, "0" kept here, "" either
	}{
		{"stopped", func(t *testing.T, srv *redistest.Server) {
			if err := srv.Pause(); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, srv *redistest.Server) {
			if err := srv.Resume(); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"writes paused", func(t *testing.T, srv *redistest.Server) {
			if _, err := srv.Do("CLIENT", "PAUSE", "60000", "WRITE"); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, srv *redistest.Server) {
			if _, err := srv.Do("CLIENT", "UNPAUSE"); err != nil {
				t.Fatal(err)
			}
		}, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			x := sharedOutbox(t, srv.URL(), 0, nil)
			x.lease()
			if !x.Holding() {
				t.Fatal("no lease")
			}
			tc.stall(t, srv)
			resumed := false
			defer func() {
				if !resumed {
					tc.resume(t, srv)
				}
			}()
			s := kept("q", 10)
			s.Body = []byte("the one")
			id, err := x.Put(context.Background(), s)
			if err != nil {
				tc.resume(t, srv)
				resumed = true
				waitUp(t, x.f)
				n, _ := srv.Do("HLEN", x.kQueued)
				t.Fatalf("Put = %v (answered as without defer); Redis holds %s queued sends", err, n)
			}
			sd, err := x.local.Get(id)
			if err != nil || !sd.Sending || sd.State != outbox.Queued {
				t.Fatalf("kept here as %+v, %v; want queued and held (marked)", sd, err)
			}
			if hs, _ := x.Heads(10); len(hs) != 0 {
				t.Fatalf("a held send is a head: %+v", hs[0])
			}
			if ex, _, _ := x.Expired(time.Now().Add(2*time.Hour), 10); len(ex) != 0 {
				t.Fatalf("a held send is found expired: %+v", ex[0])
			}
			tc.resume(t, srv)
			resumed = true
			deadline := time.Now().Add(10 * time.Second)
			for {
				x.settleHeld(true)
				x.mu.Lock()
				n := len(x.held)
				x.mu.Unlock()
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the held send was not settled within 10 s")
				}
				time.Sleep(20 * time.Millisecond) // polling with a deadline
			}
			waitUp(t, x.f)
			inRedis, err := srv.Do("HLEN", x.kQueued)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("queued in Redis after settling: %s", inRedis)
			if tc.wantRedis != "" && inRedis != tc.wantRedis {
				t.Errorf("%s queued in Redis, want %s", inRedis, tc.wantRedis)
			}
			_, lerr := x.local.Get(id)
			switch inRedis {
			case "1":
				if !errors.Is(lerr, outbox.ErrNotFound) {
					t.Errorf("kept in Redis, and the local copy is still there (%v)", lerr)
				}
			case "0":
				if lerr != nil {
					t.Errorf("not kept in Redis, and the local copy is gone: %v", lerr)
				}
			default:
				t.Fatalf("%s queued in Redis", inRedis)
			}
			// Exactly one copy to deliver, for the holder of the lease.
			x.lease()
			x.pull()
			hs, err := x.Heads(10)
			if err != nil || len(hs) != 1 || string(hs[0].Body) != "the one" || hs[0].Sending {
				t.Fatalf("heads %+v %v; want the send once, to deliver", hs, err)
			}
			if q, _ := x.Queue("q", 10); len(q) != 1 {
				t.Errorf("queue q holds %d sends, want 1", len(q))
			}
		})
	}
}

// An outcome goes to the store its send was marked in, even when the
// holder's index was cleared meanwhile: a lease taken again records it
// (the index is read again after the outcome), and a lease lost fails the
// fenced write (the mark stays, for the next holder to make unknown).
func TestFleetOutboxOutcomeAfterIndexCleared(t *testing.T) {
	srv := redistest.Start(t)
	a := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	ids := putN(t, a, 2, 10)
	a.pull()
	hs, err := a.Queue("q", 10)
	if err != nil || len(hs) != 2 {
		t.Fatalf("queue q: %v %v", hs, err)
	}
	// Taken again mid-delivery: takeOver starts by clearing the index.
	if err := a.Begin(ids[0]); err != nil {
		t.Fatal(err)
	}
	a.resetIndex()
	done := *hs[0]
	done.State = outbox.Delivered
	if err := a.Update(&done); err != nil {
		t.Fatalf("Update while the index was read again: %v", err)
	}
	if sd, err := a.Get(ids[0]); err != nil || sd.State != outbox.Delivered || sd.Sending {
		t.Fatalf("the send in Redis: %+v %v; want delivered", sd, err)
	}
	if n, _ := srv.Do("XLEN", a.kStream); n != "1" {
		t.Errorf("the stream holds %s entries, want 1 (the finished send's acknowledged and deleted)", n)
	}
	// Lost mid-delivery: the fenced write fails; the mark stays.
	a.takeOver() // the index read again (the pending entries claimed)
	if a.entry(ids[1]) == nil {
		t.Fatal("the queued send is not indexed after a take-over")
	}
	if err := a.Begin(ids[1]); err != nil {
		t.Fatal(err)
	}
	a.lose()
	done = *hs[1]
	done.State = outbox.Delivered
	if err := a.Update(&done); !errors.Is(err, errLease) {
		t.Fatalf("Update after the lease was lost = %v, want errLease", err)
	}
	if sd, err := a.Get(ids[1]); err != nil || sd.State != outbox.Queued || !sd.Sending {
		t.Fatalf("the send in Redis: %+v %v; want queued, marked as being sent", sd, err)
	}
}

// Entries handed to the holder whose records could not be read (an error
// in Redis's reply that does not make Redis down) are read again from
// this proxy's own pending entries at the next pull, not left there.
func TestFleetOutboxRereadsOwnPending(t *testing.T) {
	srv := redistest.Start(t)
	a := sharedOutbox(t, srv.URL(), 0, nil)
	b := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	ids := putN(t, b, 3, 10)
	must := func(args ...string) {
		t.Helper()
		if _, err := srv.Do(args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	// The records' hash answers WRONGTYPE while the holder reads.
	must("RENAME", a.kRec, a.kRec+":aside")
	must("SET", a.kRec, "junk")
	a.pull()
	if hs, _ := a.Queue("q", 10); len(hs) != 0 {
		t.Fatalf("%d sends indexed while their records did not read", len(hs))
	}
	if !a.f.Up() {
		t.Fatal("an error in a reply made Redis down")
	}
	must("DEL", a.kRec)
	must("RENAME", a.kRec+":aside", a.kRec)
	a.pull()
	hs, err := a.Queue("q", 10)
	if err != nil || len(hs) != 3 {
		t.Fatalf("queue q after the records read again: %d sends, %v; want 3", len(hs), err)
	}
	for i, h := range hs {
		if h.ID != ids[i] {
			t.Errorf("send %d is %s, want %s", i, h.ID, ids[i])
		}
	}
}

// Queue (what a merge reads) reads the fleet's sends a few at a time, and
// no more than queueMaxBytes of bodies beyond the first, in order.
func TestFleetOutboxQueueBoundedByBytes(t *testing.T) {
	srv := redistest.Start(t)
	a := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	ids := putN(t, a, 20, 20<<10)
	a.pull()
	hs, err := a.Queue("q", 100)
	if err != nil || len(hs) < 2 {
		t.Fatalf("queue q: %d sends, %v", len(hs), err)
	}
	size := 0
	for i, h := range hs {
		if h.ID != ids[i] {
			t.Errorf("send %d is %s, want %s", i, h.ID, ids[i])
		}
		if i > 0 {
			size += len(h.Body)
		}
	}
	if size > queueMaxBytes {
		t.Errorf("Queue read %d sends, %d bytes of bodies beyond the first (at most %d)", len(hs), size, queueMaxBytes)
	}
	if hs, _ := a.Queue("q", 2); len(hs) != 2 {
		t.Errorf("Queue(q, 2) = %d sends", len(hs))
	}
}

// queueIDs are the ids x's Queue gives for queue.
func queueIDs(t *testing.T, x *Outbox, queue string) []string {
	t.Helper()
	q, err := x.Queue(queue, 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range q {
		ids = append(ids, s.ID)
	}
	return ids
}

// A dead send retried (through a proxy without the lease) goes back in its
// old place, before the sends kept after it, as the local store does: its
// new stream entry is read in the place of its first, kept in first while
// its record is. A first that is not the fleet's is counted and ignored,
// and a send without one has its own entry's place.
func TestFleetOutboxRetryInItsPlace(t *testing.T) {
	srv := redistest.Start(t)
	errs := &errCounts{}
	a := sharedOutbox(t, srv.URL(), 0, errs)
	b := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	if !a.Holding() {
		t.Fatal("a did not take the lease")
	}
	ids := putN(t, b, 3, 10)
	a.pull()
	first, err := srv.Do("HGET", a.kFirst, ids[0])
	if err != nil || first == "" {
		t.Fatalf("no first entry id kept for %s: %q %v", ids[0], first, err)
	}
	hs, err := a.Heads(10)
	if err != nil || len(hs) != 1 || hs[0].ID != ids[0] {
		t.Fatalf("heads: %v %v", hs, err)
	}
	dead := *hs[0]
	dead.State, dead.Reason = outbox.Dead, "test"
	if err := a.Update(&dead); err != nil {
		t.Fatal(err)
	}
	if got := queueIDs(t, a, "q"); len(got) != 2 || got[0] != ids[1] {
		t.Fatalf("after the first is dead the queue is %v", got)
	}
	if err := b.Retry(ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := b.Retry(ids[0]); !errors.Is(err, outbox.ErrNotDead) {
		t.Fatalf("a second retry = %v, want ErrNotDead", err)
	}
	a.pull()
	if got := queueIDs(t, a, "q"); len(got) != 3 || got[0] != ids[0] || got[1] != ids[1] || got[2] != ids[2] {
		t.Fatalf("after the retry the queue is %v, want %v", got, ids)
	}
	if f2, _ := srv.Do("HGET", a.kFirst, ids[0]); f2 != first {
		t.Errorf("the retry moved the send's place from %s to %s", first, f2)
	}
	// A first after the entry's own, and one that is no entry id: counted,
	// and the entries' own places hold. Without one, the same.
	if _, err := srv.Do("HSET", a.kFirst, ids[1], "99999999999999-0", ids[2], "junk"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Do("HDEL", a.kFirst, ids[0]); err != nil {
		t.Fatal(err)
	}
	before := errs.get(OpOutbox)
	if _, err := srv.Do("DEL", a.kLease); err != nil {
		t.Fatal(err)
	}
	a.lease() // taken again: the index is read anew
	if got := queueIDs(t, a, "q"); len(got) != 3 || got[0] != ids[1] || got[1] != ids[2] || got[2] != ids[0] {
		t.Fatalf("without a first the retried send has its new entry's place: %v", got)
	}
	if n := errs.get(OpOutbox) - before; n != 2 {
		t.Errorf("%d bad firsts counted, want 2", n)
	}
	// Deleting a send forgets its place.
	if err := b.Delete(ids[1]); err != nil {
		t.Fatal(err)
	}
	if n, _ := srv.Do("HEXISTS", a.kFirst, ids[1]); n != "0" {
		t.Errorf("a deleted send's first is kept")
	}
}

// putN keeps n sends of size bytes in queue "q" through x and returns
// their ids, in order.
func putN(t *testing.T, x *Outbox, n, size int) []string {
	t.Helper()
	var ids []string
	for range n {
		id, err := x.Put(context.Background(), kept("q", size))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// A send the holder marked as being sent is not deleted through another
// proxy until its outcome is recorded.
func TestFleetOutboxDeleteWhileSending(t *testing.T) {
	srv := redistest.Start(t)
	a := sharedOutbox(t, srv.URL(), 0, nil)
	b := sharedOutbox(t, srv.URL(), 0, nil)
	a.lease()
	if !a.Holding() {
		t.Fatal("a did not take the lease")
	}
	ids := putN(t, b, 1, 10)
	a.pull()
	if err := a.Begin(ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ids[0]); !errors.Is(err, outbox.ErrSending) {
		t.Fatalf("Delete of a send being sent: %v, want ErrSending", err)
	}
	cur, err := b.Get(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	cur.State, cur.Sending = outbox.Delivered, false
	if err := a.Update(cur); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ids[0]); err != nil {
		t.Fatalf("Delete once delivered: %v", err)
	}
}
