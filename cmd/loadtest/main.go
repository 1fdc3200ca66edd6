// Command loadtest measures the latency dingproxy adds at fixed call rates,
// open loop, against the fake DingTalk on loopback, and prints p50, p99 and
// p99.9 straight, through dingproxy, and the difference. The workload, the
// rates and the duration default to the load scenario's (internal/scenario).
// Bounded: each rate runs -duration on each path, after a warm-up.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/loadtest"
)

func main() {
	def := loadtest.Options{}.Scenario()
	var rs []string
	for _, r := range def.Rates {
		rs = append(rs, strconv.Itoa(int(r)))
	}
	rates := flag.String("rates", strings.Join(rs, ","), "comma-separated calls per second")
	duration := flag.Duration("duration", def.Duration, "measured time per rate and path (max 2m)")
	flag.Parse()
	var o loadtest.Options
	for _, s := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 5000 {
			fmt.Fprintf(os.Stderr, "loadtest: bad rate %q (1 to 5000)\n", s)
			os.Exit(2)
		}
		o.Rates = append(o.Rates, n)
	}
	if *duration <= 0 || *duration > 2*time.Minute {
		fmt.Fprintln(os.Stderr, "loadtest: -duration must be > 0 and <= 2m")
		os.Exit(2)
	}
	o.Duration = *duration
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Printf("loadtest: %s, GOMAXPROCS %d, %s, open loop against the fake on loopback; load generator in the same process\n",
		time.Now().Format(time.DateOnly), runtime.GOMAXPROCS(0), runtime.Version())
	tl := loadtest.TimerLateness(500)
	fmt.Printf("%s\n", o.Scenario().Describe(1))
	fmt.Printf("machine noise: a 1 ms sleep wakes late by p50 %v, p99 %v, p99.9 %v\n", tl[0].Round(time.Microsecond), tl[1].Round(time.Microsecond), tl[2].Round(time.Microsecond))
	rows, err := loadtest.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
	loadtest.PrintTable(os.Stdout, rows)
}
