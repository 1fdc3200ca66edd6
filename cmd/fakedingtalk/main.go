// Command fakedingtalk runs the dingtalktest fake DingTalk server standalone,
// for demos and manual testing of dingproxy. It listens on loopback only.
//
//	fakedingtalk -listen 127.0.0.1:9999 -chaos 'system-busy=0.1,reset-after=0.05' -qps 20
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fakedingtalk:", err)
		os.Exit(2)
	}
}

// run serves until ctx is done; it returns an error for bad flags or when it
// cannot listen.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakedingtalk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9999", "loopback `address` to listen on (127.0.0.0/8, ::1 or localhost)")
	appKey := fs.String("app-key", dingtalktest.DefaultAppKey, "app key the token endpoints accept")
	appSecret := fs.String("app-secret", dingtalktest.DefaultAppSecret, "app secret the token endpoints accept")
	robotToken := fs.String("robot-token", dingtalktest.DefaultRobotToken, "access_token /robot/send accepts")
	tokenTTL := fs.Duration("token-ttl", dingtalktest.DefaultTokenTTL, "lifetime of issued tokens")
	chaosSpec := fs.String("chaos", "", "random faults, e.g. `system-busy=0.1,throttle=0.05,latency:50ms=0.05`")
	qps := fs.Int("qps", 0, "per-path QPS limit with a 1 s penalty (0 = off)")
	seed := fs.Int64("seed", 1, "chaos RNG seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := checkLoopback(*listen); err != nil {
		return err
	}
	if *tokenTTL <= 0 {
		return fmt.Errorf("-token-ttl %v: must be positive", *tokenTTL)
	}
	if *qps < 0 {
		return fmt.Errorf("-qps %d: must be 0 (off) or positive", *qps)
	}
	chaos, err := dingtalktest.ParseChaos(*chaosSpec)
	if err != nil {
		return fmt.Errorf("-chaos: %w", err)
	}

	s := dingtalktest.New(dingtalktest.Options{
		AppKey:     *appKey,
		AppSecret:  *appSecret,
		RobotToken: *robotToken,
		TokenTTL:   *tokenTTL,
		Seed:       *seed,
	})
	s.SetChaos(chaos)
	s.SetQPSLimit(*qps)
	if err := s.Start(*listen); err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	defer s.Close()

	fmt.Fprintf(stdout, "fakedingtalk listening on %s\n", s.URL())
	fmt.Fprintf(stdout, "  app key:     %s\n", *appKey)
	fmt.Fprintf(stdout, "  app secret:  %s\n", *appSecret)
	fmt.Fprintf(stdout, "  robot token: %s\n", *robotToken)
	fmt.Fprintf(stdout, "  token ttl:   %v\n", *tokenTTL)
	if *chaosSpec != "" {
		fmt.Fprintf(stdout, "  chaos:       %s (seed %d)\n", *chaosSpec, *seed)
	}
	if *qps > 0 {
		fmt.Fprintf(stdout, "  qps limit:   %d per path\n", *qps)
	}

	<-ctx.Done()
	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return errors.New("shutdown: handlers still running after 10s")
	}
	fmt.Fprintf(stdout, "fakedingtalk stopped: %d requests, %d token fetches, %d throttled, %d duplicate sends, %d secret leaks\n",
		s.TotalHits(), s.TokenFetches(), s.Throttled(), s.Duplicates(), s.SecretLeaks())
	return nil
}

// checkLoopback accepts only a host:port whose host is localhost or a
// loopback IP (127.0.0.0/8, ::1): the fake must never be reachable from
// another machine.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if host == "" {
		host = "all interfaces"
	}
	return fmt.Errorf("-listen %q: host %s is not loopback; use 127.0.0.1, ::1 or localhost", addr, host)
}
