package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The outbox's admin write endpoints over HTTP, through the app's admin
// handler: alone (the store on disk) and in a fleet (the shared outbox in
// a real redis-server, every call made through a proxy that does not hold
// the courier's lease).

// adminCall is one admin request's answer; it fails t if the answer holds
// the app secret, the robot token or any token the fake issued.
func adminCall(t *testing.T, fake *dingtalktest.Server, h http.Handler, method, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body := rec.Body.String()
	for _, s := range append(fake.IssuedTokens(), dingtalktest.DefaultAppSecret, dingtalktest.DefaultRobotToken) {
		if s != "" && strings.Contains(body, s) {
			t.Errorf("%s %s answers a secret or token: %s", method, path, body)
		}
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %s", method, path, rec.Code, body)
	}
	return rec.Code, doc
}

// wantCall makes an admin call and fails t unless it answers status.
func wantCall(t *testing.T, fake *dingtalktest.Server, h http.Handler, method, path string, status int) map[string]any {
	t.Helper()
	code, doc := adminCall(t, fake, h, method, path)
	if code != status {
		t.Fatalf("%s %s: %d %v, want %d", method, path, code, doc, status)
	}
	return doc
}

// finished waits until the send id is no longer queued, and says what it
// came to.
func finished(t *testing.T, fake *dingtalktest.Server, h http.Handler, id string, d time.Duration) outbox.State {
	t.Helper()
	var st string
	waitUpTo(t, d, "send "+id+" to finish", func() bool {
		doc := wantCall(t, fake, h, http.MethodGet, "/outbox/"+id, http.StatusOK)
		st, _ = doc["state"].(string)
		return st != string(outbox.Queued)
	})
	return outbox.State(st)
}

// keep posts body to the robot of queue through s while DingTalk refuses
// connections, and returns the id of the kept send ("" if not kept).
func keep(t *testing.T, s *stack, robot int, body []byte) string {
	t.Helper()
	resp, b := s.do(http.MethodPost, robotAt(robot), body)
	return deferredID(t, resp, b)
}

// stopListening starts an outage at fake and drops the keeper's idle
// connections to it, so that its next send meets a refused dial: a pooled
// connection the fake closed could otherwise take the send's body before
// it breaks, and a send that may have been executed is never kept.
func stopListening(t *testing.T, fake *dingtalktest.Server, keeper *stack) {
	t.Helper()
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	keeper.app.CloseIdleConnections()
}

