package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// The shared outbox: the deferred sends of the fleet, kept in Redis, one
// stream per app, and delivered by one proxy at a time.
//
// Keys, under <prefix>:{<app key>}:outbox:
//
//	stream    the queued sends in the order they were kept (entries {i: id}),
//	          read by the consumer group "couriers"
//	first     hash: id -> the id of the send's first stream entry, its place
//	          in its queue: a send retried by hand has a new entry, and
//	          goes back in its old place, before the sends kept after it
//	rec       hash: id -> the send's record, sealed as the local store seals
//	          it (AES-GCM under a key from the app secret, the id and the
//	          record's head as associated data); queued and finished
//	queued    hash: id -> "charge route-digest queue-digest" of each queued send
//	bytes     hash: the queued bytes charged, in all ("all"), per route
//	          ("r:<digest>") and per queue ("q:<digest>"), and the finished
//	          records' bytes ("fin")
//	delivered, dead
//	          zsets: finished sends by when they finished, for pruning
//	lease     the courier's lease: the holder's value, with an expiry
//	canary    a value sealed under the records' key: a proxy whose key does
//	          not open it leaves the outbox alone (outbox_canary.go)
//
// Any proxy keeps a send (Put: one script writes the record and the stream
// entry, within outbox.max_bytes and the per-route and per-queue shares,
// and the deferred answer goes only once Redis has answered it) and
// answers the admin endpoints (Get, Retry, Delete, Stats read and change
// the records). One proxy delivers: the holder of the lease, which it
// renews every second. The holder reads the stream through the group (its
// entries stay pending, claimed by the holder, until the send is
// finished), so that one courier delivers each queue in order and paces
// each robot's minute for the whole fleet. A holder that dies stops
// renewing; once its lease has expired another proxy takes it, claims
// every pending entry (XAUTOCLAIM), and finds the send the dead holder had
// marked as being sent (Begin writes the mark to the record before the
// send goes): it is unknown, never sent again. Every write of the holder's
// (Begin, Update) checks in the same script that it still holds the lease
// and that the record is as it read it, so a holder that lost its lease
// cannot change what the next one does.
//
// Redis unreachable: Put keeps the send in the local store (the outbox
// decorated) and this proxy's courier delivers it from there; a send is
// never lost while this pod's disk works, and what is given up is the
// fleet-wide order while Redis is down. A Put whose answer from Redis was
// lost (the script may have run, or may run still) is settled: a script
// under its id finds the send kept, or leaves a tombstone there so that
// the Put, should it still run, keeps nothing. Settling is tried for about
// a second. Kept in Redis: the answer is its id. Tombstoned: the send is
// kept locally, as while Redis is down. Still not known: the send is kept
// locally held (marked as being sent, so that the local courier leaves it
// alone and a restart makes it unknown, never sent twice), and settled in
// the background: once Redis is found to hold it, the local copy is
// deleted (Redis delivers it); once the tombstone is written, the local
// copy is released to the local courier. Either way the client had a
// deferred answer for a send that is kept, and it is delivered at most
// once.
//
// Every value read back from Redis is checked, by a proxy whose key opens
// the canary (only such a proxy drops anything): an entry, record, counter
// or lease that is not the fleet's is dropped and counted
// (dingproxy_fleet_errors_total{op="outbox"}). A counter that does not
// read back is rebuilt from the queued charges, a charge that does not
// read back counted as a whole queue's share, so that no bad value lifts
// a bound.

// OpOutbox: an operation on the shared outbox failed, or a value read back
// from it was not the fleet's and was dropped.
const OpOutbox = "outbox"

// DefaultOutboxLease is the lease's default; how long finished sends are
// kept defaults to the local store's (outbox.DefaultKeepDelivered, ...).
const DefaultOutboxLease = 10 * time.Second

const (
	outboxGroup   = "couriers"
	outboxBatch   = 64 // entries read from the stream at once
	outboxPull    = 250 * time.Millisecond
	outboxPrune   = 30 * time.Second // how often the holder prunes
	outboxPruneN  = 1000             // most forgotten per prune
	outboxMaxRead = 8                // batches read per pull
	statsEvery    = 2 * time.Second  // Stats of the shared part are this fresh
	statsMaxScan  = 4096             // HSCAN rounds per Stats at most
	statsMaxRoute = 1 << 10          // a route's name counted, in bytes at most (as the store's bound)
	statsRoutes   = 256              // the distinct routes counted at most
	statsOpens    = 64               // records that did not open, per count, before no new route is tried
	maxReason     = 1 << 10
	minCharge     = 1 << 10
)

// LocalOutbox is this proxy's own store as the shared outbox uses it: an
// outbox, which can also forget a copy it holds itself (marked as being
// sent while its keep in Redis is settled), which Delete refuses.
type LocalOutbox interface {
	deferral.Outbox
	Forget(id string) error
}

// OutboxOptions configure the shared outbox.
type OutboxOptions struct {
	// Local is this proxy's own store: where sends go while Redis is down,
	// and where those kept there are delivered from.
	Local LocalOutbox
	// MaxBytes is outbox.max_bytes: the bytes queued sends may hold in
	// Redis, half of it per route and a quarter per queue.
	MaxBytes int64
	// Lease is how long the courier's lease lasts unrenewed (0:
	// DefaultOutboxLease): how long the fleet waits for a dead holder.
	Lease time.Duration
	// KeepDelivered, KeepDead and MaxFinished bound the finished sends kept
	// for the admin endpoints, as the local store's options do.
	KeepDelivered, KeepDead time.Duration
	MaxFinished             int
	Logger                  *zap.Logger
}

