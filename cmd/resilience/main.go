// Command resilience is dingproxy's resilience benchmark: it runs the
// scenarios of the faults group (transient errors on reads, resets after
// execution on sends, DingTalk's QPS limit under a higher load, a full
// outage, revoked tokens), the pacing group (a limit lower than configured,
// replicas alone, custom robots' limit a minute) and the quota and cache
// group against a fake DingTalk on 127.0.0.1 three ways (a plain client, a
// client with the common SDK retry loop, and through dingproxy on its
// built-in defaults), the fleet group two ways (dingproxies alone, and
// sharing through a redis-server it starts, when one is on the PATH), and
// the deferred group (an alert burst past a robot's minute, with and
// without merge, refused connections, the alert burst with dingproxy's
// process killed with SIGKILL and started again on its outbox, and a
// fleet of four dingproxy processes sharing a redis-server whose
// courier is killed while DingTalk refuses connections) three ways: the
// plain client, the SDK loop, and dingproxy with defer on for the send
// routes, counting what DingTalk delivered message by message. The
// processes killed are this program re-executed (scenario.ChildMain). It
// prints one table (and one of the deliveries), then the scenarios'
// targets and whether dingproxy met them. Every scenario is a row of the
// scenario table (internal/scenario), described from its fields. It needs
// no credentials and no network, and stops after 8 minutes at most (16
// with -one-at-a-time).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/resilience"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

