package outbox

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// finish makes the kept send id delivered or dead.
func finish(t *testing.T, s *Store, id string, st State) {
	t.Helper()
	sd := get(t, s, id)
	sd.State, sd.Status, sd.Answer = st, 200, []byte(`{"errcode":0,"task_id":1}`)
	if err := s.Update(sd); err != nil {
		t.Fatal(err)
	}
}

func gone(s *Store, id string) bool {
	_, err := s.Get(id)
	return errors.Is(err, ErrNotFound)
}

// TestPruneByAge: a delivered send stays readable for KeepDelivered, a dead
// one for KeepDead; then the next write prunes them, and the file's
// records and the stats shrink with them. Queued sends are never pruned.
func TestPruneByAge(t *testing.T) {
	s, _ := newStore(t)
	t0 := time.Now()
	now := t0
	s.now = func() time.Time { return now }
	delivered, dead := put(t, s, robotSend("q", 1)), put(t, s, robotSend("q", 2))
	queued := robotSend("q", 3)
	queued.Due = t0.Add(300 * 24 * time.Hour)
	queuedID := put(t, s, queued)
	finish(t, s, delivered, Delivered)
	finish(t, s, dead, Dead)

	now = t0.Add(DefaultKeepDelivered - time.Minute)
	put(t, s, robotSend("other", 1))
	if gone(s, delivered) {
		t.Fatal("a delivered send was pruned before KeepDelivered")
	}
	now = t0.Add(DefaultKeepDelivered + time.Minute)
	put(t, s, robotSend("other", 2))
	if !gone(s, delivered) || gone(s, dead) {
		t.Fatalf("after KeepDelivered: delivered gone %v (want true), dead gone %v (want false)", gone(s, delivered), gone(s, dead))
	}
	now = t0.Add(DefaultKeepDead + time.Minute)
	put(t, s, robotSend("other", 3))
	if !gone(s, dead) || gone(s, queuedID) {
		t.Fatalf("after KeepDead: dead gone %v (want true), queued gone %v (want false)", gone(s, dead), gone(s, queuedID))
	}
	st := s.Stats()
	if r := st.Routes["/robot/send"]; r.Delivered != 0 || r.Dead != 0 || r.Queued != 4 || st.FinishedBytes != 0 {
		t.Fatalf("stats after pruning: %+v", st)
	}
}

// TestPruneByCountDeliveredFirst: past MaxFinished, the oldest delivered
// sends go first, and the older dead ones stay while delivered ones remain
// to prune.
func TestPruneByCountDeliveredFirst(t *testing.T) {
	h := newHarness(t, t.TempDir())
	h.opts.MaxFinished = 4
	s := h.open()
	var ids []string
	for i := range 8 {
		ids = append(ids, put(t, s, robotSend(fmt.Sprint("q", i), i)))
	}
	finish(t, s, ids[0], Dead)
	finish(t, s, ids[1], Dead)
	for _, id := range ids[2:] {
		finish(t, s, id, Delivered)
	}
	put(t, s, robotSend("q", 99)) // a commit after the last finish
	for i, id := range ids {
		wantGone := i >= 2 && i < 6 // the four oldest delivered
		if gone(s, id) != wantGone {
			t.Errorf("send %d (%s): gone %v, want %v", i, map[bool]string{true: "dead", false: "delivered"}[i < 2], gone(s, id), wantGone)
		}
	}
	if r := s.Stats().Routes["/robot/send"]; r.Dead+r.Delivered != 4 {
		t.Fatalf("finished kept: %+v, want 4", r)
	}
}

// TestPruneAtOpen: finished sends past their time are pruned when the
// store opens, with no write needed.
func TestPruneAtOpen(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	id := put(t, s, robotSend("q", 1))
	finish(t, s, id, Delivered)
	s.Close()
	h.opts.KeepDelivered = time.Nanosecond
	s = h.open()
	if !gone(s, id) {
		t.Fatal("a delivered send past KeepDelivered survived Open")
	}
}
