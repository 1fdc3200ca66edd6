package fleet

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
)

// What another proxy says (a message on the events channel, or a record
// read at resync) is checked before it is applied: Redis may carry what no
// proxy of the fleet wrote. A transition is applied only with a valid route
// (dingtalk.ValidRoute, never the overflow route, whose APIs differ from
// proxy to proxy) and an end no later than the longest a proxy would give
// it itself; a later end is cut to that, and counted. At most
// eventsPerSecond messages are applied in a second and logsPerSecond of
// them logged (rarePerSecond for the kinds that the parts they change log
// themselves); the rest of a burst is counted, summed up in one line a
// second, and, for the kinds kept in Redis (openings, the ban, quota
// stops), read again at a resync. What the appliers keep is bounded too:
// openings on routes this proxy has not seen (Breakers.hold), penalties on
// APIs it has not paced (applier.Penalized), quota stops heard
// (quota.MaxHeard).

const (
	// maxBan is the longest IP ban heeded: the longest a ban answer may
	// name (dingtalk's classify reads at most 24 hours; DingTalk's is 5
	// minutes).
	maxBan = 24 * time.Hour
	// openMostDefault is the longest opening heeded by an Applier that
	// does not say its own (Decorate's says breaker.open_timeout).
	openMostDefault = time.Hour
	// quotaPastMonth is how long past this proxy's month turn a quota stop
	// heard may end (another proxy's clock or time zone).
	quotaPastMonth = 24 * time.Hour
	// eventsPerSecond bounds the messages applied in a second.
	eventsPerSecond = 100
	// rarePerSecond bounds, within it, the bans, quota stops and
	// resumptions applied in a second: each is logged by the part it
	// changes, and a fleet meets them rarely (the ban once, a stop once
	// per route and month; those dropped are read again at a resync).
	rarePerSecond = 10
	// logsPerSecond bounds the transitions heard that are logged one by
	// one in a second; the rest are summed up in one line.
	logsPerSecond = 5
	// maxEventLen bounds a message: kind, proxy id, end and route.
	maxEventLen = 64 + dingtalk.MaxRouteLen
)

// Bounds is what an Applier may say of the transitions it takes: the
// longest breaker opening (breaker.open_timeout here) and the month's turn
// (when a quota stop ends here).
type Bounds interface {
	OpenMost() time.Duration
	MonthEnd() time.Time
}

// event is one transition heard.
type event struct {
	kind, route string
	until       time.Time
}

// handle checks and applies one message: "<kind> <proxy id> <until ms>
// <route>".
func (e *events) handle(msg string) {
	if len(msg) > maxEventLen {
		e.refused()
		return
	}
	kind, rest, ok1 := strings.Cut(msg, " ")
	id, rest, ok2 := strings.Cut(rest, " ")
	ms, route, ok3 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !ok3 {
		e.refused()
		return
	}
	if id == e.id {
		return
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		e.refused()
		return
	}
	e.accept(event{kind: kind, route: route, until: time.UnixMilli(n)}, false)
}

// accept checks ev and applies it; synced: read at a resync (bounded by the
// keys' size), not subject to the rate.
func (e *events) accept(ev event, synced bool) {
	e.mu.Lock()
	to := e.to
	e.mu.Unlock()
	if to == nil {
		return
	}
	now := time.Now()
	most, ok := e.bound(ev, to, now)
	if !ok {
		e.refused()
		return
	}
	if ev.kind != kindResume {
		if !ev.until.After(now) {
			return // ended already: a late message
		}
		if ev.until.After(most) {
			ev.until = most
			e.f.failed(OpEvent)
		}
	}
	if !synced && !e.lim.take(ev.kind) {
		e.f.failed(OpEvent)
		return
	}
	e.apply(to, ev)
}

