package deferral

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/pacing"
)

// Results of a kept send, as Observer.Finished is told (the
// dingproxy_outbox_sends_total result label).
const (
	ResultDelivered = "delivered"
	ResultDead      = "dead"
	ResultUnknown   = "unknown"
)

// Observer is told what each kept send came to. It runs outside every
// lock, and a panic in it changes nothing.
type Observer interface {
	Finished(route, result string)
}

// Options are a Courier's parts.
type Options struct {
	// Store holds the kept sends.
	Store Store
	// Path is the request path below the deferral layer: quota, breaker,
	// the attempt loop, pacing, the token, the send.
	Path call.Handler
	// Next is pacing's estimate of when a call on api could go at the
	// earliest from earliest on (pacing.Turns.Next).
	Next func(api string, earliest time.Time) time.Time
	// OAPI and API are the upstreams' base URLs.
	OAPI, API *url.URL
	// Merge says whether route's defer has merge on now (nil: never).
	Merge func(route string) bool
	// RobotPerMinute is a robot's limit now (pacing.robot_per_minute): a
	// robot's queue merges only when it holds more than that. Nil or 0:
	// dingtalk.RobotPerMinute.
	RobotPerMinute func() int
	// Timeout bounds one delivery (its attempts and waits). Zero: 30s.
	Timeout time.Duration
	// Parallel is how many queues deliver at once. Zero: 8.
	Parallel int
	// Observer, if set, is told of each send finished.
	Observer Observer
	Logger   *zap.Logger
}

// Turns are taken for a delivery only if free now or within turnSlack:
// a delivery never books a turn ahead, so a live call waiting for one
// always gets it first (README, "Deferred sends": the split).
const turnSlack = 250 * time.Millisecond

// signMargin is how long before its signature's hour ends a signed robot
// send is no longer sent: the turn's slack, the attempt's way to
// DingTalk, and a little of DingTalk's clock against ours.
const signMargin = 5 * time.Second

const (
	stopGrace  = 5 * time.Second
	idlePoll   = 5 * time.Second
	backoffMin = 500 * time.Millisecond
	backoffMax = 10 * time.Second
	maxHeads   = 1024
)

// Courier delivers kept sends: one at a time per queue, in the order they
// were kept, Parallel queues at once, each through Options.Path when
// pacing has a turn free for it now.
type Courier struct {
	o    Options
	log  *zap.Logger
	wake chan struct{}
	// hard ends the deliveries under way (abort), stopGrace after Run's
	// context ended.
	hard  context.Context
	abort context.CancelFunc
	sem   chan struct{}
	wg    sync.WaitGroup

	mu    sync.Mutex
	busy  map[string]bool          // queues with a delivery under way
	after map[string]time.Time     // a queue's next try, after a refusal
	back  map[string]time.Duration // a queue's current backoff
}

// NewCourier returns a Courier; Run starts it.
func NewCourier(o Options) *Courier {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	hard, abort := context.WithCancel(context.Background())
	return &Courier{o: o, log: log, wake: make(chan struct{}, 1), sem: make(chan struct{}, o.Parallel),
		hard: hard, abort: abort,
		busy: map[string]bool{}, after: map[string]time.Time{}, back: map[string]time.Duration{}}
}