// Outbox is the fleet's outbox, decorating the local store. It implements
// deferral.Outbox.
type Outbox struct {
	f     *Fleet
	local LocalOutbox
	seal  *outbox.Sealer
	ids   outbox.IDs
	o     OutboxOptions
	log   *zap.Logger
	me    string // this proxy's consumer name
	maxIx int    // the most entries indexed

	kStream, kRec, kQueued, kBytes, kDeliv, kDead, kLease, kFirst, kCanary string

	// canMu guards the canary (outbox_canary.go): canVal, the canary found
	// opening under this proxy's key ("" while not); refused, whether the
	// last check found the outbox sealed under another; canAt, that check.
	canMu   sync.Mutex
	canVal  string
	refused bool
	canAt   time.Time

	wakeMu sync.Mutex
	wake   func()

	mu        sync.Mutex
	holder    string    // the lease's value while held, else ""
	heldUntil time.Time // held until then at the latest, unrenewed
	queues    map[string][]*oent
	byID      map[string]*oent
	lastPrune time.Time
	// reread: entries handed to this proxy could not be indexed (their
	// records did not read, for an error in Redis's reply): the next pull
	// reads this consumer's own pending entries again.
	reread bool
	// inflight are the sends this proxy's courier marked as being sent
	// (Begin) and has not yet recorded the outcome of (Update), in either
	// store: Heads leaves them out, so that the courier never takes the
	// mark of its own delivery, read just before that delivery ended, for
	// one left by a proxy that stopped. The value is the store the send
	// was marked in, and so where its outcome goes: its entry in the
	// fleet's stream, or nil for the local store. (The index, byID, may
	// not have it by then: a lease lost or taken again clears it.)
	inflight map[string]*oent
	// held are the sends kept locally while their keep in Redis is not
	// settled, by local id: the courier does not see them (see hold).
	held map[string]*heldSend
	// ended are the last sends whose outcome this proxy recorded, for the
	// same reason: a Heads that read a mark just before its Update.
	ended    [1024]string
	endedAt  int
	endedSet map[string]int

	// holdMu orders a hold (the local Put and its entry in held) before a
	// Heads that could read the held send: Heads holds it for reading.
	holdMu sync.RWMutex

	statsMu sync.Mutex
	stats   outbox.Stats
	statsAt time.Time
	// routesOK are the routes a record that opened was kept under (the
	// head is sealed with the record): only they are counted, so that a
	// value planted in Redis invents no metric label.
	routesOK map[string]bool

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// oent is a queued send the holder delivers: its stream entry, and what
// Heads and Expired need without reading the record.
type oent struct {
	sid       string
	ms, seq   uint64 // its place in its queue: its first entry's id (see first)
	id        string
	queue     string
	kept, due time.Time
}

func (e *oent) before(o *oent) bool { return e.ms < o.ms || e.ms == o.ms && e.seq < o.seq }

// NewOutbox returns the shared outbox over o.Local. It needs the app
// secret to seal sends with: in pass-through mode it returns
// outbox.ErrAppSecret, and the local store serves alone.
func (f *Fleet) NewOutbox(o OutboxOptions) (*Outbox, error) {
	seal, err := outbox.NewSealer(f.opts.AppKey, f.opts.AppSecret)
	if err != nil {
		return nil, err
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = outbox.DefaultMaxBytes
	}
	if o.Lease <= 0 {
		o.Lease = DefaultOutboxLease
	}
	if o.KeepDelivered <= 0 {
		o.KeepDelivered = outbox.DefaultKeepDelivered
	}
	if o.KeepDead <= 0 {
		o.KeepDead = outbox.DefaultKeepDead
	}
	if o.MaxFinished <= 0 {
		o.MaxFinished = outbox.DefaultMaxFinished
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	x := &Outbox{
		f: f, local: o.Local, seal: seal, o: o, log: log,
		me:      hex.EncodeToString(b[:]),
		maxIx:   int(o.MaxBytes/minCharge) + 1024,
		kStream: f.key("outbox", "stream"), kRec: f.key("outbox", "rec"), kQueued: f.key("outbox", "queued"),
		kBytes: f.key("outbox", "bytes"), kDeliv: f.key("outbox", "delivered"), kDead: f.key("outbox", "dead"),
		kLease: f.key("outbox", "lease"), kFirst: f.key("outbox", "first"), kCanary: f.key("outbox", "canary"),
		queues: map[string][]*oent{}, byID: map[string]*oent{}, inflight: map[string]*oent{}, endedSet: map[string]int{},
		held: map[string]*heldSend{}, routesOK: map[string]bool{},
		stop: make(chan struct{}),
	}
	return x, nil
}

// Start runs the courier's lease and the reading of the stream in the
// background; wake is told when there is something to deliver (a lease
// taken, sends read).
func (x *Outbox) Start(wake func()) {
	x.wakeMu.Lock()
	x.wake = wake
	x.wakeMu.Unlock()
	x.wg.Add(1)
	go x.run()
}

func (x *Outbox) woke() {
	x.wakeMu.Lock()
	w := x.wake
	x.wakeMu.Unlock()
	if w != nil {
		w()
	}
}

// run renews or takes the lease every second and, while it is held, reads
// the stream every outboxPull.
func (x *Outbox) run() {
	defer x.wg.Done()
	t := time.NewTicker(outboxPull)
	defer t.Stop()
	renew := time.Now()
	x.lease()
	for {
		select {
		case <-x.stop:
			return
		case <-x.f.stop:
			return
		case <-t.C:
		}
		if now := time.Now(); now.Sub(renew) >= time.Second {
			renew = now
			x.lease()
		}
		if x.holding() {
			if x.pull() {
				x.woke()
			}
			x.prune()
		}
		x.settleHeld(false)
	}
}

// holding says whether this proxy holds the lease now: renewed within the
// lease's last two thirds, so that it stops delivering well before another
// could take over.
func (x *Outbox) holding() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.holder != "" && time.Now().Before(x.heldUntil)
}

// lease renews or takes the lease. On taking it, the holder claims every
// pending entry of the group and reads the stream from its start.
func (x *Outbox) lease() { x.leaseUnder(true) }

// leaseUnder is lease; again: a canary found changed is checked once more
// at once (replaced, if it was not the fleet's), so that a holder keeps its
// lease when the canary still opens under its key.
func (x *Outbox) leaseUnder(again bool) {
	if !x.f.Up() {
		x.lose()
		return
	}
	cv := x.canaryValue()
	if cv == "" {
		x.lose() // the canary does not open (yet): the fleet's outbox is left alone
		return
	}
	x.mu.Lock()
	val := x.holder
	x.mu.Unlock()
	if val == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		val = x.me + ":" + hex.EncodeToString(b[:])
	}
	start := time.Now()
	var res []int64
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		res, err = leaseScript.Run(ctx, x.f.rdb, []string{x.kLease, x.kCanary}, val, x.o.Lease.Milliseconds(), cv).Int64Slice()
		return err
	})
	if err != nil || len(res) != 2 {
		return // held until heldUntil at most: holding() says no after it
	}
	if res[1] != 0 {
		x.dropped("a lease that was not the fleet's was broken")
	}
	switch res[0] {
	case -9:
		x.canaryChanged(cv)
		if again {
			x.leaseUnder(false)
			return
		}
		x.lose()
	case 0:
		x.lose()
	case 1, 2:
		x.mu.Lock()
		was := x.holder == val && time.Now().Before(x.heldUntil)
		x.holder = val
		x.heldUntil = start.Add(x.o.Lease * 2 / 3)
		x.mu.Unlock()
		if res[0] == 2 || !was {
			x.takeOver()
		}
	}
}

