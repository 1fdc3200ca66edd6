package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPutGetRoundTrip: a kept send reads back as it was given, byte for
// byte, with its ID, state and times set, after a reopen too.
func TestPutGetRoundTrip(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	sd := robotSend("robot:a", 7)
	sd.Query = "access_token=" + testToken + "&timestamp=1700000000000&sign=a%2Bb%3D%3D&x=%zz" // not re-encoded
	sd.Header.Add("X-Multi", "one")
	sd.Header.Add("X-Multi", "two")
	sd.Attempts = 2
	before := time.Now()
	id := put(t, s, sd)
	if id != sd.ID || !ValidID(id) {
		t.Fatalf("Put returned %q, sd.ID %q", id, sd.ID)
	}
	if sd.State != Queued || sd.Kept.Before(before) || sd.Updated.IsZero() {
		t.Fatalf("Put did not set the state and times: %+v", sd)
	}
	check := func(s *Store) {
		t.Helper()
		got := get(t, s, id)
		if diff := cmp.Diff(sd, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
			t.Errorf("read back (-kept +read):\n%s", diff)
		}
	}
	check(s)
	s.Close()
	check(h.open())
}

// TestIDsIncreaseAcrossRestartsAndClockSteps: IDs are unique and increase
// in the order of Puts, within a millisecond, when the clock steps back,
// and across a reopen whose clock is behind the last ID.
func TestIDsIncreaseAcrossRestartsAndClockSteps(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	var ids []string
	now := time.Now()
	s.now = func() time.Time { return now } // one millisecond for all
	for i := range 50 {
		ids = append(ids, put(t, s, robotSend("q", i)))
	}
	now = now.Add(-time.Hour) // the clock steps back
	for i := range 5 {
		ids = append(ids, put(t, s, robotSend("q", i)))
	}
	s.Close()
	s = h.open()
	s.now = func() time.Time { return now.Add(-24 * time.Hour) } // a restart with the clock far behind
	ids = append(ids, put(t, s, robotSend("q", 99)))
	if !slices.IsSorted(ids) {
		t.Fatalf("IDs not increasing: %v", ids)
	}
	if len(slices.Compact(slices.Clone(ids))) != len(ids) {
		t.Fatal("an ID repeats")
	}
	for _, id := range ids {
		raw, ok := parseID(id)
		if !ok || raw.String() != id {
			t.Fatalf("ID %q does not round-trip", id)
		}
	}
	if ValidID("8ZZZZZZZZZZZZZZZZZZZZZZZZZ") || ValidID("0123") || ValidID(strings.Repeat("U", 26)) {
		t.Error("ValidID accepts what Put never gives")
	}
}

// TestHeadsOldestOfEachQueue: Heads gives each queue's oldest queued send,
// queues with the oldest heads first, at most max; a delivered head makes
// way for the next.
func TestHeadsOldestOfEachQueue(t *testing.T) {
	s, _ := newStore(t)
	var byQueue = map[string][]string{}
	for i := range 12 {
		q := []string{"robot:a", "robot:b", "/topapi/message/corpconversation/asyncsend_v2"}[i%3]
		byQueue[q] = append(byQueue[q], put(t, s, robotSend(q, i)))
	}
	heads, err := s.Heads(10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sd := range heads {
		got = append(got, sd.ID)
	}
	want := []string{byQueue["robot:a"][0], byQueue["robot:b"][0], byQueue["/topapi/message/corpconversation/asyncsend_v2"][0]}
	if !slices.Equal(got, want) {
		t.Fatalf("heads %v, want %v", got, want)
	}
	if heads, _ := s.Heads(2); len(heads) != 2 || heads[0].ID != want[0] || heads[1].ID != want[1] {
		t.Fatalf("Heads(2) = %d sends, want the two oldest heads", len(heads))
	}
	// Deliver robot:a's head, kill robot:b's: each queue moves on.
	a := heads[0]
	a.State, a.Attempts, a.Status, a.Answer = Delivered, 1, 200, []byte(`{"errcode":0}`)
	if err := s.Update(a); err != nil {
		t.Fatal(err)
	}
	b := heads[1]
	b.State, b.Reason = Dead, "max_age passed"
	if err := s.Update(b); err != nil {
		t.Fatal(err)
	}
	heads, _ = s.Heads(10)
	got = got[:0]
	for _, sd := range heads {
		got = append(got, sd.ID)
	}
	want = []string{byQueue["robot:a"][1], byQueue["robot:b"][1], byQueue["/topapi/message/corpconversation/asyncsend_v2"][0]}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after delivery: heads %v, want %v", got, want)
	}
	if h, _ := s.Heads(0); h != nil {
		t.Error("Heads(0) gave sends")
	}
}

