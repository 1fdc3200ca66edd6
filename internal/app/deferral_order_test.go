package app_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
)

// waitState polls GET /outbox/<id> until the send is in state want, within
// 30 s; any state but queued on the way fails the test.
func waitState(t *testing.T, admin http.Handler, id string, want outbox.State) map[string]any {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, doc := outboxState(t, admin, id)
		if st == string(want) {
			return doc
		}
		if st != string(outbox.Queued) || time.Now().After(deadline) {
			t.Fatalf("send %s is %s, want %s: %v", id, st, want, doc)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// keptNow sends body to path through s and returns the kept send's id,
// failing the test when the send was not kept.
func keptNow(t *testing.T, s *stack, path string, body []byte) string {
	t.Helper()
	resp, b := s.do(http.MethodPost, path, body)
	id := deferredID(t, resp, b)
	if id == "" {
		t.Fatalf("a send to %s was not kept: %d %s", path, resp.StatusCode, b)
	}
	return id
}

// resume ends fake's outage.
func resume(t *testing.T, fake *dingtalktest.Server) {
	t.Helper()
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
}

// A live alert to a robot whose kept alerts still wait (the courier backs
// off after an outage) is kept behind them, never sent before them: per
// robot, the order the alerts came in is the order DingTalk gets them.
func TestLiveRobotSendKeptBehindItsWaitingOnes(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Minute, false))
	admin := s.app.AdminHandler()
	stopListening(t, fake, s)
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	first := `{"msgtype":"text","text":{"content":"alert 1: first"}}`
	resp, body := s.do(http.MethodPost, robot, []byte(first))
	id1 := deferredID(t, resp, body)
	if id1 == "" {
		t.Fatalf("the first alert was not kept during the outage: %d %s", resp.StatusCode, body)
	}
	// The courier tried it and backs off.
	waitFor(t, "the courier's first try of the kept alert", func() bool {
		_, doc := outboxState(t, admin, id1)
		n, _ := doc["attempts"].(float64)
		return n >= 1
	})
	resume(t, fake)
	second := `{"msgtype":"text","text":{"content":"alert 2: second"}}`
	resp, body = s.do(http.MethodPost, robot, []byte(second))
	id2 := deferredID(t, resp, body)
	if id2 == "" {
		t.Fatalf("a live alert while the robot's kept one waits was answered %d %s; want it kept behind it", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Dingproxy-Attempts") != "0" {
		t.Errorf("the alert kept behind was sent: X-Dingproxy-Attempts %q", resp.Header.Get("X-Dingproxy-Attempts"))
	}
	waitDelivered(t, admin, []string{id1, id2}, 30*time.Second)
	ds := fake.Deliveries(dingtalk.PathRobotSend)
	if len(ds) != 2 || string(ds[0].Body) != first || string(ds[1].Body) != second {
		var got []string
		for _, d := range ds {
			got = append(got, string(d.Body))
		}
		t.Fatalf("the robot got %q; want the first alert, then the second", got)
	}
	// Once its queue is empty, a live alert goes at once again.
	resp, body = s.do(http.MethodPost, robot, []byte(`{"msgtype":"text","text":{"content":"alert 3"}}`))
	if id := deferredID(t, resp, body); id != "" || resp.StatusCode != http.StatusOK {
		t.Errorf("a live alert to a robot with nothing waiting: %d %s (kept %q); want it sent at once", resp.StatusCode, body, id)
	}
}

// A merged robot message is a new message: a connection broken after
// DingTalk executed it makes it unknown, never sent again. A message that
// carries its own msgUuid (DingTalk's key for dropping a repeat) is never
// merged: it goes alone, its key intact.
func TestMergedMessageNeverRepeated(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	// Six kept past a minute of five: they merge. (One attempt a call: the
	// first alert's refused dial takes one of the turns, the courier's
	// tries while DingTalk refuses take some more.)
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Minute, true),
		func(c *config.Config) { c.Pacing.RobotPerMinute, c.Retry.MaxAttempts = 5, 1 })
	admin := s.app.AdminHandler()
	stopListening(t, fake, s)
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	var ids []string
	for i := range 6 {
		ids = append(ids, keptNow(t, s, robot, fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d"}}`, i)))
	}
	// Then one with a msgUuid, behind them.
	keyed := `{"msgtype":"text","text":{"content":"alert 6"},"msgUuid":"u-6"}`
	keyedID := keptNow(t, s, robot, []byte(keyed))
	fake.Script(dingtalk.PathRobotSend, dingtalktest.ResetAfterExec())
	resume(t, fake)
	for _, id := range ids {
		waitState(t, admin, id, outbox.Unknown)
	}
	if ex := fake.Robot(dingtalktest.DefaultRobotToken).Executed; ex < 1 {
		t.Fatal("the merged message was never executed")
	}
	waitDelivered(t, admin, []string{keyedID}, 30*time.Second)
	ds := fake.Deliveries(dingtalk.PathRobotSend)
	if len(ds) != 2 || ds[0].Executions != 1 || !strings.Contains(string(ds[0].Body), "6 messages") || string(ds[1].Body) != keyed || ds[1].Executions != 1 {
		var got []string
		for _, d := range ds {
			got = append(got, fmt.Sprintf("%dx %.60s", d.Executions, d.Body))
		}
		t.Errorf("the robot got %q; want the six merged, executed once, then the keyed one alone, as sent", got)
	}
}

// A kept send carrying the client's own token, which DingTalk refuses at
// delivery (40014), is dead at once: the proxy cannot renew a client's
// token, and waiting out max_age would only hide the error.
func TestClientTokenRefusedAtDeliveryIsDead(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalktest.PathAsyncSend, time.Hour, false))
	admin := s.app.AdminHandler()
	stopListening(t, fake, s)
	id := keptNow(t, s, dingtalktest.PathAsyncSend+"?access_token=the-clients-own-stale-token", notice(1))
	resume(t, fake)
	doc := waitState(t, admin, id, outbox.Dead)
	if reason := fmt.Sprint(doc["reason"]); !strings.Contains(reason, "40014") || !strings.Contains(reason, "client's own token") {
		t.Errorf("dead for %q; want DingTalk's 40014 and the client's own token named", reason)
	}
	if n := len(fake.Requests(dingtalktest.PathAsyncSend)); n != 1 {
		t.Errorf("DingTalk saw the send %d times; want once", n)
	}
	if strings.Contains(fmt.Sprint(doc), "the-clients-own-stale-token") {
		t.Errorf("GET /outbox/<id> shows the client's token: %v", doc)
	}
}

