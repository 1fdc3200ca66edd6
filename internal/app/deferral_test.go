package app_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// deferOn turns defer on for path (max_age maxAge), with the outbox in a
// temporary directory of the test's.
func deferOn(t testing.TB, path string, maxAge time.Duration, merge bool) stackOpt {
	dir := filepath.Join(t.TempDir(), "outbox")
	return func(c *config.Config) {
		c.Outbox.Dir = dir
		for i := range c.Routes {
			if c.Routes[i].Path == path {
				c.Routes[i].Defer = &config.Defer{MaxAge: maxAge, Merge: merge}
				return
			}
		}
		c.Routes = append(c.Routes, config.Route{Path: path, Defer: &config.Defer{MaxAge: maxAge, Merge: merge}})
	}
}

// deferredID is the id a deferred answer carries, checked against its
// header and shape; "" when the answer is not a deferred one.
func deferredID(t *testing.T, resp *http.Response, body []byte) string {
	t.Helper()
	var v struct {
		Errcode  *int   `json:"errcode"`
		Errmsg   string `json:"errmsg"`
		Deferred string `json:"dingproxy_deferred"`
	}
	json.Unmarshal(body, &v)
	h := resp.Header.Get("X-Dingproxy-Deferred")
	if v.Deferred == "" && h == "" {
		return ""
	}
	if resp.StatusCode != http.StatusOK || v.Deferred != h || v.Errcode == nil || *v.Errcode != 0 || v.Errmsg != "ok" {
		t.Fatalf("a deferred answer not in the oapi success shape: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	return h
}

func notice(i int) []byte {
	return fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i, i)
}

// outboxState is what GET /outbox/<id> says of a send.
func outboxState(t *testing.T, admin http.Handler, id string) (state string, doc map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/outbox/"+id, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /outbox/%s: %d %s", id, rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	s, _ := doc["state"].(string)
	return s, doc
}

// waitDelivered polls until every id is delivered, within d.
func waitDelivered(t *testing.T, admin http.Handler, ids []string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, id := range ids {
		for {
			st, doc := outboxState(t, admin, id)
			if st == string(outbox.Delivered) {
				break
			}
			if st != string(outbox.Queued) {
				t.Fatalf("send %s is %s: %v", id, st, doc)
			}
			if time.Now().After(deadline) {
				t.Fatalf("send %s not delivered within %s: %v", id, d, doc)
			}
			time.Sleep(5 * time.Millisecond) // polling with a deadline
		}
	}
}

// An outage that refuses connections: each send is answered at once as
// kept, nothing reaches DingTalk, and once it listens again every kept
// send is delivered exactly once, its answer (the task_id) readable from
// GET /outbox/<id>; /readyz stays ready while they wait; the log and
// /metrics hold no token.
func TestDeferredThroughAnOutage(t *testing.T) {
	s := newStack(t, nil, deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false))
	admin := s.app.AdminHandler()
	if err := s.fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 10 {
		resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
		id := deferredID(t, resp, body)
		if id == "" {
			t.Fatalf("send %d during the outage not deferred: %d %s", i, resp.StatusCode, body)
		}
		ids = append(ids, id)
	}
	if n, _ := s.fake.DeliveryCounts(dingtalktest.PathAsyncSend); n != 0 {
		t.Fatalf("%d sends reached DingTalk during the outage", n)
	}
	rec := httptest.NewRecorder()
	admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/outbox", nil))
	if !strings.Contains(rec.Body.String(), `"queued": 10`) {
		t.Errorf("GET /outbox during the outage: %s", rec.Body)
	}
	// A backlog waiting to drain is no reason to take the pod out of
	// service: the proxy answers, and keeps.
	rec = httptest.NewRecorder()
	admin.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("GET /readyz with 10 sends queued: %d %s", rec.Code, rec.Body)
	}
	if err := s.fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, admin, ids, 45*time.Second)
	if n, twice := s.fake.DeliveryCounts(dingtalktest.PathAsyncSend); n != 10 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want 10, 0", n, twice)
	}
	_, doc := outboxState(t, admin, ids[0])
	answer, _ := doc["answer"].(map[string]any)
	if answer == nil || answer["task_id"] == nil || doc["status"] != float64(200) {
		t.Errorf("GET /outbox/<id> of a delivered work notice has no task_id: %v", doc)
	}
	for _, k := range []string{"query", "header", "body"} {
		if _, ok := doc[k]; ok {
			t.Errorf("GET /outbox/<id> shows the send's %s", k)
		}
	}
	// The courier counts a delivery just after it records it: the count
	// is polled, not read once.
	const delivered = `dingproxy_outbox_sends_total{result="delivered",route="/topapi/message/corpconversation/asyncsend_v2"} 10`
	deadline := time.Now().Add(10 * time.Second)
	for metrics := scrape(t, s.app); !strings.Contains(metrics, delivered); metrics = scrape(t, s.app) {
		if time.Now().After(deadline) {
			t.Fatalf("metrics do not count 10 delivered:\n%s", grepLines(metrics, "dingproxy_outbox"))
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// A send DingTalk executed, or may have executed, is never kept: its own
// answer (or the proxy's error) goes back, and nothing is delivered later.
func TestDeferredNeverAfterExecution(t *testing.T) {
	s := newStack(t, nil, deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false))
	cases := []struct {
		name  string
		fault dingtalktest.Fault
	}{
		{"system busy", dingtalktest.SystemBusy()},
		{"reset after execution", dingtalktest.ResetAfterExec()},
		{"business error", dingtalktest.Errcode(60121, "找不到该用户")},
	}
	for i, c := range cases {
		s.fake.Script(dingtalktest.PathAsyncSend, c.fault)
		resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(100+i))
		if id := deferredID(t, resp, body); id != "" {
			t.Errorf("%s: kept as %s though it may have executed", c.name, id)
		}
	}
	if st := s.app.Outbox().Stats(); st.QueuedBytes != 0 {
		t.Errorf("the outbox holds sends: %+v", st)
	}
}