// lose forgets the lease and what it indexed.
func (x *Outbox) lose() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.holder != "" {
		x.log.Info("outbox: this proxy no longer delivers the fleet's sends")
	}
	x.holder = ""
	x.queues = map[string][]*oent{}
	x.byID = map[string]*oent{}
}

// takeOver readies the stream, claims every pending entry, and reads the
// new ones.
func (x *Outbox) takeOver() {
	x.resetIndex()
	x.ensure()
	start := "0-0"
	claimed := 0
	for i := 0; i <= x.maxIx/outboxBatch; i++ {
		var msgs []redis.XMessage
		var next string
		err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
			msgs, next, err = x.f.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: x.kStream, Group: outboxGroup, Consumer: x.me, Start: start, Count: outboxBatch,
			}).Result()
			return err
		})
		if err != nil {
			x.lose() // read again from the start at the next lease
			return
		}
		claimed += len(msgs)
		x.ingest(msgs)
		if next == "0-0" || next == "" || next == start {
			break
		}
		start = next
	}
	x.forgetConsumers()
	x.pull()
	x.mu.Lock()
	n := len(x.byID)
	x.mu.Unlock()
	x.log.Info("outbox: this proxy delivers the fleet's sends", zap.Int("claimed", claimed), zap.Int("queued", n))
	x.woke()
}

// resetIndex forgets what was indexed, to read it again.
func (x *Outbox) resetIndex() {
	x.mu.Lock()
	x.queues = map[string][]*oent{}
	x.byID = map[string]*oent{}
	x.mu.Unlock()
}

// ensure readies the keys: the stream and its group, and no key of another
// type.
func (x *Outbox) ensure() {
	var bad int64
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		bad, err = ensureScript.Run(ctx, x.f.rdb, []string{x.kStream, x.kRec, x.kQueued, x.kBytes, x.kDeliv, x.kDead, x.kLease, x.kFirst}, outboxGroup).Int64()
		return err
	})
	if err == nil && bad > 0 {
		x.dropped("a key of another type was deleted")
	}
}

// forgetConsumers deletes the group's other consumers that hold nothing
// (proxies gone), so that the group stays small.
func (x *Outbox) forgetConsumers() {
	var cs []redis.XInfoConsumer
	if x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		cs, err = x.f.rdb.XInfoConsumers(ctx, x.kStream, outboxGroup).Result()
		return err
	}) != nil {
		return
	}
	for i, c := range cs {
		if i >= 256 {
			break
		}
		if c.Name == x.me || c.Pending != 0 {
			continue
		}
		_ = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) error {
			return x.f.rdb.XGroupDelConsumer(ctx, x.kStream, outboxGroup, c.Name).Err()
		})
	}
}

// pull reads the entries new to the group, a few batches at most; it says
// whether it found any. First, if entries handed over before could not be
// indexed, it reads this consumer's pending entries again.
func (x *Outbox) pull() bool {
	x.mu.Lock()
	reread := x.reread
	x.reread = false
	x.mu.Unlock()
	found := reread && x.readOwnPending()
	for range outboxMaxRead {
		x.mu.Lock()
		full := len(x.byID) >= x.maxIx
		x.mu.Unlock()
		if full {
			return found
		}
		var streams []redis.XStream
		err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
			streams, err = x.f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: outboxGroup, Consumer: x.me, Streams: []string{x.kStream, ">"}, Count: outboxBatch, Block: -1,
			}).Result()
			return err
		})
		if errors.Is(err, redis.Nil) {
			return found
		}
		if err != nil {
			x.ensure() // NOGROUP after Redis lost the stream, or a key of another type
			return found
		}
		n := 0
		for _, s := range streams {
			n += len(s.Messages)
			x.ingest(s.Messages)
		}
		if n == 0 {
			return found
		}
		found = true
		if n < outboxBatch {
			return found
		}
	}
	return found
}

// readOwnPending reads the entries pending for this consumer (handed to it
// before) from the start, and indexes them; it says whether it found any.
// If it cannot, the next pull tries again.
func (x *Outbox) readOwnPending() bool {
	start, n := "0", 0
	for i := 0; i <= x.maxIx/outboxBatch; i++ {
		var streams []redis.XStream
		err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
			streams, err = x.f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: outboxGroup, Consumer: x.me, Streams: []string{x.kStream, start}, Count: outboxBatch, Block: -1,
			}).Result()
			return err
		})
		if errors.Is(err, redis.Nil) {
			break
		}
		if err != nil {
			x.mu.Lock()
			x.reread = true
			x.mu.Unlock()
			break
		}
		var msgs []redis.XMessage
		for _, s := range streams {
			msgs = append(msgs, s.Messages...)
		}
		n += len(msgs)
		x.ingest(msgs)
		if len(msgs) < outboxBatch || msgs[len(msgs)-1].ID == start {
			break
		}
		start = msgs[len(msgs)-1].ID
	}
	return n > 0
}

