package outbox

import (
	"bytes"
	"slices"
	"sort"
	"time"
)

// The index is what the store keeps in memory about its records, so that
// Put can check the bounds, Heads can find each queue's head and Stats can
// count without reading the file. It holds no secret and no body: 40 bytes
// for each queued send, which is charged at least minCharge (1 KiB)
// against MaxBytes, so the queued sends' index stays under 4% of MaxBytes;
// about 100 bytes for each finished send, at most MaxFinished of them
// (10 MB at the default).

// minCharge is the least a queued send is charged against MaxBytes.
const minCharge = 1 << 10

func charge(stored int) int64 { return max(int64(stored), minCharge) }

// qent is a queued send in its queue's index.
type qent struct {
	id     rawID
	kept   int64 // Unix nanoseconds
	due    int64 // Unix nanoseconds
	charge int64
	route  *routeIx
	// sending: Begin marked it; it is its courier's until Update.
	sending bool
}

type queueIx struct {
	ents   []qent // by ID
	bytes  int64  // charged by its sends, and by Puts and Retries in commit
	routes map[*routeIx]int
}

func (q *queueIx) find(id rawID) (int, bool) {
	i := sort.Search(len(q.ents), func(i int) bool { return bytes.Compare(q.ents[i].id[:], id[:]) >= 0 })
	return i, i < len(q.ents) && q.ents[i].id == id
}

type routeIx struct {
	name        string
	n           [len(stateCodes)]int // by state code
	queuedBytes int64
	pending     int64 // reserved by Puts and Retries in commit
}

// fent is a finished send (delivered, dead or unknown).
type fent struct {
	id      rawID
	updated int64
	size    int64 // stored
	state   byte
	route   *routeIx
}

type index struct {
	queues      map[string]*queueIx
	routes      map[string]*routeIx
	queuedBytes int64 // charged, with what commits have reserved

	fin       map[rawID]*fent
	finBytes  int64
	delivered []*fent // in the order they finished; entries no longer in fin are skipped
	deadish   []*fent // dead and unknown, likewise
}

func newIndex() *index {
	return &index{queues: map[string]*queueIx{}, routes: map[string]*routeIx{}, fin: map[rawID]*fent{}}
}

func (ix *index) route(name string) *routeIx {
	r := ix.routes[name]
	if r == nil {
		r = &routeIx{name: name}
		ix.routes[name] = r
	}
	return r
}

func (ix *index) queue(name string) *queueIx {
	q := ix.queues[name]
	if q == nil {
		q = &queueIx{routes: map[*routeIx]int{}}
		ix.queues[name] = q
	}
	return q
}

// tidy forgets a queue and a route that hold nothing.
func (ix *index) tidy(queue string, r *routeIx) {
	if q := ix.queues[queue]; q != nil && len(q.ents) == 0 && q.bytes == 0 {
		delete(ix.queues, queue)
	}
	if r != nil && r.n == [len(stateCodes)]int{} && r.queuedBytes == 0 && r.pending == 0 {
		delete(ix.routes, r.name)
	}
}

// fits says whether c more bytes may be charged to queue on route:
// MaxBytes in all, half of it for each route and a quarter for each queue,
// so that no one route (or robot) fills the outbox for the others.
func (ix *index) fits(queue, route string, c, maxBytes int64) bool {
	qb, rb := int64(0), int64(0)
	if q := ix.queues[queue]; q != nil {
		qb = q.bytes
	}
	if r := ix.routes[route]; r != nil {
		rb = r.queuedBytes + r.pending
	}
	return ix.queuedBytes+c <= maxBytes && rb+c <= maxBytes/2 && qb+c <= maxBytes/4
}

// reserve charges c to queue and route (after fits, or past the bounds for
// a send already kept) until addQueued or unreserve.
func (ix *index) reserve(queue, route string, c int64) {
	ix.queue(queue).bytes += c
	ix.route(route).pending += c
	ix.queuedBytes += c
}