// TestUpdateStates: attempts are recorded while queued; a delivered send
// keeps its answer (cut to 64 KiB) and drops its token and body; a dead one
// keeps them for Retry; a finished send is updated once.
func TestUpdateStates(t *testing.T) {
	s, _ := newStore(t)
	id := put(t, s, robotSend("q", 1))
	sd := get(t, s, id)
	sd.Attempts, sd.Status, sd.Answer, sd.Reason = 1, 503, []byte("busy"), "throttled"
	if err := s.Update(sd); err != nil {
		t.Fatal(err)
	}
	got := get(t, s, id)
	if got.State != Queued || got.Attempts != 1 || got.Status != 503 || got.Reason != "throttled" || got.Answer != nil {
		t.Fatalf("queued after an attempt: %+v", got)
	}
	if !strings.Contains(got.Query, testToken) || got.Body == nil {
		t.Fatal("a queued send lost its query or body")
	}
	got.State, got.Attempts, got.Status = Delivered, 2, 200
	got.Answer = bytes.Repeat([]byte("a"), MaxAnswer+100)
	if err := s.Update(got); err != nil {
		t.Fatal(err)
	}
	d := get(t, s, id)
	if d.State != Delivered || d.Attempts != 2 || len(d.Answer) != MaxAnswer || d.Query != "" || d.Body != nil || d.Header != nil {
		t.Fatalf("delivered: state %s attempts %d answer %d bytes query %q body %d header %v", d.State, d.Attempts, len(d.Answer), d.Query, len(d.Body), d.Header)
	}
	if err := s.Update(d); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("Update of a delivered send: %v, want ErrNotQueued", err)
	}
	if err := s.Retry(id); !errors.Is(err, ErrNotDead) {
		t.Fatalf("Retry of a delivered send: %v, want ErrNotDead", err)
	}

	id2 := put(t, s, robotSend("q", 2))
	dead := get(t, s, id2)
	dead.State, dead.Reason = Dead, strings.Repeat("r", 5000)
	if err := s.Update(dead); err != nil {
		t.Fatal(err)
	}
	if g := get(t, s, id2); g.State != Dead || len(g.Reason) != maxReason || !strings.Contains(g.Query, testToken) || g.Body == nil {
		t.Fatalf("dead: state %s reason %d bytes, query kept %v, body kept %v", g.State, len(g.Reason), strings.Contains(g.Query, testToken), g.Body != nil)
	}
	for _, bad := range []*Send{{ID: "nope", State: Delivered}, {ID: id2, State: "lost"}} {
		if err := s.Update(bad); err == nil {
			t.Errorf("Update(%+v) succeeded", bad)
		}
	}
	if err := s.Update(&Send{ID: rawID{1}.String(), State: Delivered}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update of a send never kept: %v, want ErrNotFound", err)
	}
}

// TestRetryInItsPlace: a dead send retried is queued again under its own
// ID, so it is its queue's head again, before sends kept after it; it is
// due again after its first span.
func TestRetryInItsPlace(t *testing.T) {
	s, _ := newStore(t)
	sd := robotSend("q", 1)
	sd.Due = time.Now().Add(10 * time.Minute)
	first := put(t, s, sd)
	second := put(t, s, robotSend("q", 2))
	d := get(t, s, first)
	d.State, d.Reason, d.Status, d.Answer = Dead, "max_age", 200, []byte("x")
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	if heads, _ := s.Heads(5); len(heads) != 1 || heads[0].ID != second {
		t.Fatal("the dead send is still a head")
	}
	if err := s.Retry(second); !errors.Is(err, ErrNotDead) {
		t.Fatalf("Retry of a queued send: %v", err)
	}
	retried := time.Now()
	if err := s.Retry(first); err != nil {
		t.Fatal(err)
	}
	heads, _ := s.Heads(5)
	if len(heads) != 1 || heads[0].ID != first {
		t.Fatalf("after Retry the head is %v, want the retried send %s", heads, first)
	}
	r := heads[0]
	if r.State != Queued || r.Reason != "" || r.Status != 0 || r.Answer != nil || r.Due.Before(retried.Add(9*time.Minute)) {
		t.Fatalf("retried send: %+v", r)
	}
	if err := s.Retry("0000000000000000000000000Z"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Retry of a missing send: %v", err)
	}
}