// ingest indexes the queued sends msgs name; an entry that is not a
// queued send's (no record, a record that does not read back, a finished
// send, an id indexed already) is dropped.
func (x *Outbox) ingest(msgs []redis.XMessage) {
	if len(msgs) == 0 {
		return
	}
	type cand struct {
		sid     string
		ms, seq uint64
		id      string
	}
	var cs []cand
	for _, m := range msgs {
		ms, seq, ok := parseStreamID(m.ID)
		if !ok {
			x.dropped("a stream entry with an id that is not one")
			continue // not acknowledgeable either: XAUTOCLAIM skips what it cannot parse
		}
		raw, _ := m.Values["i"].(string)
		id, ok := outbox.CanonicalID(raw)
		if !ok || len(m.Values) != 1 {
			x.dropped("a stream entry that is not a send's")
			x.drop(m.ID, "", "")
			continue
		}
		cs = append(cs, cand{sid: m.ID, ms: ms, seq: seq, id: id})
	}
	if len(cs) == 0 {
		return
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.id
	}
	vals, err := x.hmget(ids)
	var firsts []any
	if err == nil {
		firsts, err = x.hmgetFirst(ids)
	}
	if err != nil {
		// Pending, handed to this proxy: read again at the next pull.
		x.mu.Lock()
		x.reread = true
		x.mu.Unlock()
		return
	}
	for i, c := range cs {
		c.ms, c.seq = x.place(c.ms, c.seq, firsts[i])
		v, ok := vals[i].(string)
		if !ok {
			x.drop(c.sid, "", "") // deleted since it was kept
			continue
		}
		sd, err := x.open(c.id, v)
		if err != nil {
			x.drop(c.sid, c.id, v)
			continue
		}
		x.mu.Lock()
		have := x.byID[c.id]
		x.mu.Unlock()
		if have != nil && have.sid == c.sid {
			continue // read again (a group made again): indexed already
		}
		if sd.State != outbox.Queued || have != nil {
			x.drop(c.sid, "", "") // finished, or a copy of an entry indexed
			continue
		}
		e := &oent{sid: c.sid, ms: c.ms, seq: c.seq, id: c.id, queue: sd.Queue, kept: sd.Kept, due: sd.Due}
		x.mu.Lock()
		if x.holder != "" {
			q := x.queues[e.queue]
			j := sort.Search(len(q), func(j int) bool { return !q[j].before(e) })
			q = append(q, nil)
			copy(q[j+1:], q[j:])
			q[j] = e
			x.queues[e.queue] = q
			x.byID[e.id] = e
		}
		x.mu.Unlock()
	}
}

// drop drops a stream entry (sid, or none) and a record that did not read
// back (id and its value as read, or none).
// Only under the canary this proxy opened: a proxy under another key
// drops nothing.
func (x *Outbox) drop(sid, id, v string) {
	cv := x.canaryValue()
	if cv == "" {
		return
	}
	var n int64
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		n, err = dropScript.Run(ctx, x.f.rdb, []string{x.kStream, x.kRec, x.kQueued, x.kFirst, x.kCanary}, outboxGroup, sid, id, v, cv).Int64()
		return err
	})
	if err == nil && n == -9 {
		x.canaryChanged(cv)
	}
}

// forget takes e out of the index.
func (x *Outbox) forget(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e := x.byID[id]
	if e == nil {
		return
	}
	delete(x.byID, id)
	q := x.queues[e.queue]
	for i, o := range q {
		if o == e {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(x.queues, e.queue)
	} else {
		x.queues[e.queue] = q
	}
}

func (x *Outbox) entry(id string) *oent {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.byID[id]
}

// open opens a record read back; one that does not is counted. The
// tombstone of a settled Put is no send, and not counted.
func (x *Outbox) open(id, v string) (*outbox.Send, error) {
	if v == "x" {
		return nil, outbox.ErrNotFound
	}
	sd, err := x.seal.Open(id, []byte(v))
	if err != nil {
		x.dropped("a record that did not read back (" + outbox.DropReason(err) + ")")
		return nil, err
	}
	return sd, nil
}

// dropped counts a value read back from Redis that was not the fleet's.
func (x *Outbox) dropped(what string) {
	x.f.failed(OpOutbox)
	x.log.Warn("outbox: a value in Redis was not the fleet's and was dropped", zap.String("what", what))
}

// place is a send's place in its queue: the id of its first stream entry
// as first holds it, else (a send kept before first was written) the
// entry's own, ms-seq. A first that is not an entry id at or before the
// entry's own is not the fleet's: counted, and the entry's own is its
// place.
func (x *Outbox) place(ms, seq uint64, first any) (uint64, uint64) {
	f, ok := first.(string)
	if !ok {
		return ms, seq
	}
	fms, fseq, ok := parseStreamID(f)
	if !ok || fms > ms || fms == ms && fseq > seq {
		x.dropped("a send's first entry id that is not one")
		return ms, seq
	}
	return fms, fseq
}

// hmgetFirst reads the first entry ids of ids.
func (x *Outbox) hmgetFirst(ids []string) ([]any, error) {
	var vals []any
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		vals, err = x.f.rdb.HMGet(ctx, x.kFirst, ids...).Result()
		return err
	})
	if err == nil && len(vals) != len(ids) {
		err = errors.New("fleet: outbox: HMGET answered a wrong count")
	}
	return vals, err
}

func (x *Outbox) hmget(ids []string) ([]any, error) {
	var vals []any
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		vals, err = x.f.rdb.HMGet(ctx, x.kRec, ids...).Result()
		return err
	})
	if err == nil && len(vals) != len(ids) {
		err = errors.New("fleet: outbox: HMGET answered a wrong count")
	}
	return vals, err
}

// read reads the queued sends es (the holder's), dropping those that are
// not queued sends; with sending false, those being sent are left out.
func (x *Outbox) read(es []*oent, sending bool) ([]*outbox.Send, error) {
	if len(es) == 0 {
		return nil, nil
	}
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.id
	}
	vals, err := x.hmget(ids)
	if err != nil {
		return nil, err
	}
	var out []*outbox.Send
	for i, e := range es {
		v, ok := vals[i].(string)
		if !ok {
			x.forget(e.id)
			x.drop(e.sid, "", "")
			continue
		}
		sd, err := x.open(e.id, v)
		if err != nil {
			x.forget(e.id)
			x.drop(e.sid, e.id, v)
			continue
		}
		if sd.State != outbox.Queued {
			x.forget(e.id)
			x.drop(e.sid, "", "")
			continue
		}
		if sd.Sending && !sending {
			continue
		}
		out = append(out, sd)
	}
	return out, nil
}

