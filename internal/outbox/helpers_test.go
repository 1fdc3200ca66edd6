package outbox

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The secrets a kept send holds in the tests: none may show in the file,
// the logs or an error.
const (
	testToken  = "robot-access-token-7f3a9c"
	testSecret = "app-secret-for-tests"
	testAppKey = "dingtestappkey"
)

// countingObserver counts what the store drops, by why.
type countingObserver struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *countingObserver) Dropped(why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[why]++
}

func (o *countingObserver) count(why string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[why]
}

// harness is a store's options, with its log and observer captured.
type harness struct {
	t    testing.TB
	opts Options
	logs *observer.ObservedLogs
	obs  *countingObserver
}

func newHarness(t testing.TB, dir string) *harness {
	core, logs := observer.New(zapcore.DebugLevel)
	h := &harness{t: t, logs: logs, obs: &countingObserver{}}
	h.opts = Options{Dir: dir, AppKey: testAppKey, AppSecret: testSecret, Logger: zap.New(core), Observer: h.obs, LockTimeout: 200 * time.Millisecond}
	return h
}

// open opens the store, closing it when the test ends.
func (h *harness) open() *Store {
	h.t.Helper()
	s, err := Open(h.opts)
	if err != nil {
		h.t.Fatalf("Open: %v", err)
	}
	h.t.Cleanup(func() { s.Close() })
	return s
}

// logText is every log line and its fields, for looking into.
func (h *harness) logText() string {
	var b strings.Builder
	for _, e := range h.logs.All() {
		b.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// newStore is a store in a new temporary directory.
func newStore(t testing.TB) (*Store, *harness) {
	h := newHarness(t, t.TempDir())
	return h.open(), h
}

// robotSend is a robot alert holding testToken, numbered i.
func robotSend(queue string, i int) *Send {
	return &Send{
		Queue:  queue,
		Route:  "/robot/send",
		Method: http.MethodPost,
		Path:   "/robot/send",
		Query:  "access_token=" + testToken + "&n=" + fmt.Sprint(i),
		Header: http.Header{"Content-Type": {"application/json"}, "X-Trace": {fmt.Sprint("t", i)}},
		Body:   fmt.Appendf(nil, `{"msgtype":"text","text":{"content":"alert %d %s"}}`, i, strings.Repeat("x", i%50)),
		Due:    time.Now().Add(time.Hour),
	}
}

func put(t testing.TB, s *Store, sd *Send) string {
	t.Helper()
	id, err := s.Put(context.Background(), sd)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return id
}

func get(t testing.TB, s *Store, id string) *Send {
	t.Helper()
	sd, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return sd
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling with a deadline, not synchronisation by sleep
	}
}
