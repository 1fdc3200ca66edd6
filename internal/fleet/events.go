package fleet

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Breaker openings, IP bans and quota stops are shared as transitions, not
// per call: the proxy whose breaker opens (or that meets the ban, or a
// 90020) records it in Redis with its end and publishes it on
// <prefix>:{<app>}:events; every proxy listens on that channel in the
// background and opens the route (or stops everything, or stops the route)
// until then. Calls pay nothing for it: no Redis on the hot path.
//
// What is in force is kept in three known keys, sorted sets, one per kind
// (<prefix>:{<app>}:state:open, :state:ban and :state:quota), each member a
// route ("ban" for the ban) scored by its end in unix ms. A write trims the
// members that ended and keeps at most maxHeld, and sets the key's expiry
// to its last member's end. A proxy that (re)connects reads the three in
// one round trip of bounded cost, whatever else the database holds: a late
// joiner or a Redis restart misses nothing that is still in force, and the
// read never scans the keyspace.

const (
	kindOpen = "open"
	kindBan  = "ban"
	// kindPenalty is published by the penalty script (pace.go).
	kindPenalty = "pen"
	// kindQuota: a route answered 90020 (shared.go).
	kindQuota = "quota"
	// kindResume: a route stopped for the month answered (its probe got
	// through): the stop is lifted.
	kindResume = "resume"
)

type events struct {
	f  *Fleet
	id string // this proxy, to skip its own messages

	mu sync.Mutex
	// to applies the others' transitions here (the decorators, once
	// Decorate has run); nil: they are read but applied nowhere.
	to Applier

	ctx    context.Context
	cancel context.CancelFunc
	ps     *redis.PubSub // the subscription in use, closed by close to end its read
	kick   chan struct{} // a resync is due

	// lim bounds what a burst of messages applies and logs (heard.go).
	lim limiter

	syncs atomic.Uint64 // resyncs made (tests)
}

func newEvents(f *Fleet) *events {
	ctx, cancel := context.WithCancel(context.Background())
	e := &events{f: f, id: lockID(), ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1)}
	f.every(time.Second, e.summary)
	return e
}

func (e *events) close() {
	e.cancel()
	e.mu.Lock()
	if e.ps != nil {
		_ = e.ps.Close()
	}
	e.mu.Unlock()
}

// use records the subscription in use; false once closed (ps is closed).
func (e *events) use(ps *redis.PubSub) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		_ = ps.Close()
		return false
	}
	e.ps = ps
	return true
}

func (e *events) resync() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Applier applies here what another proxy of the fleet met: a route's
// breaker opening, the egress IP's ban, an API's penalty, a route's
// monthly quota spent, each holding until until; a route's quota stop
// lifted.
type Applier interface {
	Opened(route string, until time.Time)
	Banned(until time.Time)
	Penalized(api string, until time.Time)
	QuotaStopped(route string, until time.Time)
	QuotaResumed(route string)
}

// applyTo makes a the applier of the others' transitions (before Start).
func (e *events) applyTo(a Applier) {
	e.mu.Lock()
	e.to = a
	e.mu.Unlock()
}

// PublishOpen tells the fleet that route's breaker opened here for d.
func (f *Fleet) PublishOpen(route string, d time.Duration) {
	f.publish(kindOpen, route, d)
}

// PublishBan tells the fleet that DingTalk banned the egress IP for d.
func (f *Fleet) PublishBan(d time.Duration) {
	f.publish(kindBan, "", d)
}

// maxHeld bounds each kind's sorted set (the routes opened or stopped at
// once), and so what a resync reads.
const maxHeld = 1024

// stateKeep bounds a state key's expiry: no transition lasts longer (a
// quota stop lasts the month).
const stateKeep = 40 * 24 * time.Hour

// banMember is the ban's member in its sorted set.
const banMember = "ban"

// stateScript records a transition in its kind's sorted set, or removes
// one (a lifted stop), and publishes it. KEYS: the sorted set. ARGV: "add"
// or "rem", the member, its end (unix ms), the channel, the message,
// maxHeld, the longest expiry (ms). A key of another type (not the
// fleet's) is replaced. Returns 1 if it was, else 0.
var stateScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bad = 0
local ty = redis.call('TYPE', KEYS[1]).ok
if ty ~= 'none' and ty ~= 'zset' then
  redis.call('DEL', KEYS[1])
  bad = 1