// Put keeps s in Redis or, while Redis does not answer, in the local
// store. It returns only once one of them has it.
//
// A proxy whose key does not open the fleet's outbox (see the canary)
// keeps every send locally, as while Redis is down.
func (x *Outbox) Put(ctx context.Context, s *outbox.Send) (string, error) {
	if !x.f.Up() {
		return x.local.Put(ctx, s)
	}
	cv := x.canaryValue()
	if cv == "" {
		return x.local.Put(ctx, s)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	now := time.Now()
	if s.State == "" {
		s.State = outbox.Queued
	}
	if s.State != outbox.Queued {
		return "", fmt.Errorf("%w: state %q (a send is kept queued)", outbox.ErrInvalid, s.State)
	}
	if s.Kept.IsZero() {
		s.Kept = now
	}
	s.Updated = now
	id := x.ids.Next(now)
	rec, err := x.seal.Seal(id, s)
	if err != nil {
		return "", err
	}
	c := charge(s)
	var res []int64
	err = x.f.do(ctx, OpOutbox, func(ctx context.Context) (err error) {
		res, err = putScript.Run(ctx, x.f.rdb, []string{x.kStream, x.kRec, x.kQueued, x.kBytes, x.kFirst, x.kCanary},
			id, rec, c, Digest(s.Route), Digest(s.Queue), x.o.MaxBytes, outboxGroup, cv).Int64Slice()
		return err
	})
	if err == nil && len(res) != 2 {
		err = errors.New("fleet: outbox: the keep script answered a wrong shape")
	}
	switch {
	case err == nil:
		if res[1] != 0 {
			x.dropped("a key or counter that was not the fleet's, at a keep")
		}
		switch res[0] {
		case 1:
			s.ID = id
			return id, nil
		case -1:
			return "", outbox.ErrFull
		case -9: // the canary changed: checked again at the next keep
			x.canaryChanged(cv)
			return x.local.Put(ctx, s)
		}
		return "", fmt.Errorf("fleet: outbox: the new id %s is taken", id)
	case errors.Is(err, ErrDown), notSent(err):
		return x.local.Put(ctx, s)
	}
	// Redis may have run the script, or may run it still: settle it before
	// keeping it here.
	kept, serr := x.settleWithin(id, settleBudget)
	switch {
	case serr != nil:
		return x.hold(ctx, s, id, serr)
	case kept:
		s.ID = id
		return id, nil
	}
	return x.local.Put(ctx, s)
}

// settleBudget is how long a Put tries to settle a keep whose answer was
// lost before it holds the send locally.
const settleBudget = time.Second

// Backoff of the background settling of held sends.
const (
	heldFirst = 250 * time.Millisecond
	heldMax   = 5 * time.Second
	heldBatch = 64 // settled per round at most
)

// settle finds out whether the Put of id was kept, and makes sure it will
// not be if it was not.
func (x *Outbox) settle(id string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), x.f.timeout)
	defer cancel()
	n, err := settleScript.Run(ctx, x.f.rdb, []string{x.kRec, x.kDeliv}, id, time.Now().UnixMilli()).Int64()
	if err != nil {
		x.f.failed(OpOutbox)
		return false, err
	}
	return n == 1, nil
}

// settleWithin settles the Put of id, trying again with a backoff while
// it is not known, for about budget.
func (x *Outbox) settleWithin(id string, budget time.Duration) (bool, error) {
	end := time.Now().Add(budget)
	wait := 50 * time.Millisecond
	for {
		kept, err := x.settle(id)
		if err == nil {
			return kept, nil
		}
		if time.Until(end) < wait {
			return false, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-x.stop:
			t.Stop()
			return false, err
		}
		wait *= 2
	}
}

// heldSend is a send kept locally while its keep in Redis is not settled.
type heldSend struct {
	rid  string        // its id in Redis
	next time.Time     // when to try settling it again
	wait time.Duration // the backoff
}

// hold keeps s locally, held: marked as being sent, so that the local
// courier leaves it alone (Heads leaves it out, Expired and Queue skip a
// marked send) and a restart before it is settled makes it unknown, never
// sent twice; settleHeld later deletes it (Redis has the send under rid)
// or releases it (the tombstone is written: Redis never will). It is kept:
// the deferred answer is right. If the local store refuses it too, the
// call is answered as without defer.
func (x *Outbox) hold(ctx context.Context, s *outbox.Send, rid string, serr error) (string, error) {
	h := *s
	h.Sending = true
	x.holdMu.Lock()
	defer x.holdMu.Unlock()
	lid, err := x.local.Put(ctx, &h)
	if err != nil {
		return "", fmt.Errorf("fleet: outbox: a keep whose outcome is not known (%v), not kept here either: %w", serr, err)
	}
	x.mu.Lock()
	x.held[lid] = &heldSend{rid: rid, next: time.Now().Add(heldFirst), wait: heldFirst}
	x.mu.Unlock()
	s.ID = lid
	x.log.Warn("outbox: a send whose keep in Redis is not known is kept here, held until Redis answers",
		zap.String("id", lid), zap.String("fleet_id", rid), zap.Error(serr))
	return lid, nil
}

// settleHeld settles the held sends due (all with force): Redis has one,
// and delivers it: its local copy is deleted; the tombstone is written:
// its local copy is released to the local courier.
func (x *Outbox) settleHeld(force bool) {
	now := time.Now()
	x.mu.Lock()
	var due []string
	for lid, h := range x.held {
		if len(due) < heldBatch && (force || !now.Before(h.next)) {
			due = append(due, lid)
		}
	}
	x.mu.Unlock()
	released := false
	for _, lid := range due {
		x.mu.Lock()
		h := x.held[lid]
		x.mu.Unlock()
		if h == nil {
			continue
		}
		kept, err := x.settle(h.rid)
		if err == nil {
			if kept {
				err = x.local.Forget(lid)
			} else {
				err = x.local.Update(&outbox.Send{ID: lid, State: outbox.Queued})
			}
			if errors.Is(err, outbox.ErrNotFound) || errors.Is(err, outbox.ErrNotQueued) {
				err = nil // deleted or finished by an operator meanwhile
			}
		}
		x.mu.Lock()
		if err != nil {
			h.wait = min(2*h.wait, heldMax)
			h.next = time.Now().Add(h.wait)
			x.mu.Unlock()
			continue
		}
		delete(x.held, lid)
		x.mu.Unlock()
		if kept {
			x.log.Info("outbox: a held send is kept in Redis; its local copy is deleted",
				zap.String("id", lid), zap.String("fleet_id", h.rid))
		} else {
			x.log.Info("outbox: a held send was not kept in Redis; it is delivered from here", zap.String("id", lid))
			released = true
		}
	}
	if released {
		x.woke()
	}
}

// notSent says whether err says the script was not run: no connection
// could be had, or Redis refused it for want of memory (maxmemory).
func notSent(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) && strings.HasPrefix(re.Error(), "OOM ") {
		return true
	}
	return errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed)
}

