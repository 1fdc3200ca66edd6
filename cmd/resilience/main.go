// Command resilience is dingproxy's resilience benchmark: it runs the same
// scenarios (transient errors on reads, resets after execution on sends, a
// 20 QPS limit under 60 calls/s, a full outage, revoked tokens; and issue
// 14's pacing scenarios: a limit lower than configured, four replicas
// alone, custom robots' 20 a minute) against a fake DingTalk on 127.0.0.1
// three ways (a plain client, a client with the common SDK retry loop, and
// through dingproxy on its built-in defaults), and issue 15's fleet
// scenarios two ways (four dingproxies alone, four sharing through a
// redis-server it starts, when one is on the PATH), and prints one table,
// then the issues' targets and whether dingproxy met them. It needs no
// credentials and no network, and stops after 5 minutes at most (10 with
// -one-at-a-time).
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

	"github.com/dingproxy/dingproxy/internal/resilience"
)

func main() {
	var o resilience.Options
	var only string
	flag.Float64Var(&o.Scale, "scale", 1, "multiply every scenario's duration by this (0.05-2)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run (default all): "+strings.Join(resilience.Scenarios, ","))
	flag.Int64Var(&o.Seed, "seed", 1, "fault random seed")
	flag.BoolVar(&o.OneAtATime, "one-at-a-time", false, "run a scenario's clients one after another, not side by side")
	flag.Parse()
	if o.Scale < 0.05 || o.Scale > 2 {
		fmt.Fprintln(os.Stderr, "resilience: -scale must be in [0.05, 2]")
		os.Exit(2)
	}
	if only != "" {
		for s := range strings.SplitSeq(only, ",") {
			if s = strings.TrimSpace(s); s != "" {
				o.Only = append(o.Only, s)
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	limit := 5 * time.Minute
	if o.OneAtATime {
		limit *= 2
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	names := o.Only
	if len(names) == 0 {
		names = resilience.Scenarios
	}
	fmt.Println("dingproxy resilience benchmark: a fake DingTalk on 127.0.0.1, each scenario run with a fresh fake")
	fmt.Println("(and a fresh dingproxy on its built-in defaults) for each of three clients, side by side:")
	fmt.Println("  direct              a plain client, one attempt per call, token fetched once at start")
	fmt.Println("  direct + SDK retry  the common DingTalk SDK loop: 3 attempts, backoff 100 ms, 200 ms, retrying")
	fmt.Println("                      network errors, 5xx, system busy and throttle codes, POST included")
	fmt.Println("  dingproxy           the same plain client through dingproxy")
	fmt.Println("(fleet: four of each, calls spread round robin; four dingproxies alone, with no shared state.)")
	fmt.Println("  dingproxy shared    (shared-*, redis-killed) four dingproxies sharing through a local redis-server,")
	fmt.Println("                      beside four alone (\"dingproxy\")")
	fmt.Println()
	for _, n := range names {
		fmt.Printf("  %-15s %s\n", n, resilience.Describe(n, o.Scale))
	}
	fmt.Println()
	start := time.Now()
	o.Progress = func(r resilience.Row) {
		fmt.Fprintf(os.Stderr, "  %-15s %-19s done in %s\n", r.Scenario, r.Mode, r.Elapsed.Round(100*time.Millisecond))
	}
	o.Skipped = func(scenario, why string) {
		fmt.Fprintf(os.Stderr, "  %-15s skipped: %s\n", scenario, why)
	}
	rows, err := resilience.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "resilience:", err)
		if len(rows) == 0 {
			os.Exit(1)
		}
	}
	resilience.PrintTable(os.Stdout, rows)
	fmt.Println()
	fmt.Println("success: calls that got a successful answer (a fallback answered by dingproxy is not one).")
	fmt.Println("dup sends: sends DingTalk executed twice (a person got the notice twice).")
	fmt.Println("attempts/call: upstream calls DingTalk received per client call, token fetches excluded")
	fmt.Println("  (outage: counted per call, the client's own attempts or X-Dingproxy-Attempts).")
	fmt.Println("throttled/100: the fake's QPS-limit rejections per 100 upstream attempts; after warm-up: the same")
	fmt.Println("  from the warm-up on (throttle: 1 s into the load; unknown and fleet: 3 s).")
	fmt.Println("fallbacks: calls dingproxy answered itself (circuit open, route fallback, paced).")
	var targets bytes.Buffer
	resilience.PrintTargets(&targets, rows)
	if targets.Len() > 0 {
		fmt.Println()
		fmt.Println("issues 14-16's targets (dingproxy, or in 15's dingproxy shared, must keep them; the others for comparison):")
		fmt.Print(targets.String())
		fmt.Println("accepted: successful calls per second after 3 s, over whole seconds until the last arrival, / the limit.")
		fmt.Println("at once: answered in under 1 s; paced: 429 with X-Dingproxy-Fallback: paced and Retry-After.")
		fmt.Println("shared-ban: upstream calls from the ban's start, the one that met it included (0 from the other three).")
		fmt.Println("redis-killed: p99 against the four alone; sharing again: all four subscribed to the fleet's channel.")
	}
	fmt.Printf("(took %s)\n", time.Since(start).Round(time.Second))
	if err != nil {
		os.Exit(1)
	}
}