// TestDelete: a deleted send is gone, in any state, and frees its bytes.
func TestDelete(t *testing.T) {
	s, _ := newStore(t)
	a, b := put(t, s, robotSend("q", 1)), put(t, s, robotSend("q", 2))
	d := get(t, s, b)
	d.State = Unknown
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a, b} {
		if err := s.Delete(id); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after Delete: %v", err)
		}
		if err := s.Delete(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second Delete: %v", err)
		}
	}
	if st := s.Stats(); st.QueuedBytes != 0 || st.FinishedBytes != 0 || len(st.Routes) != 0 {
		t.Fatalf("stats after deleting all: %+v", st)
	}
}

// TestStats: counts by route and state, the oldest queued age by route,
// the bytes held; the same after a reopen.
func TestStats(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	t0 := time.Now()
	s.now = func() time.Time { return t0 }
	put(t, s, robotSend("robot:a", 1))
	s.now = func() time.Time { return t0.Add(time.Minute) }
	put(t, s, robotSend("robot:b", 2))
	work := robotSend("/topapi/message/corpconversation/asyncsend_v2", 3)
	work.Route = work.Queue
	wid := put(t, s, work)
	w := get(t, s, wid)
	w.State, w.Status, w.Answer = Delivered, 200, []byte(`{"errcode":0,"task_id":123}`)
	if err := s.Update(w); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		s.now = func() time.Time { return t0.Add(10 * time.Minute) }
		st := s.Stats()
		robot, work := st.Routes["/robot/send"], st.Routes["/topapi/message/corpconversation/asyncsend_v2"]
		if robot.Queued != 2 || robot.Oldest != 10*time.Minute || robot.QueuedBytes < 2*minCharge {
			t.Errorf("robot route: %+v", robot)
		}
		if work.Queued != 0 || work.Delivered != 1 || work.Oldest != 0 || work.QueuedBytes != 0 {
			t.Errorf("work notice route: %+v", work)
		}
		if st.QueuedBytes != robot.QueuedBytes || st.FinishedBytes <= 0 || st.FileBytes <= 0 || st.MaxBytes != DefaultMaxBytes {
			t.Errorf("bytes: %+v", st)
		}
	}
	check(s)
	s.Close()
	check(h.open())
}

// TestBounds: MaxBytes in all, half of it per route, a quarter of it per
// queue: past any, Put is ErrFull and nothing is kept; a delivered send
// frees its share.
func TestBounds(t *testing.T) {
	h := newHarness(t, t.TempDir())
	h.opts.MaxBytes = 16 * minCharge // each queue 4 sends of at most minCharge, each route 8
	s := h.open()
	on := func(route string, sd *Send) *Send { sd.Route = route; return sd }
	var ids []string
	for i := range 4 {
		ids = append(ids, put(t, s, robotSend("robot:hog", i)))
	}
	if _, err := s.Put(context.Background(), robotSend("robot:hog", 5)); !errors.Is(err, ErrFull) {
		t.Fatalf("a fifth send in one queue: %v, want ErrFull", err)
	}
	for i := range 4 {
		put(t, s, robotSend("robot:1", i))
	}
	// The route holds half of MaxBytes now: another of its queues waits.
	if _, err := s.Put(context.Background(), robotSend("robot:2", 0)); !errors.Is(err, ErrFull) {
		t.Fatalf("past a route's half: %v, want ErrFull", err)
	}
	// The other routes still have theirs, up to MaxBytes in all.
	for q := range 2 {
		for i := range 4 {
			put(t, s, on("/topapi/message/corpconversation/asyncsend_v2", robotSend(fmt.Sprint("notice:", q), i)))
		}
	}
	if _, err := s.Put(context.Background(), on("/v1.0/todo/users/tasks", robotSend("todo", 1))); !errors.Is(err, ErrFull) {
		t.Fatalf("past MaxBytes: %v, want ErrFull", err)
	}
	big := robotSend("robot:big", 1)
	big.Body = make([]byte, 5*minCharge)
	if _, err := s.Put(context.Background(), big); !errors.Is(err, ErrFull) {
		t.Fatalf("a send past a queue's share: %v, want ErrFull", err)
	}
	if st := s.Stats(); st.QueuedBytes != 16*minCharge || st.Routes["/robot/send"].Queued != 8 {
		t.Fatalf("stats at the bound: %+v", st)
	}
	d := get(t, s, ids[0])
	d.State = Delivered
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	put(t, s, robotSend("robot:hog", 6)) // its share is free again
	// A dead send may not come back past the bound.
	d = get(t, s, ids[1])
	d.State = Dead
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	put(t, s, robotSend("robot:hog", 7))
	if err := s.Retry(ids[1]); !errors.Is(err, ErrFull) {
		t.Fatalf("Retry past the bound: %v, want ErrFull", err)
	}
}