// charge is what a queued send counts against max_bytes: its content, at
// least 1 KiB. It never changes while the send is kept.
func charge(s *outbox.Send) int64 {
	n := 128 + len(s.Queue) + len(s.Route) + len(s.Method) + len(s.Path) + len(s.Query) + len(s.Body) + len(s.Facts)
	for k, vs := range s.Header {
		n += len(k)
		for _, v := range vs {
			n += len(v)
		}
	}
	return max(int64(n), minCharge)
}

// Heads are the local store's heads and, while this proxy holds the lease,
// the fleet's: one per queue, the one kept first.
func (x *Outbox) Heads(max int) ([]*outbox.Send, error) {
	x.holdMu.RLock()
	defer x.holdMu.RUnlock()
	local, lerr := x.local.Heads(max)
	if !x.holding() {
		return x.notInFlight(local), lerr
	}
	var shared []*outbox.Send
	for pass := 0; pass < 4; pass++ {
		x.mu.Lock()
		es := make([]*oent, 0, len(x.queues))
		for _, q := range x.queues {
			es = append(es, q[0])
		}
		x.mu.Unlock()
		sort.Slice(es, func(i, j int) bool { return es[i].before(es[j]) })
		if len(es) > max {
			es = es[:max]
		}
		before := len(es)
		var err error
		if shared, err = x.read(es, true); err != nil {
			return local, lerr
		}
		if len(shared) == before {
			break // a dropped head makes its queue's next the head: read again
		}
	}
	return x.notInFlight(mergeHeads(local, shared, max)), lerr
}

// notInFlight leaves out the heads this proxy is sending now, and those
// held.
func (x *Outbox) notInFlight(hs []*outbox.Send) []*outbox.Send {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := hs[:0:0]
	for _, h := range hs {
		if x.held[h.ID] != nil {
			continue
		}
		_, in := x.inflight[h.ID]
		if !h.Sending || !in && x.endedSet[h.ID] == 0 {
			out = append(out, h)
		}
	}
	return out
}

// mergeHeads is one head per queue, the one kept first, at most max, the
// oldest first.
func mergeHeads(a, b []*outbox.Send, max int) []*outbox.Send {
	if len(b) == 0 {
		return a
	}
	by := make(map[string]*outbox.Send, len(a)+len(b))
	for _, s := range append(append([]*outbox.Send(nil), a...), b...) {
		if o := by[s.Queue]; o == nil || s.Kept.Before(o.Kept) {
			by[s.Queue] = s
		}
	}
	out := make([]*outbox.Send, 0, len(by))
	for _, s := range by {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kept.Before(out[j].Kept) })
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// Expired are the local store's and, while this proxy holds the lease,
// the fleet's queued sends due by now.
func (x *Outbox) Expired(now time.Time, max int) ([]*outbox.Send, time.Time, error) {
	out, next, err := x.local.Expired(now, max)
	if err != nil || !x.holding() || len(out) >= max {
		return out, next, err
	}
	var es []*oent
	x.mu.Lock()
	for _, q := range x.queues {
		for _, e := range q {
			switch {
			case !e.due.After(now):
				if len(es) < max-len(out) {
					es = append(es, e)
				}
			case next.IsZero() || e.due.Before(next):
				next = e.due
			}
		}
	}
	x.mu.Unlock()
	shared, rerr := x.read(es, false)
	if rerr != nil {
		return out, next, nil
	}
	return append(out, shared...), next, nil
}

// queueMaxBytes bounds the bodies Queue reads from Redis beyond the first
// send's: a merge uses far less (a robot message's body limit).
const queueMaxBytes = 64 << 10

// Queue is the oldest queued sends of queue, from the fleet's while this
// proxy holds the lease and its head there was kept before the local
// one's, else from the local store. From Redis it reads a few records at
// a time, and stops once the bodies beyond the first pass queueMaxBytes.
func (x *Outbox) Queue(queue string, max int) ([]*outbox.Send, error) {
	var es []*oent
	if x.holding() {
		x.mu.Lock()
		q := x.queues[queue]
		if len(q) > max {
			q = q[:max]
		}
		es = append(es, q...)
		x.mu.Unlock()
	}
	if len(es) == 0 {
		return x.local.Queue(queue, max)
	}
	if lh, err := x.local.Queue(queue, 1); err == nil && len(lh) == 1 && lh[0].Kept.Before(es[0].kept) {
		return x.local.Queue(queue, max)
	}
	var out []*outbox.Send
	size := 0
	for len(es) > 0 {
		n := min(len(es), 8)
		got, err := x.read(es[:n], false)
		if err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, err
		}
		for _, sd := range got {
			if len(out) > 0 {
				if size += len(sd.Body); size > queueMaxBytes {
					return out, nil
				}
			}
			out = append(out, sd)
		}
		es = es[n:]
	}
	return out, nil
}

// current reads the fleet's record id: the send, and its value as read
// (for the scripts' compare and set). ErrNotFound when there is none.
func (x *Outbox) current(id string) (*outbox.Send, string, error) {
	var v string
	err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		v, err = x.f.rdb.HGet(ctx, x.kRec, id).Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return nil, "", outbox.ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	sd, oerr := x.open(id, v)
	if oerr != nil {
		if v != "x" {
			x.drop("", id, v)
		}
		return nil, "", outbox.ErrNotFound
	}
	return sd, v, nil
}

var errLease = errors.New("fleet: outbox: this proxy no longer holds the courier's lease")

// errChanged: the record changed between its read and the write (an
// operator's retry or delete): the write is not made.
var errChanged = errors.New("fleet: outbox: the send changed meanwhile")

// Begin marks the send as being sent, in Redis for the fleet's (only while
// this proxy holds the lease), else in the local store; Update records its
// outcome in the same store.
func (x *Outbox) Begin(id string) error {
	e := x.entry(id)
	err := x.begin(id, e)
	if err == nil {
		x.mu.Lock()
		x.inflight[id] = e
		x.mu.Unlock()
	}
	return err
}

func (x *Outbox) begin(id string, e *oent) error {
	if e == nil {
		return x.local.Begin(id)
	}
	holder := x.holderValue()
	if holder == "" {
		return errLease
	}
	cur, old, err := x.current(id)
	if err != nil {
		return err
	}
	if cur.State != outbox.Queued {
		return outbox.ErrNotQueued
	}
	nx := *cur
	nx.Sending, nx.Updated = true, time.Now()
	rec, err := x.seal.Seal(id, &nx)
	if err != nil {
		return err
	}
	var n int64
	err = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		n, err = beginScript.Run(ctx, x.f.rdb, []string{x.kLease, x.kRec}, holder, id, old, rec).Int64()
		return err
	})
	return x.scriptResult(n, err)
}

