package scenario

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// The deferred group: sends that dingproxy keeps for later
// (routes[].defer), each message sent once by each client, and what
// DingTalk delivered of them, message by message.

// deferMaxAge is defer.max_age on the deferring client's routes: far
// beyond any scenario, so that no kept send is given up.
const deferMaxAge = time.Hour

// awaitGrace is how long past DeliverWithin the run still waits for the
// deliveries, so that a near miss shows how near it was.
const awaitGrace = 20 * time.Second

// answerP99 bounds the deferring client's answers: at once, the fsync
// that keeps a send included.
const answerP99 = 50 * time.Millisecond

// sendRoutes are the paths of the workload's sends, each once.
func (s Scenario) sendRoutes() []string {
	_, sends := s.Work.split()
	return distinct(apis(sends))
}

// deferOn turns defer on for every send route of the workload, the
// outbox in dir.
func (s Scenario) deferOn(dir string) func(*config.Config) {
	routes := deferRoutes(s.sendRoutes(), s.Tune.Merge)
	return func(c *config.Config) {
		c.Outbox.Dir = dir
		routes(c)
	}
}

// deferRoutes turns defer on for routes (merge on the robot's, if
// merge).
func deferRoutes(routes []string, merge bool) func(*config.Config) {
	return func(c *config.Config) {
		for _, path := range routes {
			d := &config.Defer{MaxAge: deferMaxAge, Merge: merge && path == dingtalk.PathRobotSend}
			i := slices.IndexFunc(c.Routes, func(r config.Route) bool { return r.Path == path })
			if i < 0 {
				c.Routes = append(c.Routes, config.Route{Path: path})
				i = len(c.Routes) - 1
			}
			c.Routes[i].Defer = d
		}
	}
}

// describeDefer says how the deferring client m is configured.
func (s Scenario) describeDefer(m bench.Mode) string {
	merge := ""
	if s.Tune.Merge {
		merge = ", defer.merge on the robot's"
	}
	out := fmt.Sprintf("%q with defer (max_age %s) on %s%s", m, strings.TrimSuffix(deferMaxAge.String(), "0m0s"), strings.Join(s.sendRoutes(), ", "), merge)
	if s.asProcesses(m) {
		out += ", each dingproxy a process of its own (this program re-executed)"
	}
	return out
}

// marked finds the number a message of the workload carries in its text
// ("alert 7", "notice 7"): a merged robot message carries several.
var marked = regexp.MustCompile(`(?:alert|notice) ([0-9]+)\b`)

// deliveries are what DingTalk delivered of a run's messages.
type deliveries struct {
	delivered, twice int
	// last is when the last message delivered was first executed.
	last time.Time
}

// countDeliveries counts, of messages 0 to calls-1 sent on paths, how
// many DingTalk executed, how many more than once (a merged message's
// executions count for each of its parts), and when the last of them
// first arrived.
func countDeliveries(f *dingtalktest.Server, paths []string, calls int) deliveries {
	execs := make([]int, calls)
	first := make([]time.Time, calls)
	for _, p := range paths {
		for _, d := range f.Deliveries(p) {
			seen := map[int]bool{}
			for _, m := range marked.FindAllSubmatch(d.Body, -1) {
				i, err := strconv.Atoi(string(m[1]))
				if err != nil || i < 0 || i >= calls || seen[i] {
					continue
				}
				seen[i] = true
				execs[i] += d.Executions
				if first[i].IsZero() || d.First.Before(first[i]) {
					first[i] = d.First
				}
			}
		}
	}
	var out deliveries
	for i, n := range execs {
		if n > 0 {
			out.delivered++
			if first[i].After(out.last) {
				out.last = first[i]
			}
		}
		if n > 1 {
			out.twice++
		}
	}
	return out
}

// awaitDeliveries polls the fake until every one of calls messages is
// delivered, settled says (if set) that nothing is left to deliver,
// until is past, or ctx ends. settled is asked once a second at most.
func awaitDeliveries(ctx context.Context, f *dingtalktest.Server, paths []string, calls int, until time.Time, settled func() bool) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var asked time.Time
	for countDeliveries(f, paths, calls).delivered < calls && time.Now().Before(until) {
		if settled != nil && time.Since(asked) >= time.Second {
			if asked = time.Now(); settled() {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refusal is DingTalk refusing connections from the load's start: its
// listener closed at setup, open again after d.
type refusal struct {
	d     time.Duration
	timer *time.Timer
	err   error         // from StopListening or ResumeListening
	up    chan struct{} // closed once it listens again, or gave up
	upAt  time.Time
}

func newRefusal(d time.Duration) *refusal { return &refusal{d: d, up: make(chan struct{})} }

// start closes f's listener and opens it again after r.d.
func (r *refusal) start(f *dingtalktest.Server) {
	if r.err = f.StopListening(); r.err != nil {
		close(r.up)
		return
	}
	r.timer = time.AfterFunc(r.d, func() {
		defer close(r.up)
		// The address may not be free at once: try again for a while.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if r.err = f.ResumeListening(); r.err == nil || time.Now().After(deadline) {
				break
			}
		}
		r.upAt = time.Now()
	})
}

// wait waits until f listens again; when ctx ends first, it stops the
// timer (or waits for its end, if it has fired).
func (r *refusal) wait(ctx context.Context) {
	select {
	case <-r.up:
	case <-ctx.Done():
		if r.timer == nil || !r.timer.Stop() {
			<-r.up
		}
	}
}

// The deferred group's targets.

// allDelivered is every message delivered, the last within the
// scenario's DeliverWithin of its start (or of the refusal's end).
func allDelivered(s Scenario, calls int, from string) Target {
	return Target{Figure: "delivered; the last " + from,
		Want: fmt.Sprintf("%d of %d, <= %s", calls, calls, secs(s.DeliverWithin)),
		Value: func(r Row) string {
			if r.MessagesDelivered == 0 {
				return fmt.Sprintf("0 of %d", r.Messages)
			}
			return fmt.Sprintf("%d of %d, %s", r.MessagesDelivered, r.Messages, bench.Dur(r.LastDelivery()))
		},
		Met: func(r Row) bool {
			return r.Messages == calls && r.MessagesDelivered == calls && r.LastDelivery() <= s.DeliverWithin
		}}
}

// deliveredTwice is no message delivered twice.
func deliveredTwice() Target {
	return Target{Figure: "messages delivered twice", Want: "0",
		Value: func(r Row) string { return fmt.Sprint(r.MessagesTwice) },
		Met:   func(r Row) bool { return r.HasDeliveries && r.MessagesTwice == 0 && r.Duplicates == 0 }}
}

// burstTargets are an alert burst's targets.
func burstTargets(s Scenario) []Target {
	return []Target{
		allDelivered(s, s.Calls, "from the first alert"),
		{Figure: "sends into the robot's limit and block", Want: "0",
			Value: func(r Row) string { return fmt.Sprint(r.RobotThrottled) },
			Met:   func(r Row) bool { return r.HasDeliveries && r.RobotThrottled == 0 }},
		deliveredTwice(),
		{Figure: "p99 answer (a kept send: once on disk)", Want: "< " + ms(answerP99),
			Value: func(r Row) string { return bench.Dur(r.P99) },
			Met:   func(r Row) bool { return r.Calls == s.Calls && r.P99 < answerP99 }},
	}
}

// refusedTargets are the refused connections' targets.
func refusedTargets(s Scenario) []Target {
	return []Target{
		allDelivered(s, s.Calls, "after the refusal ends"),
		deliveredTwice(),
	}
}