// TestPutRefusesWhatCannotBeKept: a send missing a field or past a bound
// is ErrInvalid, naming the field; nothing is kept.
func TestPutRefusesWhatCannotBeKept(t *testing.T) {
	s, _ := newStore(t)
	cases := map[string]func(*Send){
		"queue":   func(sd *Send) { sd.Queue = "" },
		"route":   func(sd *Send) { sd.Route = strings.Repeat("r", maxName+1) },
		"method":  func(sd *Send) { sd.Method = "" },
		"query":   func(sd *Send) { sd.Query = strings.Repeat("q", maxQuery+1) },
		"headers": func(sd *Send) { sd.Header = http.Header{"X": {strings.Repeat("h", maxHeaderBytes)}} },
		"state":   func(sd *Send) { sd.State = Dead },
		"due":     func(sd *Send) { sd.Due = time.Time{} },
		"attempts": func(sd *Send) {
			sd.Attempts = -1
		},
	}
	for field, spoil := range cases {
		sd := robotSend("q", 1)
		spoil(sd)
		_, err := s.Put(context.Background(), sd)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v, want ErrInvalid naming it", field, err)
		}
	}
	if st := s.Stats(); len(st.Routes) != 0 || st.QueuedBytes != 0 {
		t.Fatalf("something was kept: %+v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, robotSend("q", 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a done context: %v", err)
	}
}