func (x *Outbox) scriptResult(n int64, err error) error {
	switch {
	case err != nil:
		return err
	case n == 1:
		return nil
	case n == -1:
		x.lose()
		return errLease
	case n == -3:
		x.dropped("a key of another type at a write")
	}
	return errChanged
}

func (x *Outbox) holderValue() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if time.Now().After(x.heldUntil) {
		return ""
	}
	return x.holder
}

// Update records what a send came to: the fleet's in Redis (only while
// this proxy holds the lease; a finished one's entry is acknowledged and
// deleted), the others in the local store. A send marked by Begin is
// recorded in the store it was marked in, even if the lease was lost or
// taken again meanwhile: with the lease gone the fenced write fails
// (errLease), the record keeps its mark, and the next holder makes it
// unknown, as for a holder that stopped; with the lease taken again the
// write goes through. As the local store does, a delivered send keeps no
// query, header or body.
func (x *Outbox) Update(s *outbox.Send) error {
	x.mu.Lock()
	e, begun := x.inflight[s.ID]
	x.mu.Unlock()
	if !begun {
		e = x.entry(s.ID) // finished without an attempt (dead, unknown)
	}
	err := x.update(s, e)
	// Whatever it came to: a mark left by a failed Update is the next
	// Heads' to find (unknown).
	x.mu.Lock()
	delete(x.inflight, s.ID)
	x.mu.Unlock()
	if err == nil {
		x.updated(s.ID)
	}
	return err
}

func (x *Outbox) update(s *outbox.Send, e *oent) error {
	if e == nil {
		return x.local.Update(s)
	}
	holder := x.holderValue()
	if holder == "" {
		return errLease
	}
	cur, old, err := x.current(s.ID)
	if err != nil {
		if errors.Is(err, outbox.ErrNotFound) {
			x.forget(s.ID)
		}
		return err
	}
	if cur.State != outbox.Queued {
		x.forget(s.ID)
		return outbox.ErrNotQueued
	}
	now := time.Now()
	nx := *cur
	nx.State, nx.Attempts, nx.Status, nx.Sending = s.State, s.Attempts, s.Status, false
	nx.Reason, nx.Answer, nx.Updated = s.Reason, s.Answer, now
	switch nx.State {
	case outbox.Queued:
		nx.Answer = nil
	case outbox.Delivered:
		nx.Query, nx.Header, nx.Body = "", nil, nil
	}
	rec, err := x.seal.Seal(s.ID, &nx)
	if err != nil {
		return err
	}
	finished, fin := "0", x.kDead
	if nx.State != outbox.Queued {
		finished = "1"
	}
	if nx.State == outbox.Delivered {
		fin = x.kDeliv
	}
	var n int64
	err = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		n, err = updateScript.Run(ctx, x.f.rdb, []string{x.kLease, x.kRec, x.kQueued, x.kBytes, x.kStream, fin},
			holder, s.ID, old, rec, finished, charge(cur), Digest(cur.Route), Digest(cur.Queue), e.sid, outboxGroup, now.UnixMilli()).Int64()
		return err
	})
	if err = x.scriptResult(n, err); err != nil {
		return err
	}
	if finished == "1" {
		x.forget(s.ID)
	}
	s.Updated = now
	return nil
}

// updated notes that this proxy recorded the outcome of id.
func (x *Outbox) updated(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.ended[x.endedAt]; old != "" {
		if x.endedSet[old]--; x.endedSet[old] <= 0 {
			delete(x.endedSet, old)
		}
	}
	x.ended[x.endedAt] = id
	x.endedSet[id]++
	x.endedAt = (x.endedAt + 1) % len(x.ended)
}

// Get is the send id, from the local store or the fleet's.
func (x *Outbox) Get(id string) (*outbox.Send, error) {
	sd, err := x.local.Get(id)
	if !errors.Is(err, outbox.ErrNotFound) {
		return sd, err
	}
	_, sd, _, err = x.shared(id)
	return sd, err
}

// shared finds in Redis a send the local store does not hold: its
// canonical id, its record, and the sealed value read (which the scripts
// compare, so that a change meanwhile is not overwritten).
func (x *Outbox) shared(id string) (string, *outbox.Send, string, error) {
	cid, ok := outbox.CanonicalID(id)
	if !ok || !x.f.Up() || x.canaryValue() == "" {
		return "", nil, "", outbox.ErrNotFound
	}
	cur, old, err := x.current(cid)
	return cid, cur, old, err
}

// Retry puts a dead or unknown send back in its queue, in the store that
// holds it: in its old place, before the sends kept after it (in Redis, a
// new stream entry read in the place of its first, kept in first).
func (x *Outbox) Retry(id string) error {
	err := x.local.Retry(id)
	if !errors.Is(err, outbox.ErrNotFound) {
		return err
	}
	cid, cur, old, err := x.shared(id)
	if err != nil {
		return err
	}
	if cur.State != outbox.Dead && cur.State != outbox.Unknown {
		return outbox.ErrNotDead
	}
	now := time.Now()
	nx := *cur
	nx.State, nx.Reason, nx.Status, nx.Answer, nx.Updated, nx.Sending = outbox.Queued, "", 0, nil, now, false
	nx.Due = now.Add(max(cur.Due.Sub(cur.Kept), 0))
	rec, err := x.seal.Seal(cid, &nx)
	if err != nil {
		return err
	}
	var res []int64
	err = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		res, err = retryScript.Run(ctx, x.f.rdb, []string{x.kRec, x.kQueued, x.kBytes, x.kStream, x.kDeliv, x.kDead, x.kFirst},
			cid, old, rec, charge(cur), Digest(cur.Route), Digest(cur.Queue), x.o.MaxBytes, outboxGroup).Int64Slice()
		return err
	})
	if err != nil {
		return err
	}
	if len(res) != 2 {
		return errors.New("fleet: outbox: the retry script answered a wrong shape")
	}
	if res[1] != 0 {
		x.dropped("a key or counter that was not the fleet's, at a retry")
	}
	switch res[0] {
	case 1:
		x.invalidateStats()
		return nil
	case -1:
		return outbox.ErrFull
	}
	return errChanged
}

