package fleet

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
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
		{"no expiry", []string{"SET", "dp:{" + testKey + "}:token:lock", "stuck"}},
		{"a day", []string{"SET", "dp:{" + testKey + "}:token:lock", "stuck", "EX", "86400"}},
		{"another type", []string{"HSET", "dp:{" + testKey + "}:token:lock", "a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("DEL", "dp:{"+testKey+"}:token"); err != nil {
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
			if v, _ := srv.Do("GET", "dp:{"+testKey+"}:token"); v == "" {
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
// token, then takes the lock over, fetches, and counts it.
func TestTokenLockHeldForever(t *testing.T) {
	srv := redistest.Start(t)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, _ = srv.Do("SET", "dp:{"+testKey+"}:token:lock", "hog", "PX", "1000")
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
	if _, err := srv.Do("HSET", "dp:{"+testKey+"}:token", "tok", "plain"); err != nil {
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
	if ty, _ := srv.Do("TYPE", "dp:{"+testKey+"}:token"); ty != "string" {
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

// Pacing state no proxy wrote: numbers that are not finite or out of
// bounds in the API's hash (Lua reads "nan" and "inf" as numbers), log
// entries far ahead, keys of another type, none with an expiry. Each case:
// the values are dropped and counted, and the API is paced for the fleet
// as with a clean state: a burst of 30 at once through two proxies admits
// 18 in all (DingTalk's 20 a second, less the margin), not none (paced
// forever) and not more (pacing off, or each proxy pacing alone); and
// every key the take touched is left with an expiry.
func TestPacingStateOutOfBounds(t *testing.T) {
	srv := redistest.Start(t)
	const api = "/topapi/v2/user/get"
	pfx := "dp:{" + testKey + "}:"
	hash, log, global := pfx+"pace:"+Digest(api), pfx+"pace:"+Digest(api)+":log", pfx+"pace:global:log"
	nowMS := strconv.FormatInt(time.Now().UnixMilli(), 10)
	cases := []struct {
		name string
		cmds [][]string
	}{
		{"blk far ahead", [][]string{{"HSET", hash, "blk", "1e15"}}},
		{"blk nan", [][]string{{"HSET", hash, "blk", "nan"}}},
		{"blk inf", [][]string{{"HSET", hash, "blk", "inf"}}},
		{"last nan", [][]string{{"HSET", hash, "last", "nan"}}},
		{"last far ahead", [][]string{{"HSET", hash, "last", "1e30"}}},
		{"last negative", [][]string{{"HSET", hash, "last", "-5"}}},
		{"ceil negative", [][]string{{"HSET", hash, "ceil", "-5", "from", nowMS}}},
		{"ceil nan", [][]string{{"HSET", hash, "ceil", "nan", "from", nowMS}}},
		{"from nan", [][]string{{"HSET", hash, "ceil", "5", "from", "nan"}}},
		{"from far ahead", [][]string{{"HSET", hash, "ceil", "5", "from", "1e18"}}},
		{"counters garbage", [][]string{{"HSET", hash, "sec", "nan", "n", "inf", "psec", "-1", "pn", "x"}}},
		{"log far ahead", [][]string{{"ZADD", log, "1e18", "junk"}, {"ZADD", log, "+inf", "junk2"}}},
		{"log full of garbage", [][]string{{"ZADD", log, "1", "a", "1e17", "b", "-inf", "c"}}},
		{"global log far ahead", [][]string{{"ZADD", global, "+inf", "junk"}, {"ZADD", global, "1e18", "junk2"}}},
		{"hash of another type", [][]string{{"SET", hash, "garbage"}}},
		{"log of another type", [][]string{{"SET", log, "garbage"}}},
		{"global log of another type", [][]string{{"HSET", global, "a", "b"}}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("FLUSHALL"); err != nil {
				t.Fatal(err)
			}
			for _, c := range tc.cmds {
				if _, err := srv.Do(c...); err != nil {
					t.Fatal(err)
				}
			}
			var errs errCounts
			f := newFleet(t, srv.URL(), testSecret, &errs)
			s := pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}
			pacers := []*Pacer{decorate(f, s).Pacer, decorate(newFleet(t, srv.URL(), testSecret, &errs), s).Pacer}
			admitted := 0
			for j := range 30 {
				err := pacers[j%2].Wait(context.Background(), api, time.Time{}, time.Now().Add(20*time.Millisecond))
				var pe *pacing.PacedError
				switch {
				case err == nil:
					admitted++
				case !errors.As(err, &pe):
					t.Fatalf("Wait: %v", err)
				}
			}
			if admitted != 18 {
				t.Errorf("case %d: a burst of 30 admitted %d, want 18 as with a clean state", i, admitted)
			}
			if n := errs.get(OpPace); n < 1 {
				t.Errorf("the values out of bounds were not counted (pace errors %d)", n)
			}
			if !f.Up() {
				t.Error("Redis marked down")
			}
			for _, k := range []string{hash, log, global} {
				if ttl, _ := srv.Do("PTTL", k); ttl == "-1" {
					t.Errorf("%s has no expiry", k)
				}
			}
		})
	}
}

// The penalty script checks what it reads as the take script does, and
// holds a penalty to the longest DingTalk gives (a robot's 10 minutes),
// whatever the answer's message names: what it records is finite and
// within bounds, and the key keeps an expiry.
func TestPenaltyStateOutOfBounds(t *testing.T) {
	srv := redistest.Start(t)
	const api = "/topapi/v2/user/get"
	hash := "dp:{" + testKey + "}:pace:" + Digest(api)
	throttled := dingtalk.Result{Class: dingtalk.Throttled, Reason: dingtalk.ReasonRateLimited}
	for _, tc := range []struct {
		name string
		set  []string
		r    dingtalk.Result
		bad  bool
	}{
		{"rate nan", []string{"HSET", hash, "rate", "nan"}, throttled, true},
		{"rate negative", []string{"HSET", hash, "rate", "-20"}, throttled, true},
		{"counters inf", []string{"HSET", hash, "sec", "inf", "n", "inf"}, throttled, true},
		{"blk far ahead", []string{"HSET", hash, "blk", "1e15"}, throttled, true},
		{"another type", []string{"SADD", hash, "x"}, throttled, true},
		{"a penalty a year long", nil, dingtalk.Result{Class: dingtalk.Throttled, Reason: dingtalk.ReasonRateLimited,
			PenaltyEnd: time.Now().AddDate(1, 0, 0)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("FLUSHALL"); err != nil {
				t.Fatal(err)
			}
			if tc.set != nil {
				if _, err := srv.Do(tc.set...); err != nil {
					t.Fatal(err)
				}
			}
			var errs errCounts
			p := decorate(newFleet(t, srv.URL(), testSecret, &errs), pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}).Pacer
			p.Answered(api, tc.r)
			if got := errs.get(OpPenalty) > 0; got != tc.bad {
				t.Errorf("penalty errors counted: %v, want %v", got, tc.bad)
			}
			vals, err := srv.Do("HMGET", hash, "blk", "ceil", "from")
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(vals)
			if len(f) != 3 {
				t.Fatalf("HMGET blk ceil from = %q", vals)
			}
			blk, _ := strconv.ParseFloat(f[0], 64)
			ceil, _ := strconv.ParseFloat(f[1], 64)
			if left := time.Until(time.UnixMilli(int64(blk))); left <= 0 || left > maxPenalty {
				t.Errorf("blk ends in %v, want a penalty of at most %v", left, maxPenalty)
			}
			if !(ceil >= 0.2 && ceil <= 20) {
				t.Errorf("ceil = %q, want a rate within [0.2, 20]", f[1])
			}
			if ttl, _ := srv.Do("PTTL", hash); ttl == "-1" {
				t.Error("the hash has no expiry")
			}
		})
	}
}

// A sealed value opens only under the key it was sealed for: a cached
// answer copied to another answer's key is not served there, and one
// copied into the token key is not used as the token (the proxy fetches
// its own). Each is counted.
func TestSealedValuesBoundToTheirKey(t *testing.T) {
	srv := redistest.Start(t)
	var errs errCounts
	f := newFleet(t, srv.URL(), testSecret, &errs)
	s := decorate(f, pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000})
	cache := s.Cache.(*Cache)
	keyA, keyB := [32]byte{1}, [32]byte{2}
	cache.Put(keyA, proxy.Entry{Status: 200, Body: []byte(`{"errcode":0,"secret":"a"}`), Stored: time.Now()}, time.Minute)
	keyOf := func(k [32]byte) string { return "dp:{" + testKey + "}:cache:" + hex.EncodeToString(k[:]) }
	waitFor(t, "the answer in Redis", func() bool {
		v, _ := srv.Do("EXISTS", keyOf(keyA))
		return v == "1"
	})
	// Another proxy (an empty local store) reads it under its own key.
	other := decorate(newFleet(t, srv.URL(), testSecret, &errs), pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}).Cache
	if e, ok := other.Get(context.Background(), keyA, time.Minute); !ok || string(e.Body) != `{"errcode":0,"secret":"a"}` {
		t.Fatalf("the answer under its own key: %v %q", ok, e.Body)
	}
	sealed, err := srv.Do("GET", keyOf(keyA))
	if err != nil || sealed == "" {
		t.Fatal(err)
	}
	if _, err := srv.Do("SET", keyOf(keyB), sealed, "EX", "60"); err != nil {
		t.Fatal(err)
	}
	before := errs.get(OpCache)
	if e, ok := other.Get(context.Background(), keyB, time.Minute); ok {
		t.Errorf("an answer copied to another key was served there: %q", e.Body)
	}
	if errs.get(OpCache) != before+1 {
		t.Errorf("the copied answer was not counted (cache errors %d, were %d)", errs.get(OpCache), before)
	}

	// Into the token key: not used as the token.
	if _, err := srv.Do("SET", "dp:{"+testKey+"}:token", sealed, "EX", "3600"); err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	tok, _, err := f.TokenFetcher(countingFetcher(&fetches, 2*time.Hour), 10*time.Minute, 2*time.Second).Fetch(context.Background())
	if err != nil || fetches.Load() != 1 || strings.Contains(tok, "errcode") {
		t.Errorf("with an answer in the token key: token %q, %v, %d fetches; want one fetched anew", tok, err, fetches.Load())
	}
	if errs.get(OpTokenRead) != 1 {
		t.Errorf("token_read errors %d, want the value that does not open counted", errs.get(OpTokenRead))
	}
	// And the token into an answer's key: no answer.
	stok, _ := srv.Do("GET", "dp:{"+testKey+"}:token")
	if _, err := srv.Do("SET", keyOf(keyB), stok, "EX", "60"); err != nil {
		t.Fatal(err)
	}
	if e, ok := other.Get(context.Background(), keyB, time.Minute); ok {
		t.Errorf("the token copied to an answer's key was served as an answer: %q", e.Body)
	}
}

// A route's failure reports that no proxy made: a report from the future
// (it would count for ever) or with counts past 32 bits is ignored; a key
// of another type, or a hash of more reports than a fleet has proxies, is
// replaced (and counted). In each case the route does not open on two
// failures here, and this proxy's own report is in.
func TestFailureReportsOutOfBounds(t *testing.T) {
	srv := redistest.Start(t)
	const route = "/topapi/v2/user/get"
	key := "dp:{" + testKey + "}:brk:" + Digest(route)
	future := strconv.FormatInt(time.Now().AddDate(1, 0, 0).UnixMilli(), 10)
	nowMS := strconv.FormatInt(time.Now().UnixMilli(), 10)
	many := []string{"HSET", key}
	for i := range 1000 {
		many = append(many, "p"+strconv.Itoa(i), "0 0 0")
	}
	for _, tc := range []struct {
		name     string
		set      []string
		replaced bool
	}{
		{"a report from the future", []string{"HSET", key, "ghost", "1000000 0 " + future}, false},
		{"counts past 32 bits", []string{"HSET", key, "ghost", "99999999999 0 " + nowMS}, false},
		{"another type", []string{"SET", key, "garbage"}, true},
		{"a thousand reports", many, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("FLUSHALL"); err != nil {
				t.Fatal(err)
			}
			if _, err := srv.Do(tc.set...); err != nil {
				t.Fatal(err)
			}
			var errs errCounts
			f := newFleet(t, srv.URL(), testSecret, &errs)
			b := decorate(f, pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}).Breakers
			for range 2 {
				done, err := b.Allow(route)
				if err != nil {
					t.Fatal(err)
				}
				done(breaker.Failure)
			}
			b.flush()
			if heldOpen(b, route) > 0 || b.Check(route) != nil {
				t.Error("the route opened on 2 failures and a report no proxy made")
			}
			if v, _ := srv.Do("HGET", key, f.events.id); v == "" {
				t.Error("this proxy's report is not in")
			}
			if got := errs.get(OpVerdicts) > 0; got != tc.replaced {
				t.Errorf("verdicts errors counted: %v, want %v", got, tc.replaced)
			}
			if ttl, _ := srv.Do("PTTL", key); ttl == "-1" {
				t.Error("the reports have no expiry")
			}
		})
	}
}