// Wake asks the courier to look at the queues now (a send was kept).
func (c *Courier) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends, then waits for the deliveries under way
// and returns. A delivery still under way stopGrace after ctx ended is
// cancelled: if nothing of it was sent it stays queued; if an attempt was
// on the wire it is unknown.
func (c *Courier) Run(ctx context.Context) {
	defer func() {
		t := time.AfterFunc(stopGrace, c.abort)
		c.wg.Wait()
		t.Stop()
	}()
	c.holdRobots(time.Now())
	for {
		next := c.round(ctx)
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-c.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// holdRobots holds back, until a minute after start, the robot queues that
// hold sends kept before this start. Pacing begins empty at a start, but
// the process before it may have sent to those robots in their last
// minute (their kept sends say the minute was likely spent): one more
// send within it would start DingTalk's 10-minute block.
func (c *Courier) holdRobots(start time.Time) {
	heads, err := c.o.Store.Heads(maxHeads)
	if err != nil {
		return // the first round reads them again, and logs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range heads {
		if strings.HasPrefix(h.Queue, pacing.RobotPrefix) {
			c.after[h.Queue] = start.Add(dingtalk.RobotWindow)
		}
	}
}

// round starts a delivery for each queue whose head may go now, and
// returns when to look again.
func (c *Courier) round(ctx context.Context) time.Time {
	now := time.Now()
	next := now.Add(idlePoll)
	// The queues busy before anything is read: a delivery under way owns
	// its queue's sends (it may be marking them, or have sent them), and
	// only round starts deliveries, so a marked head of a queue not busy
	// here was marked by a process before this one.
	c.mu.Lock()
	busy := make(map[string]bool, len(c.busy))
	for q := range c.busy {
		busy[q] = true
	}
	c.mu.Unlock()
	// Past due, wherever it waits: dead, without a turn; but not in a
	// queue whose delivery is under way (it may be going now): that
	// delivery records what it came to, and a send still queued after it
	// is found past due the next round.
	expired, due, err := c.o.Store.Expired(now, maxHeads)
	if err == nil {
		for _, s := range expired {
			if busy[s.Queue] {
				continue
			}
			c.finish([]*outbox.Send{s}, outbox.Dead, dueReason(s, now), 0, nil, 0)
		}
		if !due.IsZero() {
			next = earlier(next, due)
		}
	}
	heads, err := c.o.Store.Heads(maxHeads)
	if err != nil {
		c.log.Warn("outbox: the queued sends could not be read; trying again", zap.Error(err))
		return now.Add(time.Second)
	}
	for _, h := range heads {
		if ctx.Err() != nil {
			return next
		}
		c.mu.Lock()
		after := c.after[h.Queue]
		c.mu.Unlock()
		if busy[h.Queue] {
			continue // its end wakes the courier
		}
		if h.Sending {
			// Marked as being sent, and no delivery of this process has
			// it: its outcome was not recorded. It may have executed.
			c.finish([]*outbox.Send{h}, outbox.Unknown, outbox.ReasonStopped, 0, nil, 0)
			next = now
			continue
		}
		end, signed := SignedUntil(h.Query)
		if !h.Due.After(now) || signed && !end.After(now) {
			c.finish([]*outbox.Send{h}, outbox.Dead, dueReason(h, now), 0, nil, 0)
			next = now
			continue
		}
		if signed {
			next = earlier(next, end) // to find it dead in time
		}
		if after.After(now) {
			next = earlier(next, after)
			continue
		}
		f, err := decodeFacts(h.Facts, h.ID, h.Body)
		if err != nil {
			c.finish([]*outbox.Send{h}, outbox.Dead, "its kept facts do not read back", 0, nil, 0)
			next = now
			continue
		}
		if at := c.o.Next(f.API, now); at.After(now.Add(turnSlack)) {
			next = earlier(next, at)
			continue // no turn free now: live calls keep theirs
		}
		select {
		case c.sem <- struct{}{}:
		default:
			return next // every slot busy: a delivery's end wakes the courier
		}
		c.mu.Lock()
		c.busy[h.Queue] = true
		c.mu.Unlock()
		c.wg.Add(1)
		go c.deliver(h, f)
	}
	if len(heads) < maxHeads {
		c.forgetEmpty(heads)
	}
	return next
}

// forgetEmpty drops the backoff of queues that hold nothing now.
func (c *Courier) forgetEmpty(heads []*outbox.Send) {
	live := make(map[string]bool, len(heads))
	for _, h := range heads {
		live[h.Queue] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for q := range c.after {
		if !live[q] && !c.busy[q] {
			delete(c.after, q)
			delete(c.back, q)
		}
	}
}

// deliver sends head (merged with the sends queued behind it, where its
// route merges) once, and records what it came to.
func (c *Courier) deliver(head *outbox.Send, f *call.Facts) {
	defer func() {
		c.mu.Lock()
		delete(c.busy, head.Queue)
		c.mu.Unlock()
		<-c.sem
		c.wg.Done()
		c.Wake()
	}()
	batch, body, query := []*outbox.Send{head}, head.Body, head.Query
	if c.o.Merge != nil && strings.HasPrefix(head.Queue, pacing.RobotPrefix) && c.o.Merge(head.Route) {
		// Merged only when more wait than the robot's minute allows: fewer
		// go one by one, as they were sent, within the minute.
		n := dingtalk.RobotPerMinute
		if c.o.RobotPerMinute != nil && c.o.RobotPerMinute() > 0 {
			n = c.o.RobotPerMinute()
		}
		if queued, err := c.o.Store.Queue(head.Queue, max(maxMerge, n+1)); err == nil && len(queued) > max(n, 1) {
			if m := merge(queued, time.Now()); m != nil {
				batch, body, query = m.sends, m.body, m.query
			}
		}
	}
	for i, s := range batch {
		if err := c.o.Store.Begin(s.ID); err != nil {
			// Not marked, so not sent: what was marked goes back as it was.
			c.log.Warn("outbox: a send could not be marked as being sent; it waits", zap.String("route", s.Route), zap.Error(err))
			c.requeue(batch[:i], 0, nil, 0)
			c.backoff(head.Queue, 0)
			return
		}
	}
	fd := *f
	fd.Body = body
	if len(batch) > 1 {
		// A merged message is a new message: whatever made the head's
		// repeat harmless (its msgUuid) is not in it.
		fd.Idempotent = false
	}
	if end, signed := SignedUntil(query); signed && !end.After(time.Now().Add(signMargin)) {
		// Marked, and not sent: its signature's hour ends before it could
		// reach DingTalk.
		c.finish(batch, outbox.Dead, dueReason(head, time.Now().Add(signMargin)), 0, nil, 0)
		return
	}
	req, err := c.request(head, &fd, query)
	if err != nil {
		c.finish(batch, outbox.Dead, "its kept request does not read back", 0, nil, 0)
		return
	}
	ctx, cancel := context.WithTimeout(c.hard, c.o.Timeout)
	defer cancel()
	// Only a turn free now: the loop's deadline for turns is now + slack.
	ctx = call.WithDeadline(ctx, time.Now().Add(turnSlack))
	resp, rep, err := c.o.Path.Do(req.WithContext(ctx), &fd)
	var status int
	var answer []byte
	if resp != nil {
		status = resp.StatusCode
		answer, _ = io.ReadAll(io.LimitReader(resp.Body, outbox.MaxAnswer))
		resp.Body.Close()
	}
	state, reason := Judge(&fd, rep, err)
	switch state {
	case outbox.Queued:
		c.requeue(batch, rep.Attempts, answer, status)
		var wait time.Duration
		var paced *pacing.PacedError
		if errors.As(err, &paced) {
			wait = paced.Wait
		}
		if rep.Result.RefusedForNow() {
			if end := dingtalk.Penalty(rep.Result, time.Now()); time.Until(end) > wait {
				wait = time.Until(end)
			}
		}
		c.backoff(head.Queue, wait)
	default:
		c.finish(batch, state, reason, rep.Attempts, answer, status)
		c.mu.Lock()
		delete(c.back, head.Queue)
		delete(c.after, head.Queue)
		c.mu.Unlock()
	}
}

// Judge is what a delivery's outcome makes of a kept send: delivered on a
// success; queued again when nothing was sent or DingTalk refused it
// unexecuted for now; unknown when it may have executed (unless a repeat
// is harmless); dead on any other answer, which says it will never
// succeed. reason says why, for dead and unknown.
func Judge(f *call.Facts, rep call.Report, err error) (outbox.State, string) {
	if rep.Result.Class == dingtalk.TokenInvalid && f.Inject == dingtalk.PlaceNone && !rep.MayHaveExecuted {
		// The client's own token, which the proxy cannot renew: it will
		// not succeed by waiting.
		return outbox.Dead, "DingTalk answered " + answered(rep.Result) + ": the client's own token, which only the client can renew"
	}
	if err == nil {
		switch {
		case rep.Outcome == call.Success:
			return outbox.Delivered, ""
		case rep.Result.RefusedForNow():
			return outbox.Queued, ""
		case rep.Outcome == call.ServerError:
			if f.Idempotent {
				return outbox.Queued, ""
			}
			return outbox.Unknown, "DingTalk answered " + rep.Reason + ": it may have executed, so it is not sent again"
		}
		return outbox.Dead, "DingTalk answered " + answered(rep.Result) + ": it will not succeed"
	}
	switch {
	case rep.MayHaveExecuted && !f.Idempotent:
		// An attempt may have executed, then a retry was refused.
	case rep.Attempts == 0, rep.Outcome == call.NotSent:
		return outbox.Queued, "" // nothing left: a refusal, a dial that failed
	case rep.Result.RefusedForNow() && rep.Outcome != call.AfterSend && rep.Outcome != call.Canceled:
		return outbox.Queued, ""
	case f.Idempotent:
		return outbox.Queued, ""
	}
	return outbox.Unknown, "the attempt ended without an answer (" + rep.Reason + ") after it may have been sent, so it is not sent again"
}

// answered names DingTalk's answer in a reason: its errcode or code.
func answered(r dingtalk.Result) string {
	switch {
	case r.Errcode != 0:
		return "errcode " + strconv.Itoa(r.Errcode) + " (" + r.Reason + ")"
	case r.Code != "":
		return "code " + r.Code + " (" + r.Reason + ")"
	}
	return r.Reason
}

// dueReason says why a send past its due time is dead.
func dueReason(s *outbox.Send, now time.Time) string {
	if end, signed := SignedUntil(s.Query); signed && (!end.After(s.Due) || !end.After(now)) {
		return "its signature's hour ended before it could go (DingTalk would refuse it with 310000, and only the robot's secret can sign it again)"
	}
	return "not delivered within the route's defer.max_age"
}

// request is the kept send s as a request to DingTalk, its query byte for
// byte as the client sent it.
func (c *Courier) request(s *outbox.Send, f *call.Facts, query string) (*http.Request, error) {
	base := c.o.OAPI
	if f.Upstream == dingtalk.API {
		base = c.o.API
	}
	u, err := url.Parse(strings.TrimSuffix(base.String(), "/") + s.Path)
	if err != nil || !strings.HasPrefix(s.Path, "/") {
		return nil, errors.New("deferral: bad kept path")
	}
	u.RawQuery = query
	h := s.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Del("Accept-Encoding") // the answer is read here: let the transport decode it
	return &http.Request{Method: s.Method, URL: u, Host: u.Host, Header: h, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}, nil
}

// requeue puts sends back in their queue after a try that sent nothing, or
// that DingTalk refused unexecuted.
func (c *Courier) requeue(sends []*outbox.Send, attempts int, answer []byte, status int) {
	for _, s := range sends {
		u := *s
		u.State, u.Attempts, u.Status = outbox.Queued, s.Attempts+attempts, status
		if err := c.o.Store.Update(&u); err != nil {
			c.log.Warn("outbox: a send could not be put back in its queue", zap.String("route", s.Route), zap.Error(err))
		}
	}
}

// finish records the end of sends: delivered, dead or unknown.
func (c *Courier) finish(sends []*outbox.Send, state outbox.State, reason string, attempts int, answer []byte, status int) {
	for _, s := range sends {
		u := *s
		u.State, u.Reason, u.Attempts, u.Status, u.Answer = state, reason, s.Attempts+attempts, status, answer
		if err := c.o.Store.Update(&u); err != nil {
			c.log.Error("outbox: what a send came to could not be recorded", zap.String("route", s.Route),
				zap.String("state", string(state)), zap.Error(err))
			continue
		}
		if state != outbox.Delivered {
			c.log.Warn("outbox: a kept send is "+string(state), zap.String("route", s.Route), zap.String("id", s.ID), zap.String("reason", reason))
		}
		if o := c.o.Observer; o != nil {
			result := string(state)
			call.Bookkeep(c.log, "outbox", func() { o.Finished(s.Route, result) })
		}
	}
}

// backoff holds queue back after a try that did not deliver: at least
// wait, and at least its backoff, which doubles with each such try.
func (c *Courier) backoff(queue string, wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.back[queue] * 2
	if b < backoffMin {
		b = backoffMin
	}
	if b > backoffMax {
		b = backoffMax
	}
	c.back[queue] = b
	if wait < b {
		wait = b
	}
	c.after[queue] = time.Now().Add(wait)
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