// Pacing: a burst past the API's rate is answered at once, the sends that
// got no turn in time kept; they are delivered in the order they were
// kept, each once, without a throttle from DingTalk.
func TestDeferredWhenPaced(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fake.SetQPSLimit(10)
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false), func(c *config.Config) {
		c.Pacing.PerAPIQPS = 8
		c.Retry.PerTryTimeout, c.Retry.Timeout = 300*time.Millisecond, 300*time.Millisecond
	})
	admin := s.app.AdminHandler()
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
			if id := deferredID(t, resp, body); id != "" {
				mu.Lock()
				ids = append(ids, id)
				mu.Unlock()
			} else if resp.StatusCode != http.StatusOK {
				t.Errorf("send %d: %d %s", i, resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if len(ids) == 0 {
		t.Fatal("no send of the burst was kept")
	}
	waitDelivered(t, admin, ids, 30*time.Second)
	if n, twice := s.fake.DeliveryCounts(dingtalktest.PathAsyncSend); n != 40 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want 40, 0", n, twice)
	}
	if th := s.fake.Throttled(); th != 0 {
		t.Errorf("DingTalk throttled %d calls", th)
	}
}

// A kept robot message that DingTalk will never take (no keyword of the
// robot's in it, a robot it does not know, a message too long) is dead,
// with DingTalk's answer, sent once; a signed robot send
// whose hour ends while it waits is dead, and not sent at all.
func TestDeferredDead(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{RobotKeywords: []string{"alert"}, RobotMaxBody: dingtalktest.RobotBodyLimit})
	s := newStackOn(t, fake, quietLog(t), nil, deferOn(t, dingtalk.PathRobotSend, time.Minute, false))
	admin := s.app.AdminHandler()
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	robot := dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken
	resp, body := s.do(http.MethodPost, robot, []byte(`{"msgtype":"text","text":{"content":"no keyword here"}}`))
	noKeyword := deferredID(t, resp, body)
	// Signed 59m59.5s ago: half a second of its hour is left.
	ts := time.Now().Add(-time.Hour + 500*time.Millisecond).UnixMilli()
	resp, body = s.do(http.MethodPost, fmt.Sprintf("%s&timestamp=%d&sign=abc", robot, ts), []byte(`{"msgtype":"text","text":{"content":"alert: late"}}`))
	late := deferredID(t, resp, body)
	// Signed over an hour ago: not kept at all, answered as without defer.
	resp, body = s.do(http.MethodPost, fmt.Sprintf("%s&timestamp=%d&sign=abc", robot, time.Now().Add(-2*time.Hour).UnixMilli()), []byte(`{"msgtype":"text","text":{"content":"alert: stale"}}`))
	if id := deferredID(t, resp, body); id != "" || resp.StatusCode == http.StatusOK {
		t.Errorf("a send signed over an hour ago was answered %d %s", resp.StatusCode, body)
	}
	// A robot DingTalk does not know, and a message over the robot's
	// body limit (within retry.max_body_bytes, so it can be kept).
	resp, body = s.do(http.MethodPost, dingtalk.PathRobotSend+"?access_token=no-such-robot", []byte(`{"msgtype":"text","text":{"content":"alert: nobody"}}`))
	unknownRobot := deferredID(t, resp, body)
	long := fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert: %s"}}`, strings.Repeat("x", dingtalk.RobotMaxBody))
	resp, body = s.do(http.MethodPost, robot, long)
	tooLong := deferredID(t, resp, body)
	if noKeyword == "" || late == "" || unknownRobot == "" || tooLong == "" {
		t.Fatalf("robot sends during the outage not kept: %q %q %q %q", noKeyword, late, unknownRobot, tooLong)
	}
	waitFor(t, "the signed send's hour to end", func() bool {
		st, _ := outboxState(t, admin, late)
		return st == string(outbox.Dead)
	})
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(45 * time.Second)
	for _, c := range []struct{ name, id, code string }{
		{"the send without a keyword", noKeyword, "310000"},
		{"the send to a robot DingTalk does not know", unknownRobot, "300005"},
		{"the send over the robot's body limit", tooLong, "460101"},
	} {
		for {
			st, doc := outboxState(t, admin, c.id)
			if st == string(outbox.Dead) {
				if !strings.Contains(fmt.Sprint(doc["reason"]), c.code) || doc["answer"] == nil {
					t.Errorf("%s: dead without DingTalk's answer %s: %v", c.name, c.code, doc)
				}
				break
			}
			if st != string(outbox.Queued) || time.Now().After(deadline) {
				t.Fatalf("%s is %s: %v", c.name, st, doc)
			}
			time.Sleep(5 * time.Millisecond) // polling with a deadline
		}
	}
	if ex := fake.Robot(dingtalktest.DefaultRobotToken).Executed; ex != 0 {
		t.Errorf("the robot executed %d sends", ex)
	}
	if n := len(fake.Requests(dingtalk.PathRobotSend)); n != 3 {
		t.Errorf("DingTalk saw %d robot sends; want 3, each once (the signed one past its hour is never sent)", n)
	}
}