// Delete forgets a send, in the store that holds it.
func (x *Outbox) Delete(id string) error {
	err := x.local.Delete(id)
	if !errors.Is(err, outbox.ErrNotFound) {
		return err
	}
	cid, cur, old, err := x.shared(id)
	if err != nil {
		return err
	}
	if cur.Sending {
		return outbox.ErrSending // the script's check of old fences a mark made since
	}
	var n int64
	err = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		n, err = deleteScript.Run(ctx, x.f.rdb, []string{x.kRec, x.kQueued, x.kBytes, x.kDeliv, x.kDead, x.kFirst},
			cid, old, charge(cur), Digest(cur.Route), Digest(cur.Queue)).Int64()
		return err
	})
	if err != nil {
		return err
	}
	if n != 1 {
		return errChanged
	}
	x.invalidateStats()
	return nil
}

// Stats are the local store's counts plus the fleet's, read from the
// records' heads (at most statsEvery old).
func (x *Outbox) Stats() outbox.Stats {
	st := x.local.Stats()
	sh, ok := x.sharedStats()
	if !ok {
		return st
	}
	if st.Routes == nil {
		st.Routes = map[string]outbox.RouteStats{}
	}
	for route, r := range sh.Routes {
		l := st.Routes[route]
		l.Queued += r.Queued
		l.Delivered += r.Delivered
		l.Dead += r.Dead
		l.Unknown += r.Unknown
		l.QueuedBytes += r.QueuedBytes
		l.Oldest = max(l.Oldest, r.Oldest)
		st.Routes[route] = l
	}
	st.QueuedBytes += sh.QueuedBytes
	st.FinishedBytes += sh.FinishedBytes
	return st
}

func (x *Outbox) invalidateStats() {
	x.statsMu.Lock()
	x.statsAt = time.Time{}
	x.statsMu.Unlock()
}

// sharedStats counts the fleet's records by route and state, from their
// heads (unopened: one record is opened per new route, to know that the
// route is one this app's proxies kept a send under). A head that does not
// read, a route that is not UTF-8 or is too long, and a route no record
// that opens holds are not counted, so that a value planted in Redis
// neither breaks the metrics nor invents routes; at most statsRoutes
// routes are counted.
func (x *Outbox) sharedStats() (outbox.Stats, bool) {
	if !x.f.Up() || x.canaryValue() == "" {
		return outbox.Stats{}, false
	}
	x.statsMu.Lock()
	defer x.statsMu.Unlock()
	if !x.statsAt.IsZero() && time.Since(x.statsAt) < statsEvery {
		return x.stats, true
	}
	now := time.Now()
	st := outbox.Stats{Routes: map[string]outbox.RouteStats{}}
	var cursor uint64
	bad, failed := 0, 0
	for range statsMaxScan {
		var kv []string
		var next uint64
		err := x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
			kv, next, err = x.f.rdb.HScan(ctx, x.kRec, cursor, "", 512).Result()
			return err
		})
		if err != nil {
			return outbox.Stats{}, false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "x" {
				continue
			}
			h, err := outbox.Head([]byte(kv[i+1]))
			if err != nil || len(h.Route) > statsMaxRoute || !utf8.ValidString(h.Route) {
				bad++
				continue
			}
			if !x.routesOK[h.Route] {
				if len(x.routesOK) >= statsRoutes || failed >= statsOpens {
					continue
				}
				if _, err := x.seal.Open(kv[i], []byte(kv[i+1])); err != nil {
					failed++
					bad++
					continue
				}
				x.routesOK[h.Route] = true
			}
			r := st.Routes[h.Route]
			switch h.State {
			case outbox.Queued:
				r.Queued++
				if age := now.Sub(h.Kept); age > r.Oldest {
					r.Oldest = age
				}
			case outbox.Delivered:
				r.Delivered++
			case outbox.Dead:
				r.Dead++
			case outbox.Unknown:
				r.Unknown++
			}
			st.Routes[h.Route] = r
		}
		cursor = next
		if cursor == 0 {
			break
		}
	}
	if bad > 0 {
		x.dropped("records whose head does not read back, at a count")
	}
	var counters []any
	if x.f.do(context.Background(), OpOutbox, func(ctx context.Context) (err error) {
		counters, err = x.f.rdb.HMGet(ctx, x.kBytes, "all", "fin").Result()
		return err
	}) == nil && len(counters) == 2 {
		st.QueuedBytes = counter(counters[0])
		st.FinishedBytes = counter(counters[1])
	}
	x.stats, x.statsAt = st, time.Now()
	return st, true
}

// counter reads a counter back: 0 for one that is not.
func counter(v any) int64 {
	s, _ := v.(string)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > 1<<50 {
		return 0
	}
	return n
}

// prune forgets the finished sends past their time or the bounds, every
// outboxPrune, from the holder.
func (x *Outbox) prune() {
	x.mu.Lock()
	due := time.Since(x.lastPrune) >= outboxPrune
	if due {
		x.lastPrune = time.Now()
	}
	x.mu.Unlock()
	if !due {
		return
	}
	now := time.Now()
	_ = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) error {
		return pruneScript.Run(ctx, x.f.rdb, []string{x.kRec, x.kQueued, x.kBytes, x.kDeliv, x.kDead, x.kStream, x.kFirst},
			now.Add(-x.o.KeepDelivered).UnixMilli(), now.Add(-x.o.KeepDead).UnixMilli(),
			x.o.MaxFinished, x.o.MaxBytes, outboxPruneN).Err()
	})
}

// Close stops the background work, gives the lease up so that another
// proxy takes over at once, and closes the local store. What is queued in
// Redis stays there.
func (x *Outbox) Close() error {
	x.stopOnce.Do(func() { close(x.stop) })
	x.wg.Wait()
	x.settleHeld(true) // what stays held is unknown at the next start
	if holder := x.holderValue(); holder != "" && x.f.Up() {
		_ = x.f.do(context.Background(), OpOutbox, func(ctx context.Context) error {
			return releaseScript.Run(ctx, x.f.rdb, []string{x.kLease}, holder).Err()
		})
	}
	x.lose()
	return x.local.Close()
}

// Holding says whether this proxy delivers the fleet's sends now (for
// tests and /readyz-like reports).
func (x *Outbox) Holding() bool { return x.holding() }

// parseStreamID reads a stream entry's id, ms-seq.
func parseStreamID(s string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(s, "-")
	if !found || len(a) == 0 || len(a) > 20 || len(b) == 0 || len(b) > 20 {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}