// A signed robot send whose hour ends in the next few seconds is not sent
// when its turn comes: it could reach DingTalk after the hour, where only
// the robot's secret could sign it again. It is dead, and DingTalk sees
// nothing.
func TestSignedSendNotSentInItsLastSeconds(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Hour, false))
	admin := s.app.AdminHandler()
	stopListening(t, fake, s)
	// Signed 59m57s ago: three seconds of its hour are left.
	ts := time.Now().Add(-time.Hour + 3*time.Second).UnixMilli()
	path := fmt.Sprintf("%s?access_token=%s&timestamp=%d&sign=abc", dingtalk.PathRobotSend, dingtalktest.DefaultRobotToken, ts)
	id := keptNow(t, s, path, []byte(`{"msgtype":"text","text":{"content":"alert: late"}}`))
	resume(t, fake)
	doc := waitState(t, admin, id, outbox.Dead)
	if reason := fmt.Sprint(doc["reason"]); !strings.Contains(reason, "signature") {
		t.Errorf("dead for %q; want its signature's hour named", reason)
	}
	if n := len(fake.Requests(dingtalk.PathRobotSend)); n != 0 {
		t.Errorf("DingTalk saw %d robot sends; want none", n)
	}
}

// With merge on, kept alerts no more than the robot's minute allows go one
// by one, as they were sent: merging is for a backlog past the minute.
func TestMergeOnlyPastTheRobotsMinute(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Minute, true))
	stopListening(t, fake, s)
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	var ids []string
	var sent []string
	for i := range 3 {
		msg := fmt.Sprintf(`{"msgtype":"text","text":{"content":"alert %d"}}`, i)
		resp, body := s.do(http.MethodPost, robot, []byte(msg))
		id := deferredID(t, resp, body)
		if id == "" {
			t.Fatalf("alert %d not kept: %d %s", i, resp.StatusCode, body)
		}
		ids, sent = append(ids, id), append(sent, msg)
	}
	resume(t, fake)
	waitDelivered(t, s.app.AdminHandler(), ids, 30*time.Second)
	var got []string
	for _, d := range fake.Deliveries(dingtalk.PathRobotSend) {
		got = append(got, string(d.Body))
	}
	if strings.Join(got, "\n") != strings.Join(sent, "\n") {
		t.Errorf("the robot got %q; want the three alerts one by one, as sent", got)
	}
}

