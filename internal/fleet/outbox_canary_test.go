package fleet

import (
	"context"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

const otherSecret = "an0ther-fleet-Val"

// secretOutbox is a shared outbox of app testKey under secret on url, over
// a local store of its own (sealed under the same secret), logging to the
// returned observer; its lease and reads are driven by the test.
func secretOutbox(t *testing.T, url, secret string, errs *errCounts) (*Outbox, *observer.ObservedLogs) {
	t.Helper()
	f := newFleet(t, url, secret, errs)
	st, err := outbox.Open(outbox.Options{Dir: filepath.Join(t.TempDir(), "outbox"), AppKey: testKey, AppSecret: secret,
		Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	x, err := f.NewOutbox(OutboxOptions{Local: st, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	waitUp(t, f)
	return x, logs
}

// outboxKeys are the outbox's keys in srv and a digest of each one's
// content, to tell that a proxy changed none of them.
func outboxKeys(t *testing.T, srv *redistest.Server) map[string]string {
	t.Helper()
	ks, err := srv.Do("KEYS", "dp:{"+testKey+"}:outbox:*")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range strings.Fields(ks) {
		d, err := srv.Do("DUMP", k)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(k, ":lease") {
			d = "" // its holder's value: compared apart
		}
		out[k] = d
	}
	return out
}

func sameKeys(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if w, ok := after[k]; !ok || w != v {
			t.Errorf("%s: the key %s changed or went", what, k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok && !strings.HasSuffix(k, ":lease") {
			t.Errorf("%s: the key %s was written", what, k)
		}
	}
}

// refusedLine is the one error line of a proxy whose key does not open
// the fleet's outbox: it names app.secret and never a secret.
func refusedLine(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	var errs []observer.LoggedEntry
	for _, e := range logs.All() {
		if e.Level == zapcore.ErrorLevel {
			errs = append(errs, e)
		}
	}
	if len(errs) != 1 {
		t.Fatalf("%d error lines, want the one refusal: %v", len(errs), logs.All())
	}
	line := errs[0].Message
	for _, f := range errs[0].Context {
		line += " " + f.Key + "=" + f.String
	}
	if !strings.Contains(line, "app.secret") {
		t.Errorf("the refusal does not name app.secret: %s", line)
	}
	if strings.Contains(line, testSecret) || strings.Contains(line, otherSecret) {
		t.Errorf("the refusal shows a secret: %s", line)
	}
}

// headIDs are the ids of every queued send x's courier would see, queue by
// queue.
func headIDs(t *testing.T, x *Outbox, queues ...string) []string {
	t.Helper()
	var ids []string
	for _, q := range queues {
		sds, err := x.Queue(q, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, sd := range sds {
			ids = append(ids, sd.ID)
		}
	}
	sort.Strings(ids)
	return ids
}

// A proxy of the app under another app secret that takes over the
// courier's lease must not take the fleet's sends for junk: it refuses
// the fleet's outbox (one error line, counted), takes no lease, changes
// no key, keeps its own sends locally and delivers them itself; a proxy
// under the right secret then finds every send of the fleet.
func TestFleetOutboxOtherSecretRefused(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := secretOutbox(t, srv.URL(), testSecret, nil)
	a.lease()
	if !a.Holding() {
		t.Fatal("a did not take the free lease")
	}
	var ids []string
	for _, q := range []string{"q1", "q1", "q2"} {
		id, err := a.Put(context.Background(), kept(q, 10))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	a.pull()
	// a stops delivering (a pod gone; its lease runs out).
	if _, err := srv.Do("DEL", a.kLease); err != nil {
		t.Fatal(err)
	}
	a.lose()
	before := outboxKeys(t, srv)

	errs := &errCounts{}
	b, logs := secretOutbox(t, srv.URL(), otherSecret, errs)
	for range 3 {
		b.lease()
		if b.Holding() {
			t.Error("a proxy under another app secret took the courier's lease")
		}
		b.pull()
	}
	if hs, _ := b.Heads(10); len(hs) != 0 {
		t.Fatalf("b's courier sees %d sends", len(hs))
	}
	for _, id := range ids {
		if _, err := b.Get(id); !errors.Is(err, outbox.ErrNotFound) {
			t.Errorf("b reads the fleet's send %s: %v", id, err)
		}
		if err := b.Delete(id); !errors.Is(err, outbox.ErrNotFound) {
			t.Errorf("b deletes the fleet's send %s: %v", id, err)
		}
	}
	// Its own sends: kept here, and its courier sees them.
	own, err := b.Put(context.Background(), kept("q1", 10))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.local.Get(own); err != nil {
		t.Fatalf("b's own send is not in its local store: %v", err)
	}
	hs, err := b.Heads(10)
	if err != nil || len(hs) != 1 || hs[0].ID != own {
		t.Fatalf("b's heads: %v %v; want its own send", hs, err)
	}
	if st := b.Stats(); st.Routes["/topapi/x"].Queued != 1 {
		t.Errorf("b counts %+v, want its own send only", st.Routes)
	}
	if b.Waiting("q2") {
		t.Error("b waits for the fleet's queue q2 it does not deliver")
	}
	sameKeys(t, "under another secret", before, outboxKeys(t, srv))
	if n, _ := srv.Do("EXISTS", a.kLease); n != "0" {
		t.Error("b wrote the lease")
	}
	refusedLine(t, logs)
	if errs.get(OpOutbox) == 0 {
		t.Error("the refusal is not counted")
	}

	// A proxy under the right secret delivers every send of a.
	c, _ := secretOutbox(t, srv.URL(), testSecret, nil)
	c.lease()
	if !c.Holding() {
		t.Fatal("c did not take the free lease")
	}
	if got := headIDs(t, c, "q1", "q2"); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("c sees %v, want a's %v", got, ids)
	}
}

// putSome keeps n sends through x, under the lease it takes, and returns
// their ids, sorted.
func putSome(t *testing.T, x *Outbox, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		id, err := x.Put(context.Background(), kept("q1", 10))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x.local.Get(id); err == nil {
			t.Fatalf("send %s kept locally, not in Redis", id)
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// An outbox kept by a version without the canary: a proxy under another
// app secret that comes first refuses it and writes nothing; one under
// the fleet's writes the canary and delivers the sends.
func TestFleetOutboxCanaryUpgrade(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := secretOutbox(t, srv.URL(), testSecret, nil)
	ids := putSome(t, a, 3)
	a.Close()
	if _, err := srv.Do("DEL", a.kCanary); err != nil { // as a version without it left the outbox
		t.Fatal(err)
	}
	before := outboxKeys(t, srv)

	b, logs := secretOutbox(t, srv.URL(), otherSecret, nil)
	b.lease()
	if b.Holding() || !b.Refused() {
		t.Fatalf("another secret on an outbox without a canary: holding %v, refused %v", b.Holding(), b.Refused())
	}
	if n, _ := srv.Do("EXISTS", a.kCanary); n != "0" {
		t.Fatal("a proxy under another secret wrote the canary")
	}
	sameKeys(t, "another secret first", before, outboxKeys(t, srv))
	refusedLine(t, logs)

	c, _ := secretOutbox(t, srv.URL(), testSecret, nil)
	c.lease()
	if !c.Holding() {
		t.Fatal("the fleet's secret did not take the lease of an outbox without a canary")
	}
	v, err := srv.Do("GET", a.kCanary)
	if err != nil || !c.seal.CanaryOpens([]byte(v)) {
		t.Fatalf("the canary written: %q %v", v, err)
	}
	if got := headIDs(t, c, "q1"); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("c sees %v, want %v", got, ids)
	}
	// b stays out: the canary is another key's now.
	b.canaryChanged(b.canaryValue())
	b.lease()
	if b.Holding() || !b.Refused() {
		t.Fatal("b took the outbox once the canary was written")
	}
}

// A value at the canary's key that is not the fleet's canary neither cuts
// the fleet off its own sends nor lets a proxy drop them: one that is no
// canary at all (junk, another type) is replaced when the records open,
// or there are none; a sealed-looking one that does not open, when every
// record sampled opens. Under another secret, none of them is replaced.
// A holder whose canary is replaced checks it again before it renews.
func TestFleetOutboxJunkCanary(t *testing.T) {
	random := string(make([]byte, 51)) // a canary's size, opening under no key
	for name, plant := range map[string][]string{
		"junk":       {"SET", "", "junk"},
		"empty":      {"SET", "", ""},
		"hash":       {"HSET", "", "a", "b"},
		"sealedsize": {"SET", "", random},
	} {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t)
			errs := &errCounts{}
			a, _ := secretOutbox(t, srv.URL(), testSecret, errs)
			a.lease()
			ids := putSome(t, a, 2)
			args := append([]string(nil), plant...)
			args[1] = a.kCanary
			if _, err := srv.Do("DEL", a.kCanary); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Do(args...); err != nil {
				t.Fatal(err)
			}
			before := outboxKeys(t, srv)

			// Another secret replaces nothing and drops nothing.
			b, _ := secretOutbox(t, srv.URL(), otherSecret, nil)
			b.lease()
			if _, err := b.Put(context.Background(), kept("q1", 10)); err != nil {
				t.Fatal(err)
			}
			if b.Holding() || !b.Refused() {
				t.Fatalf("another secret: holding %v, refused %v", b.Holding(), b.Refused())
			}
			sameKeys(t, "another secret", before, outboxKeys(t, srv))

			// The holder's renewal finds the canary changed, and checks it
			// again: the records open, the canary is replaced, the lease
			// renewed.
			a.lease()
			if !a.Holding() || a.Refused() {
				t.Fatalf("the fleet's secret: holding %v, refused %v", a.Holding(), a.Refused())
			}
			if v, _ := srv.Do("GET", a.kCanary); !a.seal.CanaryOpens([]byte(v)) {
				t.Fatalf("the canary is %q, not replaced", v)
			}
			if errs.get(OpOutbox) == 0 {
				t.Error("the replaced canary is not counted")
			}
			a.resetIndex()
			a.takeOver()
			if got := headIDs(t, a, "q1"); strings.Join(got, ",") != strings.Join(ids, ",") {
				t.Fatalf("a sees %v, want %v", got, ids)
			}
		})
	}
}

// A sealed-looking canary that opens under no key, on an outbox without
// a record, cannot be told from another secret's: refused. Once the key
// is deleted, the proxy joins again on its own.
func TestFleetOutboxForeignCanaryEmptyOutbox(t *testing.T) {
	srv := redistest.Start(t)
	a, logs := secretOutbox(t, srv.URL(), testSecret, nil)
	if _, err := srv.Do("SET", a.kCanary, string(make([]byte, 51))); err != nil {
		t.Fatal(err)
	}
	a.lease()
	if a.Holding() || !a.Refused() {
		t.Fatalf("holding %v, refused %v", a.Holding(), a.Refused())
	}
	refusedLine(t, logs)
	if _, err := srv.Do("DEL", a.kCanary); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !a.Holding() {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not join once the key was deleted")
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
		a.lease()
	}
	if a.Refused() {
		t.Error("still refused")
	}
}
