package scenario

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// Describe says in one line what the scenario does at scale, every number
// taken from its fields.
func (s Scenario) Describe(scale float64) string {
	d := func(x time.Duration) string { return scaled(x, scale).String() }
	parts := []string{s.who() + s.what(scale)}
	f := s.Faults
	if len(f.Chaos.Faults) > 0 {
		parts = append(parts, describeChaos(f.Chaos, s.Work))
	}
	if o := f.Outage; o != nil {
		which, verb := "every API", "answers"
		if len(o.Paths) > 0 {
			which = strings.Join(o.Paths, ", ")
			if len(o.Paths) > 1 {
				verb = "answer"
			}
		}
		when := "throughout"
		if o.For > 0 {
			when = "for the first " + d(o.For) + ", then recovers"
		}
		parts = append(parts, fmt.Sprintf("%s %s %d to every call %s; attempts counted per call", which, verb, o.Status, when))
	}
	if f.QPSLimit > 0 {
		limit := fmt.Sprintf("DingTalk allows %d/s per API (1 s penalty)", f.QPSLimit)
		if len(s.Work.APIs) == 1 && s.Rate > float64(f.QPSLimit) {
			limit += fmt.Sprintf("; client timeout %s", bench.ClientTimeout)
		}
		parts = append(parts, limit)
	}
	if f.RobotPerMinute > 0 {
		parts = append(parts, fmt.Sprintf("DingTalk allows %d a minute per robot, then blocks it %d minutes",
			f.RobotPerMinute, int(dingtalktest.RobotBlockTime.Minutes())))
	}
	if f.MonthlyQuota > 0 {
		parts = append(parts, fmt.Sprintf("the organisation's monthly quota is %d (then 90020)", f.MonthlyQuota))
	}
	if f.RevokeTokensEvery > 0 {
		if n := s.revocations(scale); n == 1 {
			parts = append(parts, "every token revoked at "+d(f.RevokeTokensEvery))
		} else {
			parts = append(parts, fmt.Sprintf("every token revoked every %s (%d times)", d(f.RevokeTokensEvery), n))
		}
	}
	if b := f.Ban; b != nil {
		parts = append(parts, fmt.Sprintf("DingTalk bans the egress IP at %s (every answer the ban, for %d s)", d(b.At), b.Wait))
	}
	if r := f.RedisDown; r != nil {
		parts = append(parts, fmt.Sprintf("Redis shut down (SHUTDOWN NOSAVE) at %s, back empty at %s", d(r.At), d(r.Back)))
	}
	if f.Refuse > 0 {
		parts = append(parts, "DingTalk refuses connections for the first "+d(f.Refuse)+", then listens again")
	}
	if t := s.Tune.String(); t != "" {
		parts = append(parts, "dingproxy with "+t)
	}
	if k := f.Kill; k != nil {
		who := "dingproxy's process"
		if k.Holder {
			who = "the dingproxy process that holds the fleet courier's lease"
		}
		kill := fmt.Sprintf("%s killed with SIGKILL %s after the last answer", who, d(k.After))
		if s.Faults.Refuse > 0 {
			kill += " (DingTalk still refusing)"
		}
		if k.Restart {
			kill += ", then started again on the same outbox.dir"
		}
		parts = append(parts, kill)
	}
	if m := s.deferring(); m != "" {
		parts = append(parts, s.describeDefer(m))
	}
	return strings.Join(parts, "; ")
}

// who is the clients, when they are fleets.
func (s Scenario) who() string {
	switch {
	case s.Replicas <= 1:
		return ""
	case slices.Contains(s.Clients, ProxyShared):
		return fmt.Sprintf("%d dingproxies of one app alone, and %d sharing through Redis: ", s.Replicas, s.Replicas)
	case slices.Contains(s.Clients, ProxyFleetDeferred):
		return fmt.Sprintf("%d replicas of one app for each client (the plain ones alone, dingproxy's %d sharing through Redis): ", s.Replicas, s.Replicas)
	}
	return fmt.Sprintf("%d replicas of one app for each client, alone (no shared state): ", s.Replicas)
}

