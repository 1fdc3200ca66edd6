package fleet

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Breaker openings and IP bans are shared as transitions, not per call: the
// proxy whose breaker opens (or that meets the ban) writes a key with the
// opening's expiry and publishes it on <prefix>:<app>:events; every proxy
// listens on that channel in the background and opens the route (or stops
// everything) until then. A proxy that (re)connects reads the keys, so a
// late joiner or a Redis restart misses nothing that is still in force.
// Calls pay nothing for it: no Redis on the hot path.

const (
	kindOpen = "open"
	kindBan  = "ban"
	// kindPenalty is published by the penalty script (pace.go).
	kindPenalty = "pen"
	// kindQuota: a route answered 90020 (shared.go).
	kindQuota = "quota"
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
}

func newEvents(f *Fleet) *events {
	ctx, cancel := context.WithCancel(context.Background())
	return &events{f: f, id: lockID(), ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1)}
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
// monthly quota spent. Each holds until until.
type Applier interface {
	Opened(route string, until time.Time)
	Banned(until time.Time)
	Penalized(api string, until time.Time)
	QuotaStopped(route string, until time.Time)
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

// publish writes the transition's key and message in one round trip. It
// runs in its own goroutine: a breaker's state change must not wait on
// Redis.
func (f *Fleet) publish(kind, route string, d time.Duration) {
	if d <= 0 || !f.Up() {
		return
	}
	until := time.Now().Add(d)
	key := f.key(kindBan)
	if kind != kindBan {
		key = f.key(kind, Digest(route))
	}
	val := strconv.FormatInt(until.UnixMilli(), 10) + " " + route
	msg := kind + " " + f.events.id + " " + val
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_ = f.do(context.Background(), OpPublish, func(ctx context.Context) error {
			p := f.rdb.Pipeline()
			p.Set(ctx, key, val, d)
			p.Publish(ctx, f.key("events"), msg)
			_, err := p.Exec(ctx)
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

// sync reads the openings and the ban in force, for a proxy that was not
// listening when they were published.
func (e *events) sync() {
	f := e.f
	var vals []string
	err := f.do(e.ctx, OpSync, func(ctx context.Context) error {
		var keys, kinds []string
		for _, kind := range []string{kindOpen, kindQuota} {
			iter := f.rdb.Scan(ctx, 0, f.key(kind, "*"), 512).Iterator()
			for iter.Next(ctx) {
				keys, kinds = append(keys, iter.Val()), append(kinds, kind)
			}
			if err := iter.Err(); err != nil {
				return err
			}
		}
		keys, kinds = append(keys, f.key(kindBan)), append(kinds, kindBan)
		res, err := f.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return err
		}
		for i, r := range res {
			if s, ok := r.(string); ok {
				vals = append(vals, kinds[i]+" - "+s)
			}
		}
		return nil
	})
	if err != nil {
		return
	}
	for _, v := range vals {
		e.handle(v)
	}
}

// handle applies one message: "<kind> <proxy id> <until ms> <route>".
func (e *events) handle(msg string) {
	kind, rest, _ := strings.Cut(msg, " ")
	id, rest, _ := strings.Cut(rest, " ")
	if id == e.id {
		return
	}
	ms, route, _ := strings.Cut(rest, " ")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return
	}
	until := time.UnixMilli(n)
	if !until.After(time.Now()) {
		return
	}
	e.mu.Lock()
	to := e.to
	e.mu.Unlock()
	if to == nil {
		return
	}
	switch kind {
	case kindPenalty:
		if route != "" {
			to.Penalized(route, until)
		}
	case kindQuota:
		if route != "" {
			e.f.log.Warn("fleet: route stopped for the month, as another proxy met 90020", zap.String("route", route))
			to.QuotaStopped(route, until)
		}
	case kindOpen:
		if route != "" {
			e.f.log.Info("fleet: breaker opened by another proxy", zap.String("route", route), zap.Time("until", until))
			to.Opened(route, until)
		}
	case kindBan:
		e.f.log.Warn("fleet: egress IP banned, as another proxy met", zap.Time("until", until))
		to.Banned(until)
	}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
