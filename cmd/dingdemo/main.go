// Command dingdemo shows what dingproxy does, on one machine, in under a
// minute, with no credentials and no network: it starts a fake DingTalk that
// fails a share of all calls, runs the same reads and sends against it three
// ways (a plain client, a client retrying as popular SDKs do, and through
// dingproxy) and prints the three side by side; then the same for an
// outage. Both phases are rows of the scenario table (internal/scenario),
// and what this prints of them is made from their fields.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/demo"
	"github.com/dingproxy/dingproxy/internal/scenario"
)

func main() {
	def := scenario.Must(scenario.Demo)
	var o demo.Options
	flag.IntVar(&o.Calls, "calls", def.Calls, fmt.Sprintf("calls per client (about %.0f%% sends, the rest reads)", 100*def.Work.SendShare))
	flag.Float64Var(&o.Rate, "rate", def.Rate, fmt.Sprintf("calls per second (spread over %d APIs)", len(def.Work.APIs)))
	flag.StringVar(&o.Faults, "faults", demo.DefaultFaults, "fault mix injected by the fake DingTalk")
	flag.Int64Var(&o.Seed, "seed", 1, "fault random seed")
	flag.Parse()
	if o.Calls > 5000 || o.Rate > 1000 {
		fmt.Fprintln(os.Stderr, "dingdemo: at most 5000 calls at 1000/s")
		os.Exit(2)
	}
	sc, err := o.Scenario()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dingdemo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	fmt.Printf("dingproxy demo: a fake DingTalk on 127.0.0.1; each client makes the same calls:\n  %s\n", sc.Describe(1))
	fmt.Printf("  (the faults as -faults takes them: %s)\n\n", scenario.ChaosSpec(sc.Faults.Chaos))
	start := time.Now()
	rs, err := demo.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dingdemo:", err)
		os.Exit(1)
	}
	demo.PrintTable(os.Stdout, rs)
	fmt.Printf("\nduplicate sends: a notice executed twice by DingTalk, so a person got it twice.\n")
	fmt.Printf("upstream attempts per call: what DingTalk had to serve per client call.\n")

	var oo demo.OutageOptions
	out := oo.Scenario()
	fmt.Printf("\noutage: %s\n", out.Describe(1))
	fmt.Printf("(the default breaker.open_timeout is %s; the demo's is shorter, so that dingproxy's recovery shows here)\n\n",
		config.Default().Breaker.OpenTimeout)
	ors, err := demo.RunOutage(ctx, oo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dingdemo:", err)
		os.Exit(1)
	}
	demo.PrintOutageTable(os.Stdout, ors)
	fmt.Printf("\nwhile its breaker is open dingproxy answers at once with a fallback (X-Dingproxy-Fallback)\n")
	fmt.Printf("instead of sending DingTalk more load; it recovers when a half-open probe succeeds.\n")
	fmt.Printf("(%s, took %s)\n", time.Now().Format("2006-01-02"), time.Since(start).Round(time.Second))
}
