package app_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

// deferYAML is the reload file of s with defer on path (or no route with
// defer when path is ""), the outbox in dir.
func deferYAML(s *stack, path, dir string) string {
	extra := "outbox: {dir: " + strconv.Quote(dir) + "}\n"
	if path != "" {
		extra += "routes:\n  - path: " + path + "\n    defer: {max_age: 1m}\n"
	}
	return reloadYAML(s, s.app.Config().Retry.MaxAttempts, extra)
}

// A reload that adds defer while no outbox is open (no route had defer at
// start) cannot open the store live: it says so, naming the route, and
// the route is answered as without defer: a send DingTalk cannot take now
// gets the proxy's error, not a deferred answer, and nothing is kept.
func TestReloadAddingDeferNeedsARestart(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := newStack(t, zap.New(core))
	if s.app.Outbox() != nil {
		t.Fatal("an outbox is open with no route deferring")
	}
	dir := filepath.Join(t.TempDir(), "outbox")
	if err := s.app.Reload(writeFile(t, deferYAML(s, dingtalktest.PathAsyncSend, dir))); err != nil {
		t.Fatalf("reload refused: %v", err)
	}
	warn := logs.FilterMessageSnippet("defer needs a restart").All()
	if len(warn) != 1 || warn[0].Level != zapcore.WarnLevel {
		t.Fatalf("warning lines about defer needing a restart: %v", warn)
	}
	if got := fmt.Sprint(warn[0].ContextMap()["routes"]); got != "["+dingtalktest.PathAsyncSend+"]" {
		t.Errorf("the warning names routes %s, want [%s]", got, dingtalktest.PathAsyncSend)
	}
	if s.app.Config().Routes[0].Defer == nil {
		t.Errorf("the reloaded routes are not in force: %+v", s.app.Config().Routes)
	}

	if err := s.fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(1))
	if id := deferredID(t, resp, body); id != "" {
		t.Fatalf("a send was answered deferred (%s) with no outbox open", id)
	}
	if resp.StatusCode == http.StatusOK && errcodeOf(t, body) == 0 {
		t.Errorf("a send during an outage answered as a success: %d %s", resp.StatusCode, body)
	}
	if s.app.Outbox() != nil {
		t.Error("the reload opened an outbox")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("outbox.dir was created by the reload: %v", err)
	}
	if err := s.fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}

	// A reload without defer says nothing of the outbox.
	if err := s.app.Reload(writeFile(t, deferYAML(s, "", dir))); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessageSnippet("defer needs a restart").Len(); n != 1 {
		t.Errorf("%d warnings about defer after a reload without defer, want still 1", n)
	}
}

// A reload that removes defer from every route keeps the open outbox: it
// delivers the sends it holds, each once, while new sends on the route are
// answered as without defer.
func TestReloadRemovingDeferKeepsDelivering(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	s := newStack(t, zap.New(core), deferOn(t, dingtalktest.PathAsyncSend, time.Minute, false))
	admin := s.app.AdminHandler()
	dir := s.app.Config().Outbox.Dir
	if err := s.fake.StopListening(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 5 {
		resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(i))
		id := deferredID(t, resp, body)
		if id == "" {
			t.Fatalf("send %d during the outage not deferred: %d %s", i, resp.StatusCode, body)
		}
		ids = append(ids, id)
	}

	if err := s.app.Reload(writeFile(t, deferYAML(s, "", dir))); err != nil {
		t.Fatalf("reload refused: %v", err)
	}
	if n := logs.FilterMessageSnippet("the outbox stays open").Len(); n != 1 {
		t.Errorf("%d log lines saying the outbox stays open, want 1", n)
	}
	if n := logs.FilterMessageSnippet("defer needs a restart").Len(); n != 0 {
		t.Errorf("%d warnings that defer needs a restart, with the outbox open", n)
	}
	if n := logs.FilterMessageSnippet("change only with a restart").Len(); n != 0 {
		t.Errorf("the reload changed a restart-only setting: %v", logs.FilterMessageSnippet("change only with a restart").All())
	}
	resp, body := s.do(http.MethodPost, dingtalktest.PathAsyncSend, notice(100))
	if id := deferredID(t, resp, body); id != "" {
		t.Fatalf("a send on a route without defer now was kept as %s", id)
	}

	if err := s.fake.ResumeListening(); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, admin, ids, 45*time.Second)
	if n, twice := s.fake.DeliveryCounts(dingtalktest.PathAsyncSend); n != 5 || twice != 0 {
		t.Errorf("delivered %d distinct, %d twice; want the 5 kept, none twice", n, twice)
	}
}
