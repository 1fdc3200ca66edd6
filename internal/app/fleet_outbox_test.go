package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/fleet"
	"github.com/dingproxy/dingproxy/internal/outbox"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The fleet's shared outbox, end to end: whole proxies of one app on one
// fake DingTalk, their deferred sends shared through a real redis-server.

// outboxFleet is n proxies in the fleet on url, each deferring path (with
// its own outbox.dir, where it keeps what Redis cannot).
func outboxFleet(t *testing.T, n int, fake *dingtalktest.Server, url, path string, opts ...stackOpt) []*stack {
	t.Helper()
	var out []*stack
	for range n {
		o := append([]stackOpt{shared(url), deferOn(t, path, 10*time.Minute, false), noBreaker}, opts...)
		out = append(out, newStackOn(t, fake, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil, o...))
	}
	return out
}

// waitUpTo polls cond until it holds, or fails t after d.
func waitUpTo(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

// noBreaker keeps the breakers shut: these tests are about the outbox, and
// an outage would open the route on every proxy for a while after it ends.
func noBreaker(c *config.Config) { c.Breaker.MinRequests = 1 << 30 }

// sharedOf is a stack's shared outbox.
func sharedOf(t *testing.T, s *stack) *fleet.Outbox {
	t.Helper()
	x, ok := s.app.Outbox().(*fleet.Outbox)
	if !ok {
		t.Fatalf("the outbox in a fleet is %T, not the fleet's", s.app.Outbox())
	}
	return x
}

func robotAt(n int) string {
	return dingtalk.PathRobotSend + "?access_token=" + dingtalktest.DefaultRobotToken + "-" + strconv.Itoa(n)
}

func alert(i int) []byte {
	return fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d"}}`, i)
}

// alertNumber is the i of alert(i) in a delivered body, or -1.
func alertNumber(body []byte) int {
	s := string(body)
	at := strings.Index(s, `"alert `)
	if at < 0 {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimRight(s[at+7:], `"}`))
	if err != nil {
		return -1
	}
	return n
}

// Four proxies share one outbox: sends kept by any of them are delivered
// once each, in the order they were kept for each robot, by the one proxy
// holding the courier's lease, within each robot's minute (no send into a
// block), and any proxy answers for any send.
func TestFleetOutboxSharedByFour(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{RobotPerMinute: dingtalktest.RobotLimit})
	// One attempt per live send: each takes a turn of its robot's minute,
	// connection refused or not.
	fl := outboxFleet(t, 4, fake, srv.URL(), dingtalk.PathRobotSend, func(c *config.Config) { c.Retry.MaxAttempts = 1 })
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	const robots, n = 6, 36 // six each: the live tries, the courier's and the deliveries within a minute's twenty
	ids := make([]string, n)
	for i := range n {
		s := fl[i%4]
		resp, body := s.do(http.MethodPost, robotAt(i%robots), alert(i))
		if ids[i] = deferredID(t, resp, body); ids[i] == "" {
			t.Fatalf("alert %d through proxy %d not deferred: %d %s", i, i%4, resp.StatusCode, body)
		}
	}
	// Any proxy counts the fleet's: the sends are in Redis, none kept
	// locally.
	for i, s := range fl {
		st := s.app.Outbox().Stats()
		if got := st.Routes[dingtalk.PathRobotSend].Queued; got != n {
			t.Errorf("proxy %d counts %d queued, want %d", i, got, n)
		}
	}
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if distinct, _ := fake.DeliveryCounts(dingtalk.PathRobotSend); distinct == n {
			t.Logf("%d delivered %v after DingTalk came back", n, time.Since(resumed).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			d, _ := fake.DeliveryCounts(dingtalk.PathRobotSend)
			t.Fatalf("%d of %d delivered within 60 s", d, n)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	if distinct, twice := fake.DeliveryCounts(dingtalk.PathRobotSend); distinct != n || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want %d, 0", distinct, twice, n)
	}
	last := map[string]int{}
	for _, d := range fake.Deliveries(dingtalk.PathRobotSend) {
		i := alertNumber(d.Body)
		if i < 0 {
			t.Fatalf("a delivery that is no alert of the test's: %s", d.Body)
		}
		if p, ok := last[d.Robot]; ok && i < p {
			t.Errorf("robot %s: alert %d delivered after alert %d", d.Robot, i, p)
		}
		last[d.Robot] = i
	}
	for r := range robots {
		tok := strings.TrimPrefix(robotAt(r), dingtalk.PathRobotSend+"?access_token=")
		if st := fake.Robot(tok); st.Throttled != 0 || st.Executed != n/robots {
			t.Errorf("robot %d: %d executed, %d throttled; want %d, 0", r, st.Executed, st.Throttled, n/robots)
		}
	}
	// Every send is delivered, as any proxy says; one proxy held the lease.
	for i, id := range ids {
		if st, doc := outboxState(t, fl[(i+1)%4].app.AdminHandler(), id); st != string(outbox.Delivered) {
			t.Errorf("send %s: %s %v", id, st, doc)
		}
	}
	holders := 0
	for _, s := range fl {
		if sharedOf(t, s).Holding() {
			holders++
		}
	}
	if holders != 1 {
		t.Errorf("%d proxies hold the courier's lease, want 1", holders)
	}
	if got, _ := srv.Do("XLEN", "dingproxy:{"+dingtalktest.DefaultAppKey+"}:outbox:stream"); got != "0" {
		t.Errorf("the stream holds %s entries after every send was delivered", got)
	}
}

// aofRedis is a redis-server with its append-only file on, fsync'd at each
// write, that a test can shut down and start again with what it held.
type aofRedis struct {
	t    *testing.T
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func startAOFRedis(t *testing.T) *aofRedis {
	t.Helper()
	bin, ok := redistest.Available()
	if !ok {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not on the PATH")
		}
		t.Skip("redis-server not on the PATH")
	}
	_ = bin
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &aofRedis{t: t, dir: t.TempDir(), port: port}
	r.start()
	t.Cleanup(func() {
		if r.cmd != nil {
			r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

func (r *aofRedis) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

func (r *aofRedis) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), MaxRetries: -1})
}

func (r *aofRedis) start() {
	r.t.Helper()
	bin, _ := redistest.Available()
	var err error
	for range 100 { // the port may linger a moment after a shutdown
		r.cmd = exec.Command(bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
			"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning")
		if err = r.cmd.Start(); err != nil {
			r.t.Fatal(err)
		}
		r.done = make(chan struct{})
		go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(r.cmd, r.done)
		c := r.client()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-r.done:
				deadline = time.Time{}
				continue
			default:
			}
			if err = c.Ping(context.Background()).Err(); err == nil {
				c.Close()
				return
			}
			time.Sleep(10 * time.Millisecond) // polling with a deadline
		}
		c.Close()
		select {
		case <-r.done:
			time.Sleep(50 * time.Millisecond) // exited (the port still bound): again
		default:
			r.t.Fatalf("redis-server not answering: %v", err)
		}
	}
	r.t.Fatalf("redis-server did not start: %v", err)
}