func (ix *index) unreserve(queue, route string, c int64) {
	if r := ix.routes[route]; r != nil {
		r.pending -= c
		ix.tidy("", r)
	}
	if q := ix.queues[queue]; q != nil {
		q.bytes -= c
		ix.queuedBytes -= c
		ix.tidy(queue, nil)
	}
}

// addQueued indexes a queued send whose charge is already reserved (on
// its queue and route).
func (ix *index) addQueued(queue, route string, id rawID, kept, due time.Time, c int64) {
	q, r := ix.queue(queue), ix.route(route)
	r.pending -= c
	i, found := q.find(id)
	if found {
		return
	}
	q.ents = slices.Insert(q.ents, i, qent{id: id, kept: kept.UnixNano(), due: due.UnixNano(), charge: c, route: r})
	q.routes[r]++
	r.n[stateCode(Queued)]++
	r.queuedBytes += c
}

// removeQueued forgets a queued send and its charge.
func (ix *index) removeQueued(queue string, id rawID) (qent, bool) {
	q := ix.queues[queue]
	if q == nil {
		return qent{}, false
	}
	i, found := q.find(id)
	if !found {
		return qent{}, false
	}
	e := q.ents[i]
	if i == 0 {
		q.ents = q.ents[1:]
		if cap(q.ents) > 64 && len(q.ents) < cap(q.ents)/4 {
			q.ents = slices.Clone(q.ents)
		}
	} else {
		q.ents = slices.Delete(q.ents, i, i+1)
	}
	if q.routes[e.route]--; q.routes[e.route] == 0 {
		delete(q.routes, e.route)
	}
	q.bytes -= e.charge
	ix.queuedBytes -= e.charge
	e.route.n[stateCode(Queued)]--
	e.route.queuedBytes -= e.charge
	ix.tidy(queue, e.route)
	return e, true
}

// recharge changes a queued send's charge (an Update), past the bounds if
// need be: the send is kept already.
// recharge sets a queued send's charge, and whether it is being sent.
func (ix *index) recharge(queue string, id rawID, c int64, sending bool) {
	q := ix.queues[queue]
	if q == nil {
		return
	}
	if i, found := q.find(id); found {
		d := c - q.ents[i].charge
		q.ents[i].charge, q.ents[i].sending = c, sending
		q.bytes += d
		ix.queuedBytes += d
		q.ents[i].route.queuedBytes += d
	}
}

func (ix *index) addFinished(route string, id rawID, st State, updated time.Time, size int64) {
	if old := ix.fin[id]; old != nil {
		ix.removeFinished(id)
	}
	e := &fent{id: id, updated: updated.UnixNano(), size: size, state: stateCode(st), route: ix.route(route)}
	ix.fin[id] = e
	ix.finBytes += size
	e.route.n[e.state]++
	if st == Delivered {
		ix.delivered = append(ix.delivered, e)
	} else {
		ix.deadish = append(ix.deadish, e)
	}
}

func (ix *index) removeFinished(id rawID) bool {
	e := ix.fin[id]
	if e == nil {
		return false
	}
	delete(ix.fin, id)
	ix.finBytes -= e.size
	e.route.n[e.state]--
	ix.tidy("", e.route)
	// The lists drop it lazily; compact them when mostly stale.
	if n := len(ix.delivered) + len(ix.deadish); n > 1024 && n > 2*len(ix.fin) {
		stale := func(e *fent) bool { return ix.fin[e.id] != e }
		ix.delivered = slices.DeleteFunc(ix.delivered, stale)
		ix.deadish = slices.DeleteFunc(ix.deadish, stale)
	}
	return true
}

// forget drops id wherever it is (its record is gone and could not be read).
func (ix *index) forget(id rawID) {
	if ix.removeFinished(id) {
		return
	}
	for name, q := range ix.queues {
		if _, found := q.find(id); found {
			ix.removeQueued(name, id)
			return
		}
	}
}

// maxPrunePerCommit bounds the deletions one commit carries.
const maxPrunePerCommit = 1000