// While DingTalk refuses connections, a send on a route with defer is kept
// after its first attempt went unexecuted, not retried while its client
// waits: the courier delivers it later. A call on a route without defer
// is retried as ever.
func TestDeferredAfterOneUnexecutedAttempt(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalktest.PathAsyncSend, time.Hour, false),
		func(c *config.Config) { c.Retry.MaxAttempts = 3 })
	// The proxy's token first, while DingTalk listens.
	waitFor(t, "the proxy's first token", func() bool { tok, _ := s.app.Tokens().Peek(); return tok != "" })
	stopListening(t, fake, s)
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(1))
	id := deferredID(t, resp, body)
	if id == "" {
		t.Fatalf("not kept: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Dingproxy-Attempts"); got != "1" {
		t.Errorf("kept after %s attempts; want after the first", got)
	}
	resp, body = s.do(http.MethodPost, "/topapi/message/corpconversation/getsendprogress", []byte(`{"agent_id":1,"task_id":1}`))
	if got := resp.Header.Get("X-Dingproxy-Attempts"); got == "1" || got == "" {
		t.Errorf("a call without defer tried %q times while DingTalk refused: %d %s; want it retried", got, resp.StatusCode, body)
	}
	resume(t, fake)
	waitDelivered(t, s.app.AdminHandler(), []string{id}, 30*time.Second)
}

// A kept robot send goes to DingTalk with its query byte for byte as the
// client sent it (escapes, order and all), and a kept send on the api host
// is answered in that host's shape, saying no attempt reached DingTalk
// when none did.
func TestKeptSendsGoAsSentAndAnswerInTheirHostsShape(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Hour, false),
		deferOn(t, dingtalktest.PathRobotBatchSend, time.Hour, false),
		func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	waitFor(t, "the proxy's first token", func() bool { tok, _ := s.app.Tokens().Peek(); return tok != "" })
	stopListening(t, fake, s)
	ts := time.Now().UnixMilli()
	query := fmt.Sprintf("access_token=%s&timestamp=%d&sign=a%%2Bb%%2F%%3D&note=%%7e+x&empty=", dingtalktest.DefaultRobotToken, ts)
	resp, body := s.do(http.MethodPost, dingtalk.PathRobotSend+"?"+query, []byte(`{"msgtype":"text","text":{"content":"alert: as sent"}}`))
	robotID := deferredID(t, resp, body)
	if robotID == "" {
		t.Fatalf("the robot send was not kept: %d %s", resp.StatusCode, body)
	}
	resp, body = s.do(http.MethodPost, dingtalktest.PathRobotBatchSend, []byte(`{"robotCode":"r","userIds":["u1"],"msgKey":"sampleText","msgParam":"{\"content\":\"hi\"}"}`))
	apiID := resp.Header.Get("X-Dingproxy-Deferred")
	if resp.StatusCode != http.StatusOK || apiID == "" || strings.TrimSpace(string(body)) != `{"dingproxy_deferred":"`+apiID+`"}` {
		t.Fatalf("a kept send on the api host was answered %d %v %s; want 200 and {\"dingproxy_deferred\":id}", resp.StatusCode, resp.Header, body)
	}
	if got := resp.Header.Get("X-Dingproxy-Attempts"); got != "1" {
		t.Errorf("X-Dingproxy-Attempts %q on the api host's kept send; want 1 (one refused connection)", got)
	}
	resume(t, fake)
	waitDelivered(t, s.app.AdminHandler(), []string{robotID, apiID}, 30*time.Second)
	got := fake.Requests(dingtalk.PathRobotSend)
	if len(got) != 1 || got[0].RawQuery != query {
		var qs []string
		for _, r := range got {
			qs = append(qs, r.RawQuery)
		}
		t.Errorf("DingTalk got the robot send's query as %q; want %q, once", qs, query)
	}
}