// shutdown stops the server as an operator does (SHUTDOWN), and waits.
func (r *aofRedis) shutdown() {
	c := r.client()
	_ = c.Shutdown(context.Background()).Err() // the connection closes: no answer
	c.Close()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

// Redis shut down mid-run: the sends kept before are in Redis (its
// append-only file); those kept while it is down are kept by the proxy
// that answered, and delivered from there; none is lost and none is
// delivered twice, and no deferred answer is given for a send that is not
// kept: each deferred answer's send is found right after, and delivered
// in the end.
func TestFleetOutboxRedisShutDown(t *testing.T) {
	rd := startAOFRedis(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := outboxFleet(t, 4, fake, rd.url(), dingtalktest.PathAsyncSend)
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	type kept struct {
		id    string
		proxy int
		i     int
	}
	var all []kept
	send := func(i int) {
		p := i % 4
		resp, body := fl[p].do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
		id := deferredID(t, resp, body)
		if id == "" {
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("notice %d: answered 200 without being kept: %s", i, body)
			}
			t.Logf("notice %d: not kept, answered %d", i, resp.StatusCode)
			return
		}
		// Kept: found at once by the proxy that answered.
		if st, doc := outboxState(t, fl[p].app.AdminHandler(), id); st != string(outbox.Queued) {
			t.Fatalf("notice %d (%s) deferred but %s: %v", i, id, st, doc)
		}
		all = append(all, kept{id: id, proxy: p, i: i})
	}
	for i := range 20 {
		send(i)
	}
	if len(all) != 20 {
		t.Fatalf("%d of 20 kept while Redis answered", len(all))
	}
	inRedis := len(all)
	rd.shutdown()
	for i := 20; i < 40; i++ {
		send(i)
	}
	local := all[inRedis:]
	if len(local) < 15 {
		t.Fatalf("only %d of 20 sends kept while Redis was down", len(local))
	}
	// Kept locally: delivered by each proxy's own courier while Redis is
	// still down.
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, k := range local {
		for {
			st, doc := outboxState(t, fl[k.proxy].app.AdminHandler(), k.id)
			if st == string(outbox.Delivered) {
				break
			}
			if st != string(outbox.Queued) || time.Now().After(deadline) {
				t.Fatalf("notice %d kept locally by proxy %d: %s %v", k.i, k.proxy, st, doc)
			}
			time.Sleep(20 * time.Millisecond) // polling with a deadline
		}
	}
	if d, _ := fake.DeliveryCounts(dingtalktest.PathAsyncSend); d > len(all)-inRedis+4 {
		t.Errorf("%d delivered while Redis was down, more than the %d kept locally", d, len(all)-inRedis)
	}
	// Redis back with what it held: the fleet's sends are delivered.
	rd.start()
	waitUpTo(t, 30*time.Second, "the proxies to find Redis again", func() bool {
		for _, s := range fl {
			if !s.app.Fleet().Up() {
				return false
			}
		}
		return true
	})
	// The courier may have marked one send as going when Redis went away:
	// its outcome could not be recorded, so it is unknown, never resent.
	unknown := map[string]bool{}
	for _, k := range all[:inRedis] {
		for {
			st, doc := outboxState(t, fl[(k.proxy+1)%4].app.AdminHandler(), k.id)
			if st == string(outbox.Delivered) {
				break
			}
			if st == string(outbox.Unknown) && len(unknown) == 0 {
				unknown[string(notice(k.i))] = true
				t.Logf("notice %d kept in Redis is unknown (marked as going when Redis went away): %v", k.i, doc)
				break
			}
			if st != string(outbox.Queued) || time.Now().After(deadline.Add(30*time.Second)) {
				t.Fatalf("notice %d kept in Redis: %s %v", k.i, st, doc)
			}
			time.Sleep(20 * time.Millisecond) // polling with a deadline
		}
	}
	distinct, twice := fake.DeliveryCounts(dingtalktest.PathAsyncSend)
	if twice != 0 || distinct < len(all)-len(unknown) {
		t.Errorf("delivered %d distinct, %d twice; %d were deferred, %d of them unknown", distinct, twice, len(all), len(unknown))
	}
	delivered := map[string]bool{}
	for _, d := range fake.Deliveries(dingtalktest.PathAsyncSend) {
		delivered[string(d.Body)] = true
	}
	for _, k := range all {
		if !delivered[string(notice(k.i))] && !unknown[string(notice(k.i))] {
			t.Errorf("notice %d (%s) was deferred and never delivered", k.i, k.id)
		}
	}
}

// Hostile values at the outbox's keys (another type at a key, entries and
// records that are not the fleet's, a huge record, counters that are not
// numbers, a lease without an expiry, a copy of a queued send's entry) are
// counted and dropped: the proxies keep and deliver every send once.
func TestFleetOutboxHostileRedis(t *testing.T) {
	srv := redistest.Start(t)
	key := func(s string) string { return "dingproxy:{" + dingtalktest.DefaultAppKey + "}:outbox:" + s }
	must := func(args ...string) {
		t.Helper()
		if _, err := srv.Do(args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	// Before the proxies start: keys of other types, a lease that never ends.
	must("SET", key("stream"), "junk")
	must("SET", key("rec"), "junk")
	must("HSET", key("queued"), "a", "b")
	must("SET", key("queued"), "junk")
	must("SET", key("bytes"), "junk")
	must("SET", key("delivered"), "junk")
	must("SET", key("lease"), "someone-else") // no expiry
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	fl := outboxFleet(t, 2, fake, srv.URL(), dingtalktest.PathAsyncSend)
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	send := func(i int) {
		resp, body := fl[i%2].do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
		id := deferredID(t, resp, body)
		if id == "" {
			t.Fatalf("notice %d not deferred: %d %s", i, resp.StatusCode, body)
		}
		ids = append(ids, id)
	}
	for i := range 5 {
		send(i)
	}
	// Wait for a holder (the lease without an expiry broken), so that the
	// sends are claimed before the junk below.
	waitUpTo(t, 30*time.Second, "a proxy to take the courier's lease", func() bool {
		return sharedOf(t, fl[0]).Holding() || sharedOf(t, fl[1]).Holding()
	})
	var ids2 []string
	var ids2gen outbox.IDs
	for range 4 {
		ids2 = append(ids2, ids2gen.Next(time.Now()))
	}
	huge := "\x01" + string([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}) + strings.Repeat("z", 1<<20)
	must("HSET", key("rec"), ids2[0], "garbage")
	must("HSET", key("rec"), ids2[1], huge)
	must("XADD", key("stream"), "*", "i", ids2[0])
	must("XADD", key("stream"), "*", "i", ids2[1])
	must("XADD", key("stream"), "*", "i", ids2[2]) // no record
	must("XADD", key("stream"), "*", "i", "not-an-id")
	must("XADD", key("stream"), "*", "x", strings.Repeat("y", 1<<20))
	must("XADD", key("stream"), "*", "i", ids[0]) // a copy of a queued send's entry
	must("HSET", key("queued"), ids2[3], "99999999999 zz zz")
	must("HSET", key("bytes"), "all", "not-a-number")
	must("HSET", key("delivered"), "a", "b")
	for i := 5; i < 10; i++ {
		send(i)
	}
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if d, _ := fake.DeliveryCounts(dingtalktest.PathAsyncSend); d == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			d, _ := fake.DeliveryCounts(dingtalktest.PathAsyncSend)
			t.Fatalf("%d of %d delivered within 60 s", d, len(ids))
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	// A while for a second delivery to show, were there one: the courier
	// has read the copy of the first send's entry by now (it reads new
	// entries every quarter second), and the stream empties once it has
	// dropped every entry that is not a queued send's.
	waitUpTo(t, 30*time.Second, "the stream to empty", func() bool {
		n, _ := srv.Do("XLEN", key("stream"))
		return n == "0"
	})
	if d, twice := fake.DeliveryCounts(dingtalktest.PathAsyncSend); d != len(ids) || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want %d, 0", d, twice, len(ids))
	}
	for _, id := range ids {
		if st, doc := outboxState(t, fl[0].app.AdminHandler(), id); st != string(outbox.Delivered) {
			t.Errorf("send %s: %s %v", id, st, doc)
		}
	}
	for _, id := range ids2[:2] {
		if n, _ := srv.Do("HEXISTS", key("rec"), id); n != "0" {
			t.Errorf("the junk record %s is still there", id)
		}
	}
	counted := 0.0
	for _, s := range fl {
		m := scrape(t, s.app)
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, `dingproxy_fleet_errors_total{op="outbox"} `) {
				v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				counted += v
			}
		}
	}
	if counted < 5 {
		t.Errorf("the fleet counted %v outbox errors for the junk, want at least 5", counted)
	}
	// Planted records: a route that is not UTF-8, and routes no proxy kept
	// a send under (sealed under another secret). /metrics still scrapes,
	// and shows none of them.
	other, err := outbox.NewSealer(dingtalktest.DefaultAppKey, "another app secret")
	if err != nil {
		t.Fatal(err)
	}
	var gen outbox.IDs
	plant := func(route string) (string, []byte) {
		t.Helper()
		id := gen.Next(time.Now())
		v, err := other.Seal(id, &outbox.Send{Queue: "planted", Route: route, Method: http.MethodPost, Path: "/x",
			Kept: time.Now(), Due: time.Now().Add(time.Hour), Updated: time.Now(), State: outbox.Queued})
		if err != nil {
			t.Fatal(err)
		}
		return id, v
	}
	id, v := plant("/ZZZZ")
	v = bytes.Replace(v, []byte("/ZZZZ"), []byte("/\xff\xfe\xfd\xfc"), 1)
	must("HSET", key("rec"), id, string(v))
	for i := range 20 {
		id, v := plant(fmt.Sprintf("/invented/%d", i))
		must("HSET", key("rec"), id, string(v))
	}
	waitUpTo(t, 30*time.Second, "the planted records to be counted", func() bool {
		errs := 0.0
		for _, s := range fl {
			code, m := scrapeStatus(s.app)
			if code != http.StatusOK || !strings.Contains(m, "dingproxy_outbox_messages{") {
				t.Fatalf("/metrics answered %d with the planted records: %.300s", code, m)
			}
			if strings.Contains(m, "/invented/") || strings.Contains(m, "\xff") || strings.Contains(m, "\ufffd") {
				t.Fatalf("a planted route is a label: %s", grepLines(m, "dingproxy_outbox_messages"))
			}
			for _, line := range strings.Split(m, "\n") {
				if strings.HasPrefix(line, `dingproxy_fleet_errors_total{op="outbox"} `) {
					v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
					errs += v
				}
			}
		}
		return errs > counted // a count read the planted records
	})
}

