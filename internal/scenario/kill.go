package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/config"
)

// dingproxy killed: the deferring client as real processes (the running
// executable re-executed, bench.Processes), one of which is killed with
// SIGKILL after the last answer, and what became of the sends it kept.

// Kill is dingproxy's process killed with SIGKILL After the last answer
// (scaled): the one process of ProxyDeferred, or the one of
// ProxyFleetDeferred's that holds the fleet courier's lease (Holder). If
// Restart, it is started again on the same outbox.dir at once. The
// plain clients are not touched: they get what they get from the
// workload.
type Kill struct {
	After   time.Duration
	Holder  bool
	Restart bool
}

// holderWait bounds the wait for a process to hold the fleet courier's
// lease, when the kill comes (it renews it every second).
const holderWait = 15 * time.Second

// ChildMain makes the running executable one of the scenarios'
// dingproxy processes when it was started as one (bench.ChildMain), and
// returns at once otherwise. The resilience command and the test binaries
// that run the scenarios call it first.
func ChildMain() { bench.ChildMain(childTune) }

// procArg is what a dingproxy process of a scenario is configured from
// (bench.Processes.Arg): the scenario's tuning, the routes it defers, and
// the fleet's Redis, if shared.
type procArg struct {
	Tune   Tuning
	Defer  []string
	Redis  string `json:",omitempty"`
	Prefix string `json:",omitempty"`
}

// childTune is a process's configuration beyond the defaults, the fake
// and the outbox directory: the same as the in-process dingproxy's.
func childTune(arg string) ([]func(*config.Config), error) {
	var a procArg
	if err := json.Unmarshal([]byte(arg), &a); err != nil {
		return nil, fmt.Errorf("scenario: a process's configuration: %w", err)
	}
	tune := []func(*config.Config){a.Tune.apply, deferRoutes(a.Defer, a.Tune.Merge)}
	if a.Redis != "" {
		tune = append(tune, sharedOn(a.Redis, a.Prefix))
	}
	return tune, nil
}

// processes is the deferring client m of s as real processes: one, or
// the scenario's replicas sharing through redis under prefix.
func (s Scenario) processes(m bench.Mode, redis, prefix, outbox string) (*bench.Processes, error) {
	a := procArg{Tune: s.Tune, Defer: s.sendRoutes()}
	n := 1
	if m == ProxyFleetDeferred {
		if redis == "" {
			return nil, errors.New("dingproxy's fleet without a redis-server")
		}
		a.Redis, a.Prefix, n = redis, prefix, s.replicas()
	}
	arg, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	return &bench.Processes{N: n, Dir: outbox, Arg: string(arg)}, nil
}

// asProcesses says whether client m of s runs as real processes.
func (s Scenario) asProcesses(m bench.Mode) bool {
	return m == ProxyFleetDeferred || m == ProxyDeferred && s.Faults.Kill != nil
}

// killed is what a kill did.
type killed struct {
	at      time.Time
	restart time.Duration // 0: not restarted
	holder  bool          // the process killed held the courier's lease
	refused bool          // DingTalk refused connections then
}

// kill waits until k.After (scaled) past the last answer, then kills the
// process k names, and starts it again if k.Restart.
func (k *Kill) kill(ctx context.Context, p *bench.Processes, scale float64, lastAnswer time.Time, r *refusal) (killed, error) {
	var out killed
	t := time.NewTimer(time.Until(lastAnswer.Add(scaled(k.After, scale))))
	defer t.Stop()
	select {
	case <-t.C: // the scenario's wait, not a synchronisation
	case <-ctx.Done():
		return out, ctx.Err()
	}
	victim := 0
	if k.Holder {
		var err error
		if victim, err = p.WaitHolder(ctx, holderWait); err != nil {
			return out, err
		}
		out.holder = true
	}
	if r != nil {
		select {
		case <-r.up:
		default:
			out.refused = true
		}
	}
	out.at = time.Now()
	p.Kill(victim)
	if k.Restart {
		if err := p.Restart(ctx, victim); err != nil {
			return out, err
		}
		out.restart = time.Since(out.at)
	}
	return out, nil
}

