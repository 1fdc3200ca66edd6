package token

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// sharedFetcher is a scripted SharedFetcher: each call takes the next
// answer of its script, which says whether the token was the fleet's.
type sharedFetcher struct {
	mu      sync.Mutex
	starts  []time.Time
	answers []sharedAnswer
}

type sharedAnswer struct {
	tok    string
	shared bool
	err    error
}

func (f *sharedFetcher) Fetch(ctx context.Context) (string, time.Duration, error) {
	tok, ttl, _, err := f.FetchShared(ctx)
	return tok, ttl, err
}

func (f *sharedFetcher) FetchShared(context.Context) (string, time.Duration, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, time.Now())
	if len(f.answers) == 0 {
		return "", 0, false, errors.New("script ended")
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	if a.err != nil {
		return "", 0, a.shared, a.err
	}
	return a.tok, time.Hour, a.shared, nil
}

func (f *sharedFetcher) offsets(t0 time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var d []time.Duration
	for _, s := range f.starts {
		d = append(d, s.Sub(t0))
	}
	return d
}

// tokenNow calls s.Token and fails t unless it returns want without
// waiting (the bubble's clock does not move).
func tokenNow(t *testing.T, s *Source, want string) {
	t.Helper()
	before := time.Now()
	tok, err := s.Token(context.Background())
	if err != nil || tok != want {
		t.Fatalf("Token() = %q, %v, want %q", tok, err, want)
	}
	if d := time.Since(before); d != 0 {
		t.Errorf("Token() for %q waited %v, want at once", want, d)
	}
}

// A token taken from the fleet is no fetch from DingTalk: dropping it
// fetches again at once, however recent, and the interval counts from the
// last fetch from DingTalk only. A token this source fetched from DingTalk
// and dropped at once is replaced only MinInterval after that fetch: a
// loop of rejections does not hammer DingTalk.
func TestSharedTokenStartsNoInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &sharedFetcher{answers: []sharedAnswer{
			{tok: "stale", shared: true},  // at start: the fleet's, revoked since
			{tok: "other", shared: true},  // another proxy's, revoked too
			{tok: "own-1", shared: false}, // fetched from DingTalk by this source
			{tok: "own-2", shared: false},
			{tok: "fleet", shared: true},
			{tok: "own-3", shared: false},
		}}
		s := NewSource(f, Options{MinInterval: time.Hour})
		defer s.Close()

		tokenNow(t, s, "stale")
		s.Invalidate("stale") // 40014
		tokenNow(t, s, "other")
		s.Invalidate("other")
		tokenNow(t, s, "own-1") // no fetch from DingTalk yet: at once

		// own-1 is rejected at once: the next fetch waits out the hour
		// after own-1's, though it turns out to be one from DingTalk too.
		s.Invalidate("own-1")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		if _, err := s.Token(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Token() within MinInterval of a fetch from DingTalk = %v, want it to wait (deadline exceeded)", err)
		}
		cancel()
		if tok, err := s.Token(context.Background()); err != nil || tok != "own-2" {
			t.Fatalf("Token() = %q, %v, want own-2", tok, err)
		}
		if d := time.Since(t0); d != time.Hour {
			t.Errorf("own-2 came %v after own-1, want MinInterval (1h)", d)
		}

		// A shared token taken once own-2's hour is over starts no new
		// one: dropped half an hour later, it is replaced at once.
		s.Invalidate("own-2")
		time.Sleep(time.Hour) // own-2's interval is over
		tokenNow(t, s, "fleet")
		time.Sleep(30 * time.Minute)
		s.Invalidate("fleet")
		tokenNow(t, s, "own-3")

		want := []time.Duration{0, 0, 0, time.Hour, 2 * time.Hour, 2*time.Hour + 30*time.Minute}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
		if st := s.State(); st.Fetches != 6 {
			t.Errorf("State().Fetches = %d, want 6 (every token that came, from the fleet or DingTalk)", st.Fetches)
		}
	})
}

// A failed fetch backs off whether the fetcher is the fleet's or not: the
// fleet's fails only when DingTalk did, or ctx ended.
func TestSharedFetcherFailureBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		boom := errors.New("boom")
		f := &sharedFetcher{answers: []sharedAnswer{
			{err: boom},
			{err: boom, shared: true},
			{tok: "fleet", shared: true},
		}}
		s := NewSource(f, Options{})
		defer s.Close()
		for _, at := range []time.Duration{0, time.Second} {
			sleepUntil(t0.Add(at))
			if _, err := s.Token(context.Background()); !errors.Is(err, boom) {
				t.Fatalf("Token() at %v = %v, want the fetch's error", at, err)
			}
		}
		sleepUntil(t0.Add(3 * time.Second)) // the second backoff: 2 s
		tokenNow(t, s, "fleet")
		want := []time.Duration{0, time.Second, 3 * time.Second}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
	})
}

// Run refreshes a shared token on the same schedule, and a shared token
// dropped while Run waits is replaced by the next caller at once.
func TestRunWithSharedFetcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &sharedFetcher{answers: []sharedAnswer{
			{tok: "stale", shared: true},
			{tok: "fresh", shared: false},
			{tok: "refreshed", shared: true},
		}}
		core, logs := observer.New(zapcore.InfoLevel)
		s := NewSource(f, Options{RefreshBefore: 10 * time.Minute, Logger: zap.New(core)})
		stop := startRun(s)
		defer stop()
		synctest.Wait()
		if tok, _ := s.Peek(); tok != "stale" {
			t.Fatalf("Peek() after Run's first fetch = %q, want stale", tok)
		}
		s.Invalidate("stale")
		tokenNow(t, s, "fresh")
		sleepUntil(t0.Add(50 * time.Minute)) // fresh is due
		if tok, _ := s.Peek(); tok != "refreshed" {
			t.Errorf("Peek() after the refresh = %q, want refreshed", tok)
		}
		want := []time.Duration{0, 0, 50 * time.Minute}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
		var from []string // where each refresh's log line says the token came from
		for _, e := range logs.FilterMessage("token refreshed").All() {
			v, _ := e.ContextMap()["from"].(string)
			from = append(from, v)
		}
		if diff := cmp.Diff([]string{"redis", "", "redis"}, from); diff != "" {
			t.Errorf("where each refresh's log says the token came from (-want +got):\n%s", diff)
		}
	})
}
