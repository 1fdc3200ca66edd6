package dingtalktest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
)

func sha(body string) string {
	sum := sha256.Sum256([]byte(body))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func TestDeliveries_Robot(t *testing.T) {
	clk := newClock(t0)
	s := NewServer(t, Options{RobotToken: "rt", Now: clk.Now})
	c := newClient(t)
	send := func(tok, body string) {
		t.Helper()
		clk.Advance(time.Second)
		checkFields(t, robotCall(t, c, s, tok, "", body), map[string]any{"errcode": num(0)})
	}
	a, b, bAgain, d := textMsg("a"), `{"msgUuid":"u1","msgtype":"text","text":{"content":"b"}}`,
		`{"msgUuid":"u1","msgtype":"text","text":{"content":"b, resent"}}`, textMsg("d")
	send("rt", a)      // +1s
	send("rt", b)      // +2s
	send("rt", a)      // +3s: a, twice
	send("rt", bAgain) // +4s: a replay of u1, not executed
	send("rt-2", a)    // +5s: another robot, another message
	s.Script(dingtalk.PathRobotSend, ResetAfterExec())
	clk.Advance(time.Second) // +6s
	if _, err := tryCall(c, s, http.MethodPost, dingtalk.PathRobotSend, "rt", []byte(d)); err == nil {
		t.Fatal("ResetAfterExec send succeeded, want a transport error")
	}
	send("rt", d) // +7s: the client resends: twice

	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	want := []Delivery{
		{Key: sha(a), Robot: "rt", Executions: 2, Body: []byte(a), First: at(1)},
		{Key: "msgUuid:u1", Robot: "rt", Executions: 1, Body: []byte(b), First: at(2)},
		{Key: sha(a), Robot: "rt-2", Executions: 1, Body: []byte(a), First: at(5)},
		{Key: sha(d), Robot: "rt", Executions: 2, Body: []byte(d), First: at(6)},
	}
	if diff := cmp.Diff(want, s.Deliveries(dingtalk.PathRobotSend)); diff != "" {
		t.Errorf("Deliveries (-want +got):\n%s", diff)
	}
	if distinct, twice := s.DeliveryCounts(dingtalk.PathRobotSend); distinct != 4 || twice != 2 {
		t.Errorf("DeliveryCounts = %d, %d; want 4, 2", distinct, twice)
	}

	// The copy is the caller's.
	got := s.Deliveries(dingtalk.PathRobotSend)
	got[0].Body[0] = 'X'
	if s.Deliveries(dingtalk.PathRobotSend)[0].Body[0] == 'X' {
		t.Error("Deliveries returned the server's own body")
	}

	s.ResetCounters()
	if distinct, twice := s.DeliveryCounts(dingtalk.PathRobotSend); distinct != 0 || twice != 0 || s.Deliveries(dingtalk.PathRobotSend) != nil {
		t.Errorf("after ResetCounters: DeliveryCounts = %d, %d; want none", distinct, twice)
	}
}

// TestDeliveries_RefusedNotCounted: sends DingTalk refused (token, security,
// minute) are not deliveries.
func TestDeliveries_RefusedNotCounted(t *testing.T) {
	s := NewServer(t, Options{RobotToken: "rt", RobotPerMinute: 1, RobotKeywords: []string{"alert"}})
	c := newClient(t)
	checkFields(t, robotCall(t, c, s, "bogus", "", textMsg("alert 0")), map[string]any{"errcode": num(dingtalk.ErrcodeRobotNoToken)})
	checkFields(t, robotCall(t, c, s, "rt", "", textMsg("no keyword")), map[string]any{"errcode": num(errcodeRobotSecurity)})
	checkFields(t, robotCall(t, c, s, "rt", "", textMsg("alert 1")), map[string]any{"errcode": num(0)})
	checkFields(t, robotCall(t, c, s, "rt", "", textMsg("alert 2")), map[string]any{"errcode": num(dingtalk.ErrcodeRobotTooFast)})
	s.Script(dingtalk.PathRobotSend, ResetBeforeExec())
	if _, err := tryCall(c, s, http.MethodPost, dingtalk.PathRobotSend, "rt-2", []byte(textMsg("alert 3"))); err == nil {
		t.Fatal("ResetBeforeExec send succeeded")
	}
	ds := s.Deliveries(dingtalk.PathRobotSend)
	if len(ds) != 1 || string(ds[0].Body) != textMsg("alert 1") {
		t.Errorf("Deliveries = %+v, want alert 1 only", ds)
	}
}

func TestDeliveries_WorkNotices(t *testing.T) {
	s := NewServer(t, Options{})
	c := newClient(t)
	tok := fetchToken(t, c, s)
	notice := func(i int) []byte {
		return []byte(fmt.Sprintf(`{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text"}}`, i))
	}

	// 60 distinct notices at once, each sent once.
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			res, err := tryCall(c, s, http.MethodPost, PathAsyncSend, tok, notice(i))
			if err != nil || res.json["errcode"] != num(0) {
				t.Errorf("notice %d: %v %s", i, err, res.raw)
			}
		})
	}
	wg.Wait()
	if distinct, twice := s.DeliveryCounts(PathAsyncSend); distinct != 60 || twice != 0 {
		t.Errorf("DeliveryCounts = %d, %d; want 60, 0", distinct, twice)
	}

	// One sent again: twice. One refused unexecuted: not counted.
	call(t, c, s, http.MethodPost, PathAsyncSend, tok, notice(7))
	s.Script(PathAsyncSend, SystemBusy()) // answered -1 before the handler: not executed
	call(t, c, s, http.MethodPost, PathAsyncSend, tok, notice(60))
	if distinct, twice := s.DeliveryCounts(PathAsyncSend); distinct != 60 || twice != 1 {
		t.Errorf("DeliveryCounts = %d, %d; want 60, 1", distinct, twice)
	}
	for _, d := range s.Deliveries(PathAsyncSend) {
		if want := 1 + btoi(string(d.Body) == string(notice(7))); d.Executions != want || d.Robot != "" || d.Key != sha(string(d.Body)) {
			t.Errorf("delivery %s: %+v, want %d executions, keyed by its body", d.Body, d, want)
		}
	}

	// Reads are not messages.
	call(t, c, s, http.MethodPost, PathUserGet, tok, []byte(`{"userid":"u1"}`))
	if s.Executions(PathUserGet) != 1 || s.Deliveries(PathUserGet) != nil {
		t.Errorf("user/get: %d executions, %d deliveries; want 1, none", s.Executions(PathUserGet), len(s.Deliveries(PathUserGet)))
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