func main() {
	scenario.ChildMain() // one of the scenarios' dingproxy processes, when started as one
	var o resilience.Options
	var only, groups string
	flag.Float64Var(&o.Scale, "scale", 1, "multiply every scenario's duration by this (0.05-2)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run (default all): "+strings.Join(resilience.Scenarios, ","))
	flag.StringVar(&groups, "group", "", "comma-separated groups of scenarios to run (default all): "+resilience.GroupNames())
	flag.Int64Var(&o.Seed, "seed", 1, "fault random seed")
	flag.BoolVar(&o.OneAtATime, "one-at-a-time", false, "run a scenario's clients one after another, not side by side")
	flag.Parse()
	if o.Scale < 0.05 || o.Scale > 2 {
		fmt.Fprintln(os.Stderr, "resilience: -scale must be in [0.05, 2]")
		os.Exit(2)
	}
	o.Only = list(only)
	for _, g := range list(groups) {
		o.Groups = append(o.Groups, scenario.Group(g))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	limit := 8 * time.Minute
	if o.OneAtATime {
		limit *= 2
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	chosen, err := resilience.Chosen(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	replicas := scenario.Must(scenario.Fleet).Replicas
	fmt.Println("dingproxy resilience benchmark: a fake DingTalk on 127.0.0.1, each scenario run with a fresh fake")
	fmt.Println("(and a fresh dingproxy on its built-in defaults) for each of three clients, side by side:")
	fmt.Println("  direct              a plain client, one attempt per call, token fetched once at start")
	fmt.Printf("  direct + SDK retry  the common DingTalk SDK loop: %d attempts, backoff 100 ms, 200 ms, retrying\n", bench.SDKAttempts)
	fmt.Println("                      network errors, 5xx, system busy and throttle codes, POST included")
	fmt.Println("  dingproxy           the same plain client through dingproxy")
	fmt.Printf("(fleet: %d of each, calls spread round robin; %d dingproxies alone, with no shared state.)\n", replicas, replicas)
	fmt.Printf("  dingproxy shared    (the %s group) %d dingproxies sharing through a local redis-server,\n", scenario.GroupFleet, replicas)
	fmt.Println("                      beside as many alone (\"dingproxy\")")
	fmt.Printf("  %-19s (the %s group) dingproxy with routes[].defer on the send routes, its outbox\n", scenario.ProxyDeferred, scenario.GroupDeferred)
	fmt.Println("                      in a temporary directory; every client sends each message once")
	fmt.Printf("                      (in %s: a process of its own, this program re-executed)\n", scenario.Killed)
	fmt.Printf("  %s\n", scenario.ProxyFleetDeferred)
	fmt.Printf("                      (%s) %d dingproxy processes deferring, sharing through a local\n", scenario.FleetKilled, replicas)
	fmt.Println("                      redis-server: the fleet's shared outbox")
	fmt.Println()
	for _, s := range chosen {
		fmt.Printf("  %-17s %s\n", s.Name, s.Describe(o.Scale))
	}
	fmt.Println()
	start := time.Now()
	o.Progress = func(r scenario.Row) {
		fmt.Fprintf(os.Stderr, "  %-17s %-22s done in %s\n", r.Scenario, r.Mode, r.Elapsed.Round(100*time.Millisecond))
	}
	o.Skipped = func(scenario, why string) {
		fmt.Fprintf(os.Stderr, "  %-17s skipped: %s\n", scenario, why)
	}
	rows, err := resilience.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "resilience:", err)
		if len(rows) == 0 {
			os.Exit(1)
		}
	}
	var table bytes.Buffer
	resilience.PrintTable(&table, rows)
	if table.Len() > 0 {
		fmt.Print(table.String())
		fmt.Println()
		fmt.Println("success: calls that got a successful answer (a fallback answered by dingproxy is not one).")
		fmt.Println("dup sends: sends DingTalk executed twice (a person got the notice twice).")
		fmt.Println("attempts/call: upstream calls DingTalk received per client call, token fetches excluded")
		fmt.Println("  (outages: counted per call, the client's own attempts or X-Dingproxy-Attempts).")
		fmt.Println("throttled/100: the fake's QPS-limit rejections per 100 upstream attempts; after warm-up: the same")
		if w := warmups(chosen); w != "" {
			fmt.Printf("  from the warm-up on (%s).\n", w)
		} else {
			fmt.Println("  from the warm-up on (none of these scenarios has one).")
		}
		fmt.Println("fallbacks: calls dingproxy answered itself (circuit open, route fallback, paced).")
	}
	var deliveries bytes.Buffer
	resilience.PrintDeliveries(&deliveries, rows)
	if deliveries.Len() > 0 {
		fmt.Println()
		fmt.Printf("deliveries (the %s group): what DingTalk delivered of the messages each client sent once:\n", scenario.GroupDeferred)
		fmt.Print(deliveries.String())
		fmt.Println("answered ok: calls answered with success; kept: of them, answered X-Dingproxy-Deferred (kept for later).")
		fmt.Println("delivered, twice: messages DingTalk executed, and executed more than once (a merged message counts for")
		fmt.Println("  each alert in it); unknown: kept sends whose outcome dingproxy cannot know (on the wire at a kill,")
		fmt.Println("  never sent again), from its admin endpoint GET /outbox/<id> (\"-\": not read, in-process dingproxy);")
		fmt.Println("  into limit/block: robot sends DingTalk answered 130101 (past its minute, or blocked).")
		fmt.Println("last delivery: when DingTalk first executed the last message delivered, from the first call,")
		fmt.Println("  or from when it listens again after refusing connections; p50, p99: the clients' answer times.")
	}
	var targets bytes.Buffer
	resilience.PrintTargets(&targets, rows)
	if targets.Len() > 0 {
		fmt.Println()
		fmt.Printf("targets (dingproxy, in the %s group dingproxy shared, in the %s group %q or\n", scenario.GroupFleet, scenario.GroupDeferred, scenario.ProxyDeferred)
		fmt.Printf("%q, must keep them; the others for comparison):\n", scenario.ProxyFleetDeferred)
		fmt.Print(targets.String())
		fmt.Println("accepted: successful calls per second after the warm-up, over whole seconds until the last arrival, / the limit.")
		fmt.Printf("at once: answered in under %s; paced: 429 with X-Dingproxy-Fallback: paced and Retry-After.\n", scenario.AtOnce)
		fmt.Printf("%s: upstream calls from the ban's start, the one that met it included (0 from the other %d).\n", scenario.SharedBan, replicas-1)
		fmt.Printf("%s: p99 against the %d alone; sharing again: all %d subscribed to the fleet's channel.\n", scenario.RedisKilled, replicas, replicas)
		fmt.Printf("%s: the restart bound is the burst's plus the time from SIGKILL to serving again; %s: from the kill.\n", scenario.Killed, scenario.FleetKilled)
		fmt.Println("(shown): a figure beside the targets, not one of them.")
	}
	fmt.Printf("(took %s)\n", time.Since(start).Round(time.Second))
	if err != nil {
		os.Exit(1)
	}
}

// list is a comma-separated flag's items.
func list(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// warmups says when the warm-up of each scenario of ss that has one ends:
// "throttle: 1s into the load; unknown, fleet: 3s into the load".
func warmups(ss []scenario.Scenario) string {
	var order []time.Duration
	names := map[time.Duration][]string{}
	for _, s := range ss {
		if s.Warmup > 0 {
			if _, ok := names[s.Warmup]; !ok {
				order = append(order, s.Warmup)
			}
			names[s.Warmup] = append(names[s.Warmup], s.Name)
		}
	}
	var parts []string
	for _, d := range order {
		parts = append(parts, fmt.Sprintf("%s: %s into the load", strings.Join(names[d], ", "), d))
	}
	return strings.Join(parts, "; ")
}