// keptIDs are the ids of the sends the answers said were kept.
func keptIDs(outs []bench.Outcome) []string {
	var ids []string
	for _, o := range outs {
		if o.DeferredID != "" {
			ids = append(ids, o.DeferredID)
		}
	}
	return ids
}

// sendStates reads each kept send's state from a live process's admin
// endpoint: how many are in each state ("?" for one not read).
func sendStates(ctx context.Context, hc *http.Client, p *bench.Processes, ids []string) map[string]int {
	out := map[string]int{}
	admin := p.Admin()
	for _, id := range ids {
		st, err := bench.SendState(ctx, hc, admin, id)
		if admin == "" || err != nil {
			st = "?"
		}
		out[st]++
	}
	return out
}

// The kill scenarios' targets.

// keptDelivered is every message delivered but at most one, which must
// then be unknown (on the wire at the kill, never sent again), the last
// within bound(r) of the time last(r) measures from.
func keptDelivered(calls int, from, want string, last func(Row) time.Duration, met func(Row) bool) Target {
	return Target{Figure: "delivered; the last " + from,
		Want: fmt.Sprintf(">= %d of %d, the rest unknown; %s", calls-1, calls, want),
		Value: func(r Row) string {
			if r.MessagesDelivered == 0 {
				return fmt.Sprintf("0 of %d", r.Messages)
			}
			v := fmt.Sprintf("%d of %d", r.MessagesDelivered, r.Messages)
			if r.HasStates && r.Unknown > 0 {
				v += fmt.Sprintf(" (%d unknown)", r.Unknown)
			}
			return v + ", " + bench.Dur(last(r))
		},
		Met: func(r Row) bool {
			return r.Messages == calls && r.HasStates && r.MessagesDelivered >= calls-1 &&
				r.MessagesDelivered+r.Unknown >= calls && met(r)
		}}
}

// unknownAtMostOne is at most one kept send unknown.
func unknownAtMostOne() Target {
	return Target{Figure: "kept sends unknown (on the wire at the kill)", Want: "<= 1",
		Value: optional(func(r Row) bool { return r.HasStates }, func(r Row) string { return fmt.Sprint(r.Unknown) }),
		Met:   func(r Row) bool { return r.HasStates && r.Unknown <= 1 && r.Unsettled == 0 }}
}

// killTargets are the targets of an alert burst whose dingproxy is killed
// and started again: the burst's bound, plus the restart.
func killTargets(s Scenario) []Target {
	return []Target{
		keptDelivered(s.Calls, "from the first alert", "<= "+secs(s.DeliverWithin)+" + restart",
			func(r Row) time.Duration { return r.LastArrival },
			func(r Row) bool { return r.HasKill && r.LastArrival <= s.DeliverWithin+r.Restart }),
		unknownAtMostOne(),
		{Figure: "sends into the robot's limit and block", Want: "0",
			Value: func(r Row) string { return fmt.Sprint(r.RobotThrottled) },
			Met:   func(r Row) bool { return r.HasDeliveries && r.RobotThrottled == 0 }},
		deliveredTwice(),
		{Figure: "restart: SIGKILL to serving again", Want: "(shown)",
			Value: optional(func(r Row) bool { return r.HasKill && r.Restart > 0 }, func(r Row) string { return bench.Dur(r.Restart) })},
	}
}

// fleetKillTargets are the targets of a fleet whose courier is killed
// while DingTalk refuses connections: the others deliver.
func fleetKillTargets(s Scenario) []Target {
	return []Target{
		{Figure: "killed: the lease holder, DingTalk refusing", Want: "yes",
			Value: optional(func(r Row) bool { return r.HasKill }, func(r Row) string {
				return map[bool]string{true: "yes", false: "no"}[r.KilledHolder && r.KilledRefused]
			}),
			Met: func(r Row) bool { return r.HasKill && r.KilledHolder && r.KilledRefused }},
		keptDelivered(s.Calls, "from the kill", "<= "+secs(s.DeliverWithin),
			func(r Row) time.Duration { return r.LastArrival - r.KilledAt },
			func(r Row) bool { return r.HasKill && r.LastArrival-r.KilledAt <= s.DeliverWithin }),
		unknownAtMostOne(),
		deliveredTwice(),
	}
}