end
if ARGV[1] == 'add' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local most = tonumber(ARGV[6])
if n > most then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - most - 1)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local keep = tonumber(last[2]) - now
  local cap = tonumber(ARGV[7])
  if keep ~= keep or keep > cap then keep = cap end
  if keep < 1 then keep = 1 end
  redis.call('PEXPIRE', KEYS[1], math.ceil(keep))
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return bad
`)

// stateKey is the sorted set of kind's transitions in force.
func (f *Fleet) stateKey(kind string) string { return f.key("state", kind) }

// publish records the transition and publishes it in one round trip. It
// runs in its own goroutine: a breaker's state change must not wait on
// Redis.
func (f *Fleet) publish(kind, route string, d time.Duration) {
	if d <= 0 || !f.Up() {
		return
	}
	until := time.Now().Add(d)
	member := route
	if kind == kindBan {
		member = banMember
	}
	f.record("add", kind, kind, member, route, until)
}

// publishResume lifts route's quota stop for the fleet: its record is
// removed, and every proxy told.
func (f *Fleet) publishResume(route string) {
	if !f.Up() {
		return
	}
	f.record("rem", kindQuota, kindResume, route, route, time.Now())
}

// record runs stateScript in the background: op ("add" or "rem") member in
// the sorted set of kind, and publish the message of kind msgKind.
func (f *Fleet) record(op, kind, msgKind, member, route string, until time.Time) {
	ms := strconv.FormatInt(until.UnixMilli(), 10)
	msg := msgKind + " " + f.events.id + " " + ms + " " + route
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_ = f.do(context.Background(), OpPublish, func(ctx context.Context) error {
			replaced, err := stateScript.Run(ctx, f.rdb, []string{f.stateKey(kind)}, op, member, ms, f.key("events"), msg,
				maxHeld, stateKeep.Milliseconds()).Int64()
			if replaced != 0 {
				f.failed(OpPublish) // a key of another type at the state's name
			}
			return err
		})
	}()
}

// run listens for the others' transitions until Close, subscribing again
// whenever the connection drops.
func (e *events) run() {
	defer e.f.wg.Done()
	ch := e.f.key("events")
	for e.ctx.Err() == nil {
		if !e.f.Up() {
			if !e.wait(e.f.opts.ProbeEvery) {
				return
			}
			continue
		}
		ps := e.f.rdb.Subscribe(e.ctx, ch)
		if !e.use(ps) {
			return
		}
		ctx, cancel := context.WithTimeout(e.ctx, time.Second)
		_, err := ps.Receive(ctx) // the subscription's confirmation
		cancel()
		if err != nil {
			_ = ps.Close()
			if e.ctx.Err() == nil {
				e.f.failed(OpSubscribe)
			}
			if !e.wait(e.f.opts.ProbeEvery) {
				return
			}
			continue
		}
		e.sync()
		for e.ctx.Err() == nil {
			select {
			case <-e.kick:
				e.sync()
			default:
			}
			msg, err := ps.ReceiveTimeout(e.ctx, time.Second)
			if err != nil {
				if isTimeout(err) {
					if perr := ps.Ping(e.ctx); perr == nil {
						continue
					}
				}
				break
			}
			if m, ok := msg.(*redis.Message); ok {
				e.handle(m.Payload)
			}
		}
		_ = ps.Close()
	}
}

// wait sleeps d, or until a resync is asked for; false once closed.
func (e *events) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e.ctx.Done():
		return false
	case <-t.C:
	case <-e.kick:
	}
	return true
}

// syncScript reads the transitions in force, those ending after now, at
// most ARGV[1] of each kind. KEYS: the sorted sets of the openings, the ban
// and the quota stops. A key of another type (not the fleet's) is deleted.
// Returns {keys deleted, {member, end, ...} for each key}.
var syncScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {0}
for i, k in ipairs(KEYS) do
  local ty = redis.call('TYPE', k).ok
  if ty == 'zset' then
    out[i + 1] = redis.call('ZRANGEBYSCORE', k, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
  else
    if ty ~= 'none' then
      redis.call('DEL', k)
      out[1] = out[1] + 1
    end
    out[i + 1] = {}
  end
end
return out
`)

// syncKinds are the kinds a resync reads, in syncScript's order.
var syncKinds = []string{kindOpen, kindBan, kindQuota}

// sync reads the openings, the ban and the quota stops in force, for a
// proxy that was not listening when they were published: one round trip,
// whatever the database holds besides.
func (e *events) sync() {
	if !e.syncOnce() {
		// Not read (Redis slow or away): read again soon, not only at the
		// next reconnect, or a joiner misses the transitions in force.
		time.AfterFunc(e.f.opts.ProbeEvery, e.resync)
	}
}

// syncOnce reads the transitions in force and applies them; false when
// they could not be read.
func (e *events) syncOnce() bool {
	f := e.f
	keys := make([]string, len(syncKinds))
	for i, k := range syncKinds {
		keys[i] = f.stateKey(k)
	}
	var res []any
	err := f.do(e.ctx, OpSync, func(ctx context.Context) (err error) {
		res, err = syncScript.Run(ctx, f.rdb, keys, maxHeld).Slice()
		return err
	})
	e.syncs.Add(1)
	if err != nil || len(res) != len(syncKinds)+1 {
		return e.ctx.Err() != nil // closed: nothing to read again
	}
	if bad, _ := res[0].(int64); bad > 0 {
		f.failed(OpSync) // keys of another type at the state's names, deleted
	}
	for i, kind := range syncKinds {
		pairs, _ := res[i+1].([]any)
		for j := 0; j+1 < len(pairs); j += 2 {
			member, _ := pairs[j].(string)
			score, _ := pairs[j+1].(string)
			ms, err := strconv.ParseFloat(score, 64)
			if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) {
				f.failed(OpEvent)
				continue
			}
			route := member
			if kind == kindBan {
				route = ""
			}
			e.accept(event{kind: kind, route: route, until: time.UnixMilli(int64(ms))}, true)
		}
	}
	return true
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
