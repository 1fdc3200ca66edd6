package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The environment of the proxy process TestFleetOutboxTakeOverAfterKill
// runs (this test binary, re-executed).
const (
	envOutboxProcess = "DINGPROXY_TEST_OUTBOX_PROCESS" // the outbox.dir; set only in the child
	envOutboxFake    = "DINGPROXY_TEST_OUTBOX_FAKE"
	envOutboxRedis   = "DINGPROXY_TEST_OUTBOX_REDIS"
)

// TestOutboxProxyProcess is the child: a whole dingproxy in the fleet,
// deferring robot sends. It prints its address, then HOLDING once it holds
// the courier's lease, and serves until killed (or its stdin closes). Run
// by itself, without the environment, it does nothing.
func TestOutboxProxyProcess(t *testing.T) {
	dir := os.Getenv(envOutboxProcess)
	if dir == "" {
		return
	}
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = os.Getenv(envOutboxFake), os.Getenv(envOutboxFake)
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	cfg.Retry.Backoff.Base, cfg.Retry.Backoff.Max = time.Millisecond, 5*time.Millisecond
	// A delivery that hangs stays in flight until the kill.
	cfg.Retry.PerTryTimeout, cfg.Retry.Timeout, cfg.Retry.MaxAttempts = time.Minute, time.Minute, 1
	cfg.Pacing.PerAPIQPS, cfg.Pacing.GlobalQPS = 1e5, 1e6
	shared(os.Getenv(envOutboxRedis))(&cfg)
	noBreaker(&cfg)
	cfg.Outbox.Dir = dir
	cfg.Routes = append(cfg.Routes, config.Route{Path: dingtalk.PathRobotSend, Defer: &config.Defer{MaxAge: 10 * time.Minute}})
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(&cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a.Start()
	a.SetReady(true)
	px := httptest.NewUnstartedServer(nil)
	px.Config = a.Server(nil)
	px.Listener = a.Listener(px.Listener)
	px.Start()
	fmt.Printf("ADDR %s\n", px.URL)
	go func() {
		for !sharedOf(t, &stack{app: a}).Holding() {
			time.Sleep(10 * time.Millisecond) // polling; killed before long
		}
		fmt.Println("HOLDING")
	}()
	io.Copy(io.Discard, os.Stdin) // until the parent goes
	os.Exit(0)
}

// A proxy holding the courier's lease, and the sends it claimed, is
// killed (SIGKILL, a real process) while one of them is on the wire: the
// other proxies, running since before the kill and not holding the lease
// then, take over and deliver the rest within 60 s of the kill, none
// twice, and the one in flight is unknown, never sent again.
func TestFleetOutboxTakeOverAfterKill(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestOutboxProxyProcess$")
	cmd.Env = append(os.Environ(), envOutboxProcess+"="+t.TempDir(), envOutboxFake+"="+fake.URL(), envOutboxRedis+"="+srv.URL())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-exited
	})
	var addr string
	holding := false
	timeout := time.After(60 * time.Second)
	for addr == "" || !holding {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the proxy process ended before it held the lease")
			}
			if a, found := strings.CutPrefix(l, "ADDR "); found {
				addr = a
			}
			holding = holding || l == "HOLDING"
		case <-timeout:
			t.Fatalf("the proxy process did not take the courier's lease (addr %q)", addr)
		}
	}
	// Eight alerts to two robots, kept by the process while DingTalk
	// refuses connections.
	const n = 8
	ids := make([]string, n)
	for i := range n {
		resp, err := http.Post(addr+robotAt(i%2), "application/json", bytes.NewReader(alert(i)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v struct {
			ID string `json:"dingproxy_deferred"`
		}
		json.Unmarshal(body, &v)
		if ids[i] = v.ID; v.ID == "" {
			t.Fatalf("alert %d not deferred: %d %s", i, resp.StatusCode, body)
		}
	}
	// The first delivery hangs on the wire; the process is killed then.
	fake.Script(dingtalk.PathRobotSend, dingtalktest.Hang())
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	// The others start while the process holds the lease: they keep
	// trying for it, and must not have it before the kill.
	fl := outboxFleet(t, 3, fake, srv.URL(), dingtalk.PathRobotSend, func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	admin := fl[0].app.AdminHandler()
	rdb := srv.Client()
	defer rdb.Close()
	recKey := "dingproxy:{" + dingtalktest.DefaultAppKey + "}:outbox:rec"
	// The other robot's four are delivered, and one send is marked as
	// being sent: the one on the wire.
	var inFlight string
	waitUpTo(t, 30*time.Second, "the other robot's sends delivered and one send on the wire", func() bool {
		if d, _ := fake.DeliveryCounts(dingtalk.PathRobotSend); d != n/2 {
			return false
		}
		recs, err := rdb.HGetAll(context.Background(), recKey).Result()
		if err != nil {
			return false
		}
		sending := 0
		for id, v := range recs {
			if h, err := outbox.Head([]byte(v)); err == nil && h.Sending {
				inFlight = id
				sending++
			}
		}
		return sending == 1
	})
	for i, s := range fl {
		if sharedOf(t, s).Holding() {
			t.Fatalf("proxy %d holds the courier's lease before the kill", i)
		}
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-exited
	killed := time.Now()
	t.Logf("killed the lease holder with %s in flight", inFlight)

	deadline := killed.Add(60 * time.Second)
	for _, id := range ids {
		want := outbox.Delivered
		if id == inFlight {
			want = outbox.Unknown
		}
		for {
			st, doc := outboxState(t, admin, id)
			if st == string(want) {
				break
			}
			if st != string(outbox.Queued) || time.Now().After(deadline) {
				t.Fatalf("send %s: %s, want %s within 60 s of the kill: %v", id, st, want, doc)
			}
			time.Sleep(20 * time.Millisecond) // polling with a deadline
		}
	}
	t.Logf("taken over and delivered %v after the kill", time.Since(killed).Round(time.Millisecond))
	holders := 0
	for _, s := range fl {
		if sharedOf(t, s).Holding() {
			holders++
		}
	}
	if holders != 1 {
		t.Errorf("%d of the others hold the courier's lease after the take-over, want 1", holders)
	}
	if distinct, twice := fake.DeliveryCounts(dingtalk.PathRobotSend); distinct != n-1 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want %d, 0 (the one in flight is never sent again)", distinct, twice, n-1)
	}
	last := map[string]int{}
	for _, d := range fake.Deliveries(dingtalk.PathRobotSend) {
		i := alertNumber(d.Body)
		if p, ok := last[d.Robot]; ok && i < p {
			t.Errorf("robot %s: alert %d delivered after alert %d", d.Robot, i, p)
		}
		last[d.Robot] = i
	}
}