// bound is the latest end ev may have, or false if ev is not a transition
// a proxy publishes (unknown kind, invalid route).
func (e *events) bound(ev event, to Applier, now time.Time) (time.Time, bool) {
	b, _ := to.(Bounds)
	if ev.kind == kindBan {
		return now.Add(maxBan), true
	}
	org := ev.route == quota.Organisation && (ev.kind == kindQuota || ev.kind == kindResume)
	if !org && (!dingtalk.ValidRoute(ev.route) || ev.route == proxy.Overflow) {
		return time.Time{}, false
	}
	switch ev.kind {
	case kindOpen:
		d := openMostDefault
		if b != nil {
			d = b.OpenMost()
		}
		return now.Add(d), true
	case kindPenalty:
		return now.Add(maxPenalty), true
	case kindQuota:
		end := now.AddDate(0, 1, 0)
		if b != nil {
			end = b.MonthEnd()
		}
		return end.Add(quotaPastMonth), true
	case kindResume:
		return now, true
	}
	return time.Time{}, false
}

// refused counts a message that is not a transition a proxy publishes.
func (e *events) refused() {
	e.f.failed(OpEvent)
	e.lim.refuse()
}

// apply applies ev, logging it while the second's lines last (a
// penalty, which comes with every throttle, is not logged).
func (e *events) apply(to Applier, ev event) {
	if ev.kind == kindPenalty {
		to.Penalized(ev.route, ev.until)
		return
	}
	log := e.lim.line()
	switch ev.kind {
	case kindQuota:
		if log {
			e.f.log.Warn("fleet: route stopped for the month, as another proxy met 90020", zap.String("route", ev.route))
		}
		to.QuotaStopped(ev.route, ev.until)
	case kindResume:
		if log {
			e.f.log.Info("fleet: route called again, as another proxy's call there got through", zap.String("route", ev.route))
		}
		to.QuotaResumed(ev.route)
	case kindOpen:
		if log {
			e.f.log.Info("fleet: breaker opened by another proxy", zap.String("route", ev.route), zap.Time("until", ev.until))
		}
		to.Opened(ev.route, ev.until)
	case kindBan:
		if log {
			e.f.log.Warn("fleet: egress IP banned, as another proxy met", zap.Time("until", ev.until))
		}
		to.Banned(ev.until)
	}
}

// summary logs, once a second, what a burst left out of the log, and reads
// again the transitions the rate dropped.
func (e *events) summary() {
	applied, unlogged, refused, dropped, resync := e.lim.reset()
	if unlogged+refused+dropped > 0 {
		e.f.log.Warn("fleet: a burst of messages from the fleet in the last second",
			zap.Int("applied", applied), zap.Int("applied_not_logged", unlogged),
			zap.Int("refused", refused), zap.Int("dropped_over_rate", dropped))
	}
	if resync {
		e.resync()
	}
}

// limiter counts what a second's messages did.
type limiter struct {
	mu                        sync.Mutex
	applied, logged, unlogged int
	rare                      int
	refused, dropped          int
	resync                    bool
}

// take says whether a message of kind may be applied in this second.
func (l *limiter) take(kind string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	rare := kind == kindBan || kind == kindQuota || kind == kindResume
	if l.applied >= eventsPerSecond || rare && l.rare >= rarePerSecond {
		l.dropped++
		if kind == kindOpen || kind == kindBan || kind == kindQuota {
			l.resync = true
		}
		return false
	}
	l.applied++
	if rare {
		l.rare++
	}
	return true
}

// line says whether a transition applied may be logged in this second.
func (l *limiter) line() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.logged >= logsPerSecond {
		l.unlogged++
		return false
	}
	l.logged++
	return true
}

func (l *limiter) refuse() {
	l.mu.Lock()
	l.refused++
	l.mu.Unlock()
}

// reset ends the second: what it counted.
func (l *limiter) reset() (applied, unlogged, refused, dropped int, resync bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	applied, unlogged, refused, dropped, resync = l.applied, l.unlogged, l.refused, l.dropped, l.resync
	l.applied, l.logged, l.unlogged, l.rare, l.refused, l.dropped, l.resync = 0, 0, 0, 0, 0, 0, false
	return applied, unlogged, refused, dropped, resync
}