// TestClosed: after Close, writes are ErrClosed and reads fail; Close is
// idempotent.
func TestClosed(t *testing.T) {
	s, _ := newStore(t)
	id := put(t, s, robotSend("q", 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(context.Background(), robotSend("q", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
	if _, err := s.Get(id); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	if _, err := s.Heads(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Heads after Close: %v", err)
	}
}

// TestBeginThenStopIsUnknown: a send marked as being sent (Begin) when the
// store closes without its outcome opens as Unknown, with its reason, never
// queued again; Update clears the mark; Queue lists a queue's sends in
// order, without one being sent; kept facts read back.
func TestBeginThenStopIsUnknown(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	var ids []string
	for i := range 4 {
		sd := robotSend("robot:a", i)
		sd.Facts = fmt.Appendf(nil, `{"api":"robot:a","n":%d}`, i)
		ids = append(ids, put(t, s, sd))
	}
	if err := s.Begin(ids[0]); err != nil {
		t.Fatalf("Begin: %v", err)
	}
	q, err := s.Queue("robot:a", 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sd := range q {
		got = append(got, sd.ID)
	}
	if diff := cmp.Diff(ids[1:], got); diff != "" {
		t.Errorf("Queue while the head is being sent (-want +got):\n%s", diff)
	}
	if sd := get(t, s, ids[1]); string(sd.Facts) != `{"api":"robot:a","n":1}` || sd.Sending {
		t.Errorf("read back facts %q sending %v", sd.Facts, sd.Sending)
	}
	// Begin then Update: the mark is gone, the send queued as before.
	if err := s.Begin(ids[1]); err != nil {
		t.Fatal(err)
	}
	sd := get(t, s, ids[1])
	if !sd.Sending {
		t.Fatalf("Begin did not mark the send")
	}
	sd.Attempts++
	if err := s.Update(sd); err != nil {
		t.Fatal(err)
	}
	if sd := get(t, s, ids[1]); sd.Sending || sd.State != Queued || sd.Attempts != 1 {
		t.Errorf("after Update: sending %v state %s attempts %d", sd.Sending, sd.State, sd.Attempts)
	}
	if err := s.Begin(ids[0]); err != nil { // again: still queued, still marked
		t.Fatal(err)
	}
	s.Close()

	s = h.open()
	stopped := get(t, s, ids[0])
	if stopped.State != Unknown || stopped.Reason != ReasonStopped || stopped.Sending {
		t.Errorf("a send being sent at the stop opens as %s %q (sending %v), want unknown", stopped.State, stopped.Reason, stopped.Sending)
	}
	heads, err := s.Heads(10)
	if err != nil || len(heads) != 1 || heads[0].ID != ids[1] {
		t.Errorf("Heads after the reopen = %v, %v; want the next send %s", heads, err, ids[1])
	}
	if st := s.Stats().Routes["/robot/send"]; st.Unknown != 1 || st.Queued != 3 {
		t.Errorf("stats %+v, want 1 unknown and 3 queued", st)
	}
	if !strings.Contains(h.logText(), "not sent again") {
		t.Errorf("no log line says the stopped send is not sent again:\n%s", h.logText())
	}
	if err := s.Begin(ids[0]); !errors.Is(err, ErrNotQueued) {
		t.Errorf("Begin of an unknown send: %v, want ErrNotQueued", err)
	}
}

// TestExpiredBehindOthers: a send past its due time is found wherever it
// waits in its queue, one being sent is left to its courier, and the next
// due time of the rest is told.
func TestExpiredBehindOthers(t *testing.T) {
	s, _ := newStore(t)
	now := time.Now()
	first := robotSend("robot:a", 0)
	first.Due = now.Add(time.Hour)
	late := robotSend("robot:a", 1)
	late.Due = now.Add(2 * time.Second)
	going := robotSend("robot:b", 2)
	going.Due = now.Add(time.Second)
	soon := robotSend("robot:c", 3)
	soon.Due = now.Add(10 * time.Minute)
	put(t, s, first)
	lateID := put(t, s, late)
	goingID := put(t, s, going)
	put(t, s, soon)
	if err := s.Begin(goingID); err != nil {
		t.Fatal(err)
	}

	got, next, err := s.Expired(now, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("Expired(now) = %d sends, %v; want none", len(got), err)
	}
	// The next due time is the earliest of the others, even the one
	// being sent.
	if next.UnixNano() != going.Due.UnixNano() {
		t.Fatalf("next due %v, want %v", next, going.Due)
	}
	got, next, err = s.Expired(now.Add(5*time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != lateID {
		t.Fatalf("Expired(now+5s) = %v, want only the send behind robot:a's head (the one being sent is its courier's)", ids(got))
	}
	if next.UnixNano() != soon.Due.UnixNano() {
		t.Fatalf("next due %v, want robot:c's %v", next, soon.Due)
	}
	if got, _, _ := s.Expired(now.Add(2*time.Hour), 1); len(got) != 1 {
		t.Fatalf("Expired(max 1) = %d sends", len(got))
	}
}

func ids(ss []*Send) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ID)
	}
	return out
}

// TestDeleteWhileSending: a send marked as being sent is not deleted (it
// may reach DingTalk whatever the store says) until its outcome is
// recorded; Forget, for a copy its owner holds, deletes it anyway.
func TestDeleteWhileSending(t *testing.T) {
	s, _ := newStore(t)
	a, b := put(t, s, robotSend("q", 1)), put(t, s, robotSend("r", 2))
	for _, id := range []string{a, b} {
		if err := s.Begin(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(a); !errors.Is(err, ErrSending) {
		t.Fatalf("Delete of a send being sent: %v, want ErrSending", err)
	}
	d := get(t, s, a)
	d.State, d.Sending = Delivered, false
	if err := s.Update(d); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(a); err != nil {
		t.Fatalf("Delete once delivered: %v", err)
	}
	if err := s.Forget(b); err != nil {
		t.Fatalf("Forget of a send being sent: %v", err)
	}
	if st := s.Stats(); st.QueuedBytes != 0 || len(st.Routes) != 0 {
		t.Fatalf("stats after both are gone: %+v", st)
	}
}
