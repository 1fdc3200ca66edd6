//go:build soak

package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// The kill target, on the real binary and DingTalk's real robot rules (20
// a minute, then a 10-minute block): 60 alerts to one robot, each sent
// once and answered at once (delivered, or deferred once the robot's
// minute is spent); SIGKILL of the proxy 3 s after the last answer; a new
// start on the same outbox.dir. At least 59 are delivered (one may have
// been on the wire at the kill: then it is unknown, and never sent
// again), none twice, none into the robot's block. It takes the robot's
// minutes of real time: about two and a half.
func TestBinaryKilledAlertBurst(t *testing.T) {
	bin := buildBinary(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{RobotPerMinute: dingtalktest.RobotLimit})
	dir := filepath.Join(t.TempDir(), "outbox")
	c := testClient(t, 30*time.Second)
	robot := func() dingtalktest.RobotStats { return fake.Robot(dingtalktest.DefaultRobotToken) }
	intoBlock := func() string {
		if st := robot(); st.Throttled != 0 {
			return fmt.Sprintf("a send went into the robot's block: %+v", st)
		}
		return ""
	}

	p := startDeferProxy(t, bin, fake, dir, "")
	const alerts = 60
	var ids []string
	live := 0
	for i := range alerts {
		code, id, body := p.post(t, c, robotPath, robotAlert(i))
		if code != http.StatusOK {
			t.Fatalf("alert %d: %d %s", i, code, body)
		}
		if id == "" {
			live++
		} else {
			ids = append(ids, id)
		}
	}
	t.Logf("%d alerts delivered at once, %d deferred", live, len(ids))
	if live > dingtalktest.RobotLimit || len(ids) == 0 {
		t.Fatalf("%d alerts went at once; want at most the robot's minute (%d), the rest kept", live, dingtalktest.RobotLimit)
	}
	// The scenario: the proxy dies 3 s after the burst was answered.
	time.Sleep(3 * time.Second)
	p.kill(t)
	before, _ := fake.DeliveryCounts(dingtalk.PathRobotSend)

	q := startDeferProxy(t, bin, fake, dir, "")
	states := q.waitSettled(t, c, ids, 5*time.Minute, intoBlock)
	if msg := intoBlock(); msg != "" {
		t.Fatal(msg)
	}
	delivered, unknown := 0, 0
	for id, s := range states {
		switch s.State {
		case "delivered":
			delivered++
		case "unknown":
			unknown++
		default:
			t.Errorf("send %s after the restart: %+v; want delivered (or unknown, had it been on the wire at the kill)", id, s)
		}
	}
	distinct, twice := fake.DeliveryCounts(dingtalk.PathRobotSend)
	t.Logf("delivered before the kill %d (at once %d), after the restart %d kept ones; %d unknown; DingTalk executed %d distinct, %d twice; robot %+v",
		before, live, delivered, unknown, distinct, twice, robot())
	if distinct < alerts-1 || twice != 0 {
		t.Errorf("DingTalk executed %d distinct alerts, %d twice; want at least %d, 0", distinct, twice, alerts-1)
	}
	if unknown > 1 {
		t.Errorf("%d sends unknown; at most one can have been on the wire at the kill", unknown)
	}
	if distinct != live+delivered && distinct != live+delivered+unknown {
		t.Errorf("DingTalk executed %d; the proxy says %d at once and %d delivered later (%d unknown)", distinct, live, delivered, unknown)
	}
	if st := robot(); st.Throttled != 0 || st.Blocks != 0 {
		t.Errorf("the robot was throttled: %+v", st)
	}
}

// robotAlert is alert i to the default robot.
func robotAlert(i int) []byte {
	return fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d: disk full on host-%d"}}`, i, i)
}

// robotPath is the robot webhook for the fake's default robot.
var robotPath = dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
