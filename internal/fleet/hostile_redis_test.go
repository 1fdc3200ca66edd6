package fleet

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/redistest"
)

// The fleet against a Redis that holds what the fleet did not write there:
// each case states its outcome. None stops the proxy, lifts a limit or
// grows memory without bound.

// A token lock with no expiry (set by hand: no proxy sets one) is broken
// by the first proxy that wants the token, which fetches it for the fleet
// at once; the break is counted. Likewise a lock whose expiry is longer
// than a fetch takes.
func TestTokenLockWithoutExpiry(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name string
		set  []string
	}{
		{"no expiry", []string{"SET", "dp:" + testKey + ":token:lock", "stuck"}},
		{"a day", []string{"SET", "dp:" + testKey + ":token:lock", "stuck", "EX", "86400"}},
		{"another type", []string{"HSET", "dp:" + testKey + ":token:lock", "a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("DEL", "dp:"+testKey+":token"); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Do(tc.set...); err != nil {
				t.Fatal(err)
			}
			var errs errCounts
			var fetches atomic.Int32
			f := newFleet(t, srv.URL(), testSecret, &errs)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tok, _, err := f.TokenFetcher(countingFetcher(&fetches, 2*time.Hour), 10*time.Minute, 10*time.Second).Fetch(ctx)
			if err != nil || tok == "" {
				t.Fatalf("fetch = %q, %v; want a token", tok, err)
			}
			if n := fetches.Load(); n != 1 {
				t.Errorf("%d fetches, want 1", n)
			}
			// Fetched under the lock for the fleet, not alone after waiting.
			if v, _ := srv.Do("GET", "dp:"+testKey+":token"); v == "" {
				t.Error("the token was not shared: the proxy fetched alone, after waiting on the stuck lock")
			}
			if n := errs.get(OpTokenLockStale); n != 1 {
				t.Errorf("token_lock_stale counted %d times, want 1", n)
			}
		})
	}
}

// A lock that another party keeps taking (with a proper expiry, again and
// again) does not starve the proxy: it waits half its fetch's time for a
// token, then fetches its own, and counts it.
func TestTokenLockHeldForever(t *testing.T) {
	srv := redistest.Start(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, _ = srv.Do("SET", "dp:"+testKey+":token:lock", "hog", "PX", "1000")
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()
	var errs errCounts
	var fetches atomic.Int32
	f := newFleet(t, srv.URL(), testSecret, &errs)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, _, err := f.TokenFetcher(countingFetcher(&fetches, 2*time.Hour), 10*time.Minute, time.Second).Fetch(ctx)
	if err != nil || tok == "" {
		t.Fatalf("fetch = %q, %v; want a token fetched alone", tok, err)
	}
	if fetches.Load() != 1 || errs.get(OpTokenLockStale) != 1 {
		t.Errorf("%d fetches, token_lock_stale %d; want 1 and 1", fetches.Load(), errs.get(OpTokenLockStale))
	}
}

// A token key of another type (WRONGTYPE on GET) is fetched anew under the
// lock and replaced by the sealed token: the fleet shares again, rather
// than every proxy fetching alone for good.
func TestTokenKeyOfAnotherType(t *testing.T) {
	srv := redistest.Start(t)
	if _, err := srv.Do("HSET", "dp:"+testKey+":token", "tok", "plain"); err != nil {
		t.Fatal(err)
	}
	var errs errCounts
	var fetches atomic.Int32
	a := newFleet(t, srv.URL(), testSecret, &errs)
	b := newFleet(t, srv.URL(), testSecret, nil)
	inner := countingFetcher(&fetches, 2*time.Hour)
	ta, _, err := a.TokenFetcher(inner, 10*time.Minute, 2*time.Second).Fetch(context.Background())
	if err != nil || ta == "" || ta == "plain" {
		t.Fatalf("fetch = %q, %v; want a fetched token", ta, err)
	}
	if ty, _ := srv.Do("TYPE", "dp:"+testKey+":token"); ty != "string" {
		t.Errorf("the token key is a %s after the fetch, want the sealed token (string)", ty)
	}
	tb, _, err := b.TokenFetcher(inner, 10*time.Minute, 2*time.Second).Fetch(context.Background())
	if err != nil || tb != ta || fetches.Load() != 1 {
		t.Errorf("the other proxy: %q, %v after %d fetches; want the shared %q after 1", tb, err, fetches.Load(), ta)
	}
	if errs.get(OpTokenRead) != 1 {
		t.Errorf("token_read errors %d, want the WRONGTYPE counted once", errs.get(OpTokenRead))
	}
}
