// Command dingdemo shows what dingproxy does, on one machine, in under a
// minute, with no credentials and no network: it starts a fake DingTalk that
// fails a quarter of all calls, runs the same reads and sends against it three
// ways (a plain client, a client retrying as popular SDKs do, and through
// dingproxy) and prints the three side by side.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/dingproxy/dingproxy/internal/bench"
	"github.com/dingproxy/dingproxy/internal/demo"
)

func main() {
	var o demo.Options
	flag.IntVar(&o.Calls, "calls", 240, "calls per client (30% sends, 70% reads)")
	flag.Float64Var(&o.Rate, "rate", 40, "calls per second (spread over five APIs)")
	flag.StringVar(&o.Faults, "faults", demo.DefaultFaults, "fault mix injected by the fake DingTalk")
	flag.Int64Var(&o.Seed, "seed", 1, "fault random seed")
	flag.Parse()
	if o.Calls > 5000 || o.Rate > 1000 {
		fmt.Fprintln(os.Stderr, "dingdemo: at most 5000 calls at 1000/s")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	fmt.Printf("dingproxy demo: a fake DingTalk on 127.0.0.1 injects faults into %s of calls:\n  %s\n", share(o.Faults), o.Faults)
	fmt.Printf("and enforces DingTalk's limit of %d calls per second per API, with its 1 s penalty.\n", bench.QPSLimit)
	fmt.Printf("each client makes the same %d calls (about 70%% reads, 30%% sends) at %.0f/s.\n\n", o.Calls, o.Rate)
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
	fmt.Printf("\noutage: %s answers 503 to everything for 4 s, then recovers; reads continue 3 s more at 18/s.\n", demo.OutagePath)
	fmt.Printf("(the demo's dingproxy runs with breaker.open_timeout: 2s, not the default 15s, so its recovery shows here)\n\n")
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

func share(spec string) string {
	c, err := demoChaos(spec)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.0f%%", 100*c)
}
