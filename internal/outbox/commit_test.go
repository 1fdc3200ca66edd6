package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// TestGroupCommit: Puts that arrive while a commit runs share the next
// one: 1 + n Puts, 2 commits. The first commit is held until the n others
// wait, so the test does not depend on the machine's speed.
func TestGroupCommit(t *testing.T) {
	s, _ := newStore(t)
	release := make(chan struct{})
	var once sync.Once
	s.testHookCommit = func() { once.Do(func() { <-release }) }
	const n = 40
	ids := make(chan string, n+1)
	var wg sync.WaitGroup
	start := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := s.Put(context.Background(), robotSend(fmt.Sprint("q", i%5), i))
			if err != nil {
				t.Error(err)
			}
			ids <- id
		}()
	}
	start(0)
	waitFor(t, "the first commit to start", func() bool {
		s.cmu.Lock()
		defer s.cmu.Unlock()
		return s.leading && len(s.pending) == 0
	})
	for i := 1; i <= n; i++ {
		start(i)
	}
	waitFor(t, "the other Puts to queue", func() bool {
		s.cmu.Lock()
		defer s.cmu.Unlock()
		return len(s.pending) == n
	})
	close(release)
	wg.Wait()
	close(ids)
	if c := s.commits.Load(); c != 2 {
		t.Fatalf("%d Puts took %d commits, want 2", n+1, c)
	}
	for id := range ids {
		get(t, s, id)
	}
}

// TestConcurrentUse: Puts, Updates, Heads, Gets, Deletes and Stats from
// many goroutines (for the race detector); every Put that returned is
// accounted for at the end.
func TestConcurrentUse(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := h.open()
	const writers, each = 8, 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	kept := map[string]State{}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id, err := s.Put(context.Background(), robotSend(fmt.Sprint("robot:", w%3), i))
				if err != nil {
					t.Error(err)
					return
				}
				st := Queued
				switch i % 4 {
				case 1:
					sd, err := s.Get(id)
					if err != nil {
						t.Error(err)
						return
					}
					sd.State = Delivered
					if err := s.Update(sd); err != nil {
						t.Error(err)
					}
					st = Delivered
				case 2:
					if err := s.Delete(id); err != nil {
						t.Error(err)
					}
					st = ""
				}
				mu.Lock()
				kept[id] = st
				mu.Unlock()
				s.Stats()
				if _, err := s.Heads(3); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	s.Close()
	s = h.open()
	n := 0
	for id, st := range kept {
		sd, err := s.Get(id)
		if st == "" {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("deleted %s: %v", id, err)
			}
			continue
		}
		if err != nil || sd.State != st {
			t.Errorf("%s: %v, state %v want %s", id, err, sd, st)
		}
		if st == Queued {
			n++
		}
	}
	if got := s.Stats().Routes["/robot/send"].Queued; got != n {
		t.Errorf("stats count %d queued, want %d", got, n)
	}
}