// what is the workload, how many calls, and when.
func (s Scenario) what(scale float64) string {
	w := s.Work
	reads, sends := w.split()
	n := len(w.APIs)
	on := fmt.Sprintf("on %d APIs", len(distinct(apis(w.APIs))))
	if len(distinct(apis(w.APIs))) == 1 {
		on = "on ONE API"
	}
	// The quota counts the calls to both hosts.
	if hosts := upstreams(w.APIs); len(hosts) > 1 && s.Faults.MonthlyQuota > 0 {
		on += " (" + strings.Join(hosts, " and ") + ")"
	}
	var noun string
	switch {
	case w.robots() == 1:
		noun = "alerts to ONE custom robot"
	case w.robots() > 1:
		noun = fmt.Sprintf("alerts to %d custom robots in turn", w.robots())
	case w.SendShare > 0:
		noun = fmt.Sprintf("reads and sends (about %.0f%% sends) %s, drawn at random", 100*w.SendShare, on)
	case len(sends) == 0:
		noun = "reads " + on
		if n == 1 && w.APIs[0].Same {
			noun = "identical reads " + on
		}
		if s.Faults.MonthlyQuota > 0 && allMetered(w.APIs) {
			noun = "metered " + noun
		}
	case len(reads) == 0:
		noun = "sends (unique bodies) " + on
	default:
		noun = "reads and sends " + on + " in turn"
	}
	if w.PerReplica && s.Replicas > 1 {
		noun += ", each replica calling every one"
	}
	rate := func(r float64) string {
		if s.Replicas > 1 {
			return fmt.Sprintf("%s/s in all (%s/s each)", num(r), num(r/float64(s.Replicas)))
		}
		return num(r) + "/s"
	}
	d := scaled(s.Duration, scale)
	switch {
	case len(s.Rates) > 0:
		var rs []string
		for _, r := range s.Rates {
			rs = append(rs, rate(r))
		}
		return fmt.Sprintf("%s at %s, for %s each after %s of warm-up", noun, strings.Join(rs, ", then "), d, s.Warmup)
	case s.Calls > 0 && s.Duration > 0:
		return fmt.Sprintf("%d %s over %s", s.Calls, noun, d)
	case s.Calls > 0:
		return fmt.Sprintf("%d %s at %s", s.Calls, noun, rate(s.Rate))
	}
	return fmt.Sprintf("%s at %s for %s", noun, rate(s.Rate), d)
}

// faultWords are the faults' names in the descriptions, by their spec
// name (dingtalktest.Fault.String); others keep theirs.
var faultWords = map[string]string{
	"system-busy":  "system busy",
	"reset-before": "reset before execution",
	"reset-after":  "executed, then the connection reset",
}

// describeChaos says what share of calls fail, how, and on which APIs.
func describeChaos(c dingtalktest.Chaos, w Workload) string {
	var total float64
	var each []string
	for _, f := range c.Faults {
		total += f.P
		name := f.Fault.String()
		if v, ok := faultWords[name]; ok {
			name = v
		} else if code, ok := strings.CutPrefix(name, "status:"); ok {
			name = code
		} else if d, ok := strings.CutPrefix(name, "latency:"); ok {
			name = d + " late"
		}
		each = append(each, pct(f.P)+" "+name)
	}
	where := ""
	if len(c.Paths) > 0 && !slices.Equal(distinct(c.Paths), distinct(apis(w.APIs))) {
		where = " on " + strings.Join(c.Paths, ", ")
	}
	if len(each) == 1 {
		return fmt.Sprintf("%s of calls%s at random: %s", pct(total), where, strings.TrimPrefix(each[0], pct(total)+" "))
	}
	return fmt.Sprintf("%s of calls%s fail at random (%s)", pct(total), where, strings.Join(each, ", "))
}

// ChaosSpec is c as dingtalktest.ParseChaos reads it.
func ChaosSpec(c dingtalktest.Chaos) string {
	var items []string
	for _, f := range c.Faults {
		items = append(items, f.Fault.String()+"="+strconv.FormatFloat(f.P, 'f', -1, 64))
	}
	return strings.Join(items, ",")
}

// String says what t changes in dingproxy's configuration, by its keys.
func (t Tuning) String() string {
	var out []string
	if t.PerAPIQPS > 0 {
		out = append(out, "pacing.per_api_qps "+num(t.PerAPIQPS))
	}
	if t.GlobalQPS > 0 {
		out = append(out, "pacing.global_qps "+num(t.GlobalQPS))
	}
	if t.OpenTimeout > 0 {
		out = append(out, "breaker.open_timeout "+t.OpenTimeout.String())
	}
	if t.MaxAttempts > 0 {
		out = append(out, "retry.max_attempts "+strconv.Itoa(t.MaxAttempts))
	}
	if t.CachePath != "" {
		out = append(out, fmt.Sprintf("a route on %s with cache %s", t.CachePath, t.CacheTTL))
	}
	return strings.Join(out, ", ")
}

// pct is a probability as a percentage: "8%", "30%" (float sums rounded).
func pct(p float64) string { return num(math.Round(100*p*1e6)/1e6) + "%" }

func distinct(xs []string) []string {
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}

func upstreams(reqs []Req) []string {
	var out []string
	for _, q := range reqs {
		if u := dingtalk.UpstreamFor(q.API).String(); !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

func allMetered(reqs []Req) bool {
	for _, q := range reqs {
		if !dingtalk.Describe(q.API).Metered {
			return false
		}
	}
	return true
}