// scrapeStatus is a's /metrics: its status and body.
func scrapeStatus(a interface{ AdminHandler() http.Handler }) (int, string) {
	rec := httptest.NewRecorder()
	a.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Code, rec.Body.String()
}

// A proxy of the app under another app secret (a pod misconfigured, a
// secret rotated in a rolling update) that finds the courier's lease free
// must not take the fleet's sends for junk: it refuses the fleet's outbox
// with one error line naming app.secret, keeps its own deferred sends
// locally and delivers them itself; the fleet's sends stay in Redis, and a
// proxy under the fleet's secret delivers each once.
func TestFleetOutboxOtherSecret(t *testing.T) {
	srv := redistest.Start(t)
	key := func(s string) string { return "dingproxy:{" + dingtalktest.DefaultAppKey + "}:outbox:" + s }
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	a := outboxFleet(t, 1, fake, srv.URL(), dingtalk.PathRobotSend)[0]
	if err := fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	const n = 4
	for i := range n {
		resp, body := a.do(http.MethodPost, robotAt(i), alert(i))
		if deferredID(t, resp, body) == "" {
			t.Fatalf("alert %d not deferred: %d %s", i, resp.StatusCode, body)
		}
	}
	if got, _ := srv.Do("HLEN", key("rec")); got != strconv.Itoa(n) {
		t.Fatalf("%s records in Redis, want %d", got, n)
	}
	a.proxy.Close()
	a.app.Close() // a stops: its lease is given up

	core, logs := observer.New(zap.ErrorLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core(), core))
	b := newStackOn(t, fake, log, nil, shared(srv.URL()), deferOn(t, dingtalk.PathRobotSend, 10*time.Minute, false), noBreaker,
		func(c *config.Config) { c.App.Secret = config.Secret("not-the-fleets-secret") })
	// Its lease is tried at its start, and every second: it refuses, or (as
	// before the canary) takes the lease and drops the sends.
	waitUpTo(t, 15*time.Second, "b to refuse the fleet's outbox, or drop its sends", func() bool {
		left, _ := srv.Do("HLEN", key("rec"))
		return logs.Len() > 0 || left != strconv.Itoa(n)
	})
	if got, _ := srv.Do("HLEN", key("rec")); got != strconv.Itoa(n) {
		t.Fatalf("%s of the fleet's %d records left in Redis by a proxy under another secret", got, n)
	}
	resp, body := b.do(http.MethodPost, robotAt(n), alert(n))
	own := deferredID(t, resp, body)
	if own == "" {
		t.Fatalf("b's alert not deferred: %d %s", resp.StatusCode, body)
	}
	if err := fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	waitUpTo(t, 30*time.Second, "b to deliver its own send", func() bool {
		st, _ := outboxState(t, b.app.AdminHandler(), own)
		return st == string(outbox.Delivered)
	})
	if sharedOf(t, b).Holding() || !sharedOf(t, b).Refused() {
		t.Fatal("b holds the fleet's lease, or does not say it refused the fleet's outbox")
	}
	for _, d := range fake.Deliveries(dingtalk.PathRobotSend) {
		if i := alertNumber(d.Body); i != n {
			t.Fatalf("alert %d of the fleet delivered by b", i)
		}
	}
	if got, _ := srv.Do("HLEN", key("rec")); got != strconv.Itoa(n) {
		t.Fatalf("%s of the fleet's %d records left", got, n)
	}
	if logs.Len() != 1 || !strings.Contains(logs.All()[0].Message, "app.secret") {
		t.Fatalf("b's error lines: %v; want the one refusal naming app.secret", logs.All())
	}
	if !strings.Contains(scrape(t, b.app), `dingproxy_fleet_errors_total{op="outbox"}`) {
		t.Error("the refusal is not counted")
	}

	// A proxy under the fleet's secret delivers a's sends, once each.
	outboxFleet(t, 1, fake, srv.URL(), dingtalk.PathRobotSend)
	waitUpTo(t, 60*time.Second, "the fleet's sends to be delivered", func() bool {
		d, _ := fake.DeliveryCounts(dingtalk.PathRobotSend)
		return d == n+1
	})
	if d, twice := fake.DeliveryCounts(dingtalk.PathRobotSend); d != n+1 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want %d, 0", d, twice, n+1)
	}
}
