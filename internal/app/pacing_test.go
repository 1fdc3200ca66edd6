package app_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// robotStack is a stack whose fake DingTalk enforces the per-robot limit
// (perMinute sends a minute, then a 10-minute block).
func robotStack(t *testing.T, perMinute int, opts ...stackOpt) (*stack, *dingtalktest.Server) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{RobotPerMinute: perMinute})
	return newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil, opts...), fake
}

func robotPath(robot string) string {
	return "/robot/send?access_token=" + dingtalktest.DefaultRobotToken + robot
}

// TestRobotsPacedEachOnTheirOwn: one robot gets DingTalk's 20 a minute at
// once, and the rest of a burst is answered paced at once instead of sent
// into the robot's 10-minute block; five robots at once are not slowed.
func TestRobotsPacedEachOnTheirOwn(t *testing.T) {
	s, fake := robotStack(t, 20)
	msg := []byte(`{"msgtype":"text","text":{"content":"disk full"}}`)
	sent, paced := 0, 0
	start := time.Now()
	for range 25 {
		resp, body := s.do(http.MethodPost, robotPath("-a"), msg)
		switch {
		case resp.StatusCode == 200 && errcodeOf(t, body) == 0:
			sent++
		case resp.StatusCode == 429 && resp.Header.Get(proxy.HeaderFallback) == proxy.KindPaced && resp.Header.Get("Retry-After") != "":
			paced++
			if strings.Contains(string(body), dingtalktest.DefaultRobotToken) {
				t.Errorf("the paced answer names the robot's token: %s", body)
			}
		default:
			t.Errorf("send: %d %s", resp.StatusCode, body)
		}
	}
	if sent != 20 || paced != 5 {
		t.Errorf("%d sent and %d paced, want 20 and 5", sent, paced)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("25 sends took %v: paced ones must be answered at once, not queued", d)
	}
	if n := fake.RobotThrottled(); n != 0 {
		t.Errorf("%d sends went into DingTalk's robot throttle, want 0", n)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for r := range 5 {
		wg.Go(func() {
			for range 10 {
				resp, body := s.do(http.MethodPost, robotPath(fmt.Sprintf("-r%d", r)), msg)
				if resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
					mu.Lock()
					bad++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if bad != 0 || fake.RobotThrottled() != 0 {
		t.Errorf("5 robots x 10: %d not delivered, %d throttled by DingTalk; want all delivered", bad, fake.RobotThrottled())
	}
}

// TestRobotThrottleBlocksTheRobot: when DingTalk throttles a robot anyway
// (its limit is lower than configured), that robot's later sends are
// answered paced for the 10 minutes without reaching DingTalk; other robots
// go on.
func TestRobotThrottleBlocksTheRobot(t *testing.T) {
	s, fake := robotStack(t, 2)
	msg := []byte(`{"msgtype":"text","text":{"content":"x"}}`)
	for range 2 {
		if resp, body := s.do(http.MethodPost, robotPath("-a"), msg); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
			t.Fatalf("send: %d %s", resp.StatusCode, body)
		}
	}
	resp, body := s.do(http.MethodPost, robotPath("-a"), msg)
	if errcodeOf(t, body) != dingtalk.ErrcodeRobotTooFast || resp.Header.Get(proxy.HeaderAttempts) != "1" {
		t.Fatalf("third send: %d %s, want DingTalk's 130101 after one attempt (not retried)", resp.StatusCode, body)
	}
	hits := fake.Hits(dingtalk.PathRobotSend)
	resp, _ = s.do(http.MethodPost, robotPath("-a"), msg)
	if resp.StatusCode != 429 || resp.Header.Get(proxy.HeaderFallback) != proxy.KindPaced {
		t.Errorf("send during the block: %d, want 429 paced", resp.StatusCode)
	}
	if n := fake.Hits(dingtalk.PathRobotSend) - hits; n != 0 {
		t.Errorf("%d sends reached DingTalk during the robot's block", n)
	}
	if resp, body := s.do(http.MethodPost, robotPath("-b"), msg); resp.StatusCode != 200 || errcodeOf(t, body) != 0 {
		t.Errorf("another robot: %d %s", resp.StatusCode, body)
	}
}

// TestThrottledCallsGetPacedNotBadGateway: a call DingTalk keeps throttling
// until its time runs out is answered DingTalk's throttle or 429 paced,
// never a 502 that blames the network.
func TestThrottledCallsGetPacedNotBadGateway(t *testing.T) {
	s := newStack(t, nil, func(c *config.Config) { c.Retry.Timeout, c.Retry.PerTryTimeout = 1500*time.Millisecond, time.Second })
	for _, path := range []string{dingtalktest.PathDeptList, dingtalktest.PathContactUsers + "u1"} {
		s.fake.Script(path, dingtalktest.Throttle(), dingtalktest.Throttle(), dingtalktest.Throttle(), dingtalktest.Throttle())
		resp, body := s.do(http.MethodGet, path, nil)
		paced := resp.StatusCode == 429 && resp.Header.Get(proxy.HeaderFallback) == proxy.KindPaced
		if !paced && resp.Header.Get(proxy.HeaderFallback) != "" || resp.StatusCode >= 500 {
			t.Errorf("%s: %d %s, want DingTalk's throttle answer or 429 paced", path, resp.StatusCode, body)
		}
		if paced {
			checkOwnShape(t, "paced", path, body)
		}
	}
}