// pruneDue returns the finished sends to prune now: delivered ones older
// than keepDelivered, dead and unknown ones older than keepDead, then, while
// more than maxFinished or maxBytes are kept, the oldest delivered ones and
// after them the oldest dead and unknown ones.
func (ix *index) pruneDue(now time.Time, keepDelivered, keepDead time.Duration, maxFinished int, maxBytes int64) []*fent {
	ix.delivered = dropStale(ix.delivered, ix.fin)
	ix.deadish = dropStale(ix.deadish, ix.fin)
	var out []*fent
	count, size := len(ix.fin), ix.finBytes
	take := func(list []*fent, keep time.Duration) {
		for _, e := range list {
			if len(out) >= maxPrunePerCommit {
				return
			}
			if ix.fin[e.id] != e {
				continue
			}
			old := now.Sub(time.Unix(0, e.updated)) > keep
			if !old && count <= maxFinished && size <= maxBytes {
				return
			}
			out = append(out, e)
			count--
			size -= e.size
		}
	}
	take(ix.delivered, keepDelivered)
	take(ix.deadish, keepDead)
	return out
}

// dropStale drops the leading entries no longer finished.
func dropStale(list []*fent, fin map[rawID]*fent) []*fent {
	i := 0
	for i < len(list) && fin[list[i].id] != list[i] {
		i++
	}
	return list[i:]
}

// heads returns each queue's head, the oldest first, at most max.
func (ix *index) heads(max int) []struct {
	queue string
	id    rawID
} {
	type head = struct {
		queue string
		id    rawID
	}
	hs := make([]head, 0, len(ix.queues))
	for name, q := range ix.queues {
		if len(q.ents) > 0 {
			hs = append(hs, head{name, q.ents[0].id})
		}
	}
	slices.SortFunc(hs, func(a, b head) int { return bytes.Compare(a.id[:], b.id[:]) })
	if len(hs) > max {
		hs = hs[:max]
	}
	return hs
}

// expired is the queued sends due at or before now (at most max), and
// the earliest due time of the others (zero with none).
func (ix *index) expired(now time.Time, max int) (ids []rawID, next time.Time) {
	t := now.UnixNano()
	var soonest int64
	for _, q := range ix.queues {
		for _, e := range q.ents {
			switch {
			case e.due <= t && e.sending:
				// Its courier records what it came to.
			case e.due <= t:
				if len(ids) < max {
					ids = append(ids, e.id)
				}
			case soonest == 0 || e.due < soonest:
				soonest = e.due
			}
		}
	}
	if soonest != 0 {
		next = time.Unix(0, soonest)
	}
	return ids, next
}

// first is queue's oldest queued sends, at most max.
func (ix *index) first(queue string, max int) []rawID {
	q := ix.queues[queue]
	if q == nil {
		return nil
	}
	n := min(max, len(q.ents))
	out := make([]rawID, n)
	for i := range n {
		out[i] = q.ents[i].id
	}
	return out
}

func (ix *index) stats(now time.Time) map[string]RouteStats {
	out := make(map[string]RouteStats, len(ix.routes))
	for name, r := range ix.routes {
		out[name] = RouteStats{
			Queued:      r.n[stateCode(Queued)],
			Delivered:   r.n[stateCode(Delivered)],
			Dead:        r.n[stateCode(Dead)],
			Unknown:     r.n[stateCode(Unknown)],
			QueuedBytes: r.queuedBytes,
		}
	}
	// The oldest queued send of each route: within a queue the sends are in
	// arrival order, so each route's first in each queue.
	for _, q := range ix.queues {
		left := len(q.routes)
		seen := make(map[*routeIx]bool, left)
		for i := 0; i < len(q.ents) && left > 0; i++ {
			e := q.ents[i]
			if seen[e.route] {
				continue
			}
			seen[e.route] = true
			left--
			rs := out[e.route.name]
			if age := now.Sub(time.Unix(0, e.kept)); age > rs.Oldest {
				rs.Oldest = age
				out[e.route.name] = rs
			}
		}
	}
	return out
}
