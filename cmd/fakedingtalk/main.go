// Command fakedingtalk runs the dingtalktest fake DingTalk server standalone,
// for demos and manual testing of dingproxy. It listens on loopback only.
//
//	fakedingtalk -listen 127.0.0.1:9999 -chaos 'system-busy=0.1,reset-after=0.05' -qps 20
//
// The custom robot (/robot/send) can be made to behave as DingTalk's does:
//
//	fakedingtalk -robot-per-minute 20 -robot-max-body 20000 -robot-secret SEC... -robot-keywords alert,告警
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
	robotToken := fs.String("robot-token", dingtalktest.DefaultRobotToken, "access_token /robot/send accepts; `token`-<anything> is another robot")
	robotSecret := fs.String("robot-secret", "", "signing `secret` every robot requires: a send must carry timestamp (Unix ms, within\n"+
		"an hour) and sign = urlEncode(base64(HmacSHA256(secret, timestamp+\"\\n\"+secret))) in its\n"+
		"query, else errcode 310000 (empty = unsigned sends go)")
	robotKeywords := fs.String("robot-keywords", "", "comma-separated `keywords` every robot requires: a message whose content holds none\n"+
		"is answered errcode 310000 \"keywords not in content\" (empty = none)")
	robotPerMinute := fs.Int("robot-per-minute", 0, "per-robot limit: past this many sends in any minute, errcode 130101 and a\n"+
		"10-minute block (DingTalk's is 20; 0 = off)")
	robotMaxBody := fs.Int("robot-max-body", 0, "longest robot message body in `bytes`, else errcode 460101 \"message too long\"\n"+
		"(DingTalk's is 20000; 0 = no limit)")
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
	if *robotPerMinute < 0 {
		return fmt.Errorf("-robot-per-minute %d: must be 0 (off) or positive", *robotPerMinute)
	}
	if *robotMaxBody < 0 {
		return fmt.Errorf("-robot-max-body %d: must be 0 (no limit) or positive", *robotMaxBody)
	}
	keywords, err := parseKeywords(*robotKeywords)
	if err != nil {
		return err
	}
	chaos, err := dingtalktest.ParseChaos(*chaosSpec)
	if err != nil {
		return fmt.Errorf("-chaos: %w", err)
	}

	s := dingtalktest.New(dingtalktest.Options{
		AppKey:         *appKey,
		AppSecret:      *appSecret,
		RobotToken:     *robotToken,
		RobotSecret:    *robotSecret,
		RobotKeywords:  keywords,
		RobotPerMinute: *robotPerMinute,
		RobotMaxBody:   *robotMaxBody,
		TokenTTL:       *tokenTTL,
		Seed:           *seed,
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
	robotRules := robotRules(*robotSecret != "", keywords, *robotPerMinute, *robotMaxBody)
	if robotRules != "" {
		fmt.Fprintf(stdout, "  robot rules: %s\n", robotRules)
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
	if robotRules != "" {
		var sum dingtalktest.RobotStats
		for _, st := range s.Robots() {
			sum.Executed += st.Executed
			sum.Throttled += st.Throttled
			sum.Blocks += st.Blocks
			sum.Refused += st.Refused
		}
		fmt.Fprintf(stdout, "fakedingtalk robots: %d messages posted, %d refused (310000/460101), %d throttled (130101), %d blocks\n",
			sum.Executed, sum.Refused, sum.Throttled, sum.Blocks)
	}
	return nil
}

// parseKeywords splits a comma-separated keyword list; blanks around each are
// dropped, and an empty keyword is an error.
func parseKeywords(spec string) ([]string, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, nil
	}
	var out []string
	for k := range strings.SplitSeq(spec, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("-robot-keywords %q: empty keyword", spec)
		}
		out = append(out, k)
	}
	return out, nil
}

// robotRules describes the robot settings in force, without the secret, or
// "" when there are none.
func robotRules(signed bool, keywords []string, perMinute, maxBody int) string {
	var rules []string
	if signed {
		rules = append(rules, "signed sends")
	}
	if len(keywords) > 0 {
		rules = append(rules, fmt.Sprintf("keywords %q", keywords))
	}
	if perMinute > 0 {
		rules = append(rules, fmt.Sprintf("%d a minute then a 10-minute block", perMinute))
	}
	if maxBody > 0 {
		rules = append(rules, fmt.Sprintf("bodies up to %d bytes", maxBody))
	}
	return strings.Join(rules, ", ")
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