// robotBody is a robot message of about size bytes, numbered as alert(i).
func robotBody(i, size int) []byte {
	return fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"%s alert %d"}}`, strings.Repeat("x", size), i)
}

// deliveredAlerts are the alert numbers delivered to robot, in order.
func deliveredAlerts(fake *dingtalktest.Server, robot int) []int {
	tok := strings.TrimPrefix(robotAt(robot), dingtalk.PathRobotSend+"?access_token=")
	var out []int
	for _, d := range fake.Deliveries(dingtalk.PathRobotSend) {
		if d.Robot == tok {
			out = append(out, alertNumber(d.Body))
		}
	}
	return out
}

// oneAttempt: a kept send gets one attempt per delivery, so that a scripted
// answer is what it comes to.
func oneAttempt(c *config.Config) { c.Retry.MaxAttempts = 1 }

// adminWrites runs the endpoints' cases: sends are kept through keeper,
// every admin call goes to admin. It returns the ids of the sends retried.
func adminWrites(t *testing.T, fake *dingtalktest.Server, keeper *stack, admin http.Handler) []string {
	stopListening(t, fake, keeper)
	a, b, c := keep(t, keeper, 0, alert(0)), keep(t, keeper, 1, alert(1)), keep(t, keeper, 2, alert(2))
	if a == "" || b == "" || c == "" {
		t.Fatalf("sends during the outage not kept: %q %q %q", a, b, c)
	}
	// A queued send can be neither retried (409) nor found once deleted
	// (404, and never delivered).
	doc := wantCall(t, fake, admin, http.MethodPost, "/outbox/"+a+"/retry", http.StatusConflict)
	if !strings.Contains(fmt.Sprint(doc["error"]), "only a dead or unknown send") {
		t.Errorf("retry of a queued send: %v", doc)
	}
	// While the courier tries it (and DingTalk refuses the connection), it
	// is being sent: 409 until that try is recorded.
	var code int
	waitUpTo(t, 30*time.Second, "the queued send deleted", func() bool {
		code, doc = adminCall(t, fake, admin, http.MethodDelete, "/outbox/"+c)
		if code == http.StatusConflict && !strings.Contains(fmt.Sprint(doc["error"]), "being sent") {
			t.Fatalf("DELETE of a queued send: 409 %v", doc)
		}
		return code != http.StatusConflict
	})
	if code != http.StatusOK || doc["id"] != c || doc["deleted"] != true {
		t.Errorf("DELETE of a queued send: %v", doc)
	}
	for _, call := range [][2]string{
		{http.MethodGet, "/outbox/" + c}, {http.MethodDelete, "/outbox/" + c}, {http.MethodPost, "/outbox/" + c + "/retry"},
		{http.MethodGet, "/outbox/0000000000000000000000000Z"}, {http.MethodPost, "/outbox/0000000000000000000000000Z/retry"},
		{http.MethodDelete, "/outbox/not-an-id"},
	} {
		doc := wantCall(t, fake, admin, call[0], call[1], http.StatusNotFound)
		if !strings.Contains(fmt.Sprint(doc["error"]), "no such send") {
			t.Errorf("%s %s: %v", call[0], call[1], doc)
		}
	}

	// DingTalk answers the first delivery with an errcode it will never
	// take (dead), the second with a system error (unknown: it may have
	// executed). The two queues go in either order.
	fake.Script(dingtalk.PathRobotSend, dingtalktest.Errcode(310000, "keywords not in content"), dingtalktest.SystemBusy())
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	sa, sb := finished(t, fake, admin, a, 30*time.Second), finished(t, fake, admin, b, 30*time.Second)
	dead, unknown := a, b
	if sa == outbox.Unknown {
		dead, unknown = b, a
		sa, sb = sb, sa
	}
	if sa != outbox.Dead || sb != outbox.Unknown {
		t.Fatalf("the two sends came to %s and %s, want dead and unknown", sa, sb)
	}
	if n, _ := fake.DeliveryCounts(dingtalk.PathRobotSend); n != 0 {
		t.Fatalf("%d sends executed before any retry", n)
	}
	// Retried by hand, each is delivered, once.
	for _, id := range []string{dead, unknown} {
		doc := wantCall(t, fake, admin, http.MethodPost, "/outbox/"+id+"/retry", http.StatusOK)
		if doc["id"] != id || doc["state"] != string(outbox.Queued) {
			t.Errorf("retry of %s: %v", id, doc)
		}
	}
	for _, id := range []string{dead, unknown} {
		if st := finished(t, fake, admin, id, 30*time.Second); st != outbox.Delivered {
			t.Fatalf("send %s retried came to %s", id, st)
		}
	}
	if n, twice := fake.DeliveryCounts(dingtalk.PathRobotSend); n != 2 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want 2, 0", n, twice)
	}
	for r, want := range [][]int{{0}, {1}, nil} {
		if got := deliveredAlerts(fake, r); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("robot %d was delivered alerts %v, want %v (the deleted send never)", r, got, want)
		}
	}
	// A delivered send cannot be retried.
	wantCall(t, fake, admin, http.MethodPost, "/outbox/"+dead+"/retry", http.StatusConflict)

	// 507: a dead send retried while its queue's share is full.
	stopListening(t, fake, keeper)
	const size = 60 << 10 // a quarter of the 1 MiB outbox holds four
	x := keep(t, keeper, 5, robotBody(50, size))
	if x == "" {
		t.Fatal("a send of 60 KiB not kept")
	}
	fake.Script(dingtalk.PathRobotSend, dingtalktest.Errcode(310000, "keywords not in content"))
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	if st := finished(t, fake, admin, x, 30*time.Second); st != outbox.Dead {
		t.Fatalf("send %s came to %s, want dead", x, st)
	}
	stopListening(t, fake, keeper)
	var fillers []string
	for i := 51; ; i++ {
		id := keep(t, keeper, 5, robotBody(i, size))
		if id == "" {
			break
		}
		if fillers = append(fillers, id); len(fillers) > 8 {
			t.Fatal("the robot's queue took more than twice its share")
		}
	}
	doc = wantCall(t, fake, admin, http.MethodPost, "/outbox/"+x+"/retry", http.StatusInsufficientStorage)
	if !strings.Contains(fmt.Sprint(doc["error"]), "full") {
		t.Errorf("retry into a full queue: %v", doc)
	}
	if st, _ := outboxState(t, admin, x); st != string(outbox.Dead) {
		t.Errorf("a retry refused left the send %s", st)
	}
	// Once a queued send is deleted, the share has room again.
	wantCall(t, fake, admin, http.MethodDelete, "/outbox/"+fillers[0], http.StatusOK)
	wantCall(t, fake, admin, http.MethodPost, "/outbox/"+x+"/retry", http.StatusOK)
	return []string{dead, unknown, x}
}

func TestOutboxAdminWritesAlone(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, 10*time.Minute, false), noBreaker, oneAttempt,
		func(c *config.Config) { c.Outbox.MaxBytes = 1 << 20 })
	adminWrites(t, fake, s, s.app.AdminHandler())
}

// notHolding waits until one of fl holds the courier's lease, and returns
// another.
func notHolding(t *testing.T, fl []*stack) *stack {
	t.Helper()
	var other *stack
	waitUpTo(t, 30*time.Second, "a proxy to hold the courier's lease", func() bool {
		holder := -1
		for i, s := range fl {
			if sharedOf(t, s).Holding() {
				holder = i
			}
		}
		if holder < 0 {
			return false
		}
		other = fl[(holder+1)%len(fl)]
		return true
	})
	return other
}

func TestOutboxAdminWritesFleet(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := outboxFleet(t, 2, fake, srv.URL(), dingtalk.PathRobotSend, oneAttempt, func(c *config.Config) { c.Outbox.MaxBytes = 1 << 20 })
	other := notHolding(t, fl)
	ids := adminWrites(t, fake, other, other.app.AdminHandler())
	if sharedOf(t, other).Holding() {
		t.Error("the proxy the admin calls went to took the lease meanwhile")
	}
	// The sends were the fleet's, in Redis, not kept on a proxy's disk.
	for _, id := range ids {
		if got, err := srv.Do("HEXISTS", "dingproxy:{"+dingtalktest.DefaultAppKey+"}:outbox:rec", id); err != nil || got != "1" {
			t.Errorf("send %s not in Redis: %v %v", id, got, err)
		}
	}
}

// retryInPlace: a dead send retried while sends kept after it in its
// queue wait goes back before them, and is delivered first.
func retryInPlace(t *testing.T, fake *dingtalktest.Server, keeper *stack, admin http.Handler) {
	stopListening(t, fake, keeper)
	d := keep(t, keeper, 7, alert(0))
	if d == "" {
		t.Fatal("a send during the outage not kept")
	}
	fake.Script(dingtalk.PathRobotSend, dingtalktest.Errcode(310000, "keywords not in content"))
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	if st := finished(t, fake, admin, d, 30*time.Second); st != outbox.Dead {
		t.Fatalf("send %s came to %s, want dead", d, st)
	}
	stopListening(t, fake, keeper)
	later := []string{keep(t, keeper, 7, alert(1)), keep(t, keeper, 7, alert(2))}
	if later[0] == "" || later[1] == "" {
		t.Fatalf("sends during the outage not kept: %q", later)
	}
	wantCall(t, fake, admin, http.MethodPost, "/outbox/"+d+"/retry", http.StatusOK)
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	for _, id := range append([]string{d}, later...) {
		if st := finished(t, fake, admin, id, 45*time.Second); st != outbox.Delivered {
			t.Fatalf("send %s came to %s", id, st)
		}
	}
	if got := deliveredAlerts(fake, 7); fmt.Sprint(got) != "[0 1 2]" {
		t.Errorf("the robot was delivered alerts %v, want [0 1 2]: the retried send in its old place", got)
	}
}

func TestOutboxRetryInItsPlaceAlone(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, 10*time.Minute, false), noBreaker, oneAttempt)
	retryInPlace(t, fake, s, s.app.AdminHandler())
}

func TestOutboxRetryInItsPlaceFleet(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := outboxFleet(t, 2, fake, srv.URL(), dingtalk.PathRobotSend, oneAttempt)
	other := notHolding(t, fl)
	retryInPlace(t, fake, other, other.app.AdminHandler())
}