// An outbox.dir that cannot be written stops the start, naming the key.
func TestOutboxDirNotWritable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Outbox.Dir = filepath.Join(file, "outbox") // under a file: cannot be made
	cfg.Routes = append(cfg.Routes, config.Route{Path: dingtalk.PathRobotSend, Defer: &config.Defer{MaxAge: time.Minute}})
	_, err := app.New(&cfg, zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)))
	var ce *app.ConfigError
	if !errors.As(err, &ce) || ce.Key != "outbox.dir" {
		t.Fatalf("New with an unwritable outbox.dir: %v; want a ConfigError naming outbox.dir", err)
	}
	// No route defers: no outbox, and the directory is not touched.
	cfg.Routes = cfg.Routes[:1]
	a, err := app.New(&cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if a.Outbox() != nil {
		t.Error("an outbox was opened with no route deferring")
	}
}

// scrape is the app's /metrics text.
func scrape(t *testing.T, a *app.App) string {
	t.Helper()
	rec := httptest.NewRecorder()
	a.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// grepLines is the lines of text holding s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func quietLog(t testing.TB) *zap.Logger { return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)) }

// A route that defers has its outbox series from the start, at 0, so that
// an alert on dead sends or the oldest age has a series to read.
func TestOutboxSeriesFromTheStart(t *testing.T) {
	s := newStack(t, nil, deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false))
	m := scrape(t, s.app)
	for _, want := range []string{
		`dingproxy_outbox_messages{route="` + dingtalktest.PathAsyncSend + `",state="dead"} 0`,
		`dingproxy_outbox_messages{route="` + dingtalktest.PathAsyncSend + `",state="queued"} 0`,
		`dingproxy_outbox_oldest_seconds{route="` + dingtalktest.PathAsyncSend + `"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s; it has:\n%s", want, grepLines(m, "dingproxy_outbox_"))
		}
	}
}

// A send to a route whose breaker is open is kept, not answered with the
// fallback; once the route may be probed again the courier's delivery is
// the probe, and the send is delivered once.
func TestDeferredWhileTheBreakerIsOpen(t *testing.T) {
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	s := newStackOn(t, fake, quietLog(t), nil, breakerSettings(3, time.Second),
		deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false),
		func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	fake.SetChaos(dingtalktest.Chaos{Faults: []dingtalktest.Weighted{{Fault: dingtalktest.Status(http.StatusServiceUnavailable), P: 1}}})
	for i := range 3 {
		// A 503 on a send may have executed: it goes back, never kept.
		resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
		if deferredID(t, resp, body) != "" {
			t.Fatalf("send %d answered 503 by DingTalk was kept", i)
		}
	}
	waitFor(t, "the route to open", func() bool { return s.app.Check(dingtalktest.PathAsyncSend) != nil })
	fake.SetChaos(dingtalktest.Chaos{})
	hits := fake.Hits(dingtalktest.PathAsyncSend)
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(99))
	id := deferredID(t, resp, body)
	if id == "" || resp.Header.Get(proxy.HeaderFallback) != "" {
		t.Fatalf("a send while the route is open: %d %q %s, want it kept", resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), body)
	}
	if fake.Hits(dingtalktest.PathAsyncSend) != hits {
		t.Fatal("a send while the route is open reached DingTalk")
	}
	waitDelivered(t, s.app.AdminHandler(), []string{id}, 30*time.Second)
	delivered := 0
	for _, d := range fake.Deliveries(dingtalktest.PathAsyncSend) {
		if string(d.Body) == string(notice(99)) {
			delivered++
		}
	}
	if delivered != 1 {
		t.Errorf("the kept send was delivered %d times, want once", delivered)
	}
}