// The month's count holding what is not a count (letters, a negative or
// fractional number, another type) is replaced by what this proxy sent,
// and counted; the budget is judged on that, not on the garbage.
func TestMonthCountOutOfBounds(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name string
		set  func(key string) []string
	}{
		{"letters", func(k string) []string { return []string{"SET", k, "lots"} }},
		{"negative", func(k string) []string { return []string{"SET", k, "-1000000"} }},
		{"fractional", func(k string) []string { return []string{"SET", k, "1e18"} }},
		{"too large", func(k string) []string { return []string{"SET", k, "9223372036854775800"} }},
		{"another type", func(k string) []string { return []string{"LPUSH", k, "x"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := srv.Do("FLUSHALL"); err != nil {
				t.Fatal(err)
			}
			var errs errCounts
			f := newFleet(t, srv.URL(), testSecret, &errs)
			q := decorate(f, pacing.Settings{PerAPIQPS: 20, GlobalQPS: 1000}).Quota
			month := q.local.Month()
			key := "dp:{" + testKey + "}:month:" + month
			if _, err := srv.Do(tc.set(key)...); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				q.Sent("/topapi/attendance/list", true)
			}
			q.count.flush()
			if v, _ := srv.Do("GET", key); v != "3" {
				t.Errorf("the month's count = %q after 3 sends, want 3", v)
			}
			if total := q.count.Total(month); total != 3 {
				t.Errorf("the fleet's count as known = %d, want 3", total)
			}
			if errs.get(OpQuota) != 1 {
				t.Errorf("quota errors %d, want the replaced value counted once", errs.get(OpQuota))
			}
			if ttl, _ := srv.Do("PTTL", key); ttl == "-1" {
				t.Error("the count has no expiry")
			}
		})
	}
}
