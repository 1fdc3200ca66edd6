package fleet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/pacing"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/quota"
	"github.com/dingproxy/dingproxy/internal/redistest"
	"github.com/dingproxy/dingproxy/internal/token"
)

// tokenProxy is one proxy's token, as the app builds it in fleet mode:
// DingTalk's fetcher decorated by the fleet, and the local source over
// that, kept fresh by Run.
type tokenProxy struct {
	f   *Fleet
	src *token.Source
}

// joinedWithToken is joined with DingTalk's token fetcher among the
// proxy's parts (the fake's POST /v1.0/oauth2/accessToken), in the same
// order: decorated, then started; then the token source over the fleet's
// fetcher runs, with minInterval between fetches from DingTalk.
func joinedWithToken(t *testing.T, url string, fake *dingtalktest.Server, errs *errCounts, minInterval time.Duration) tokenProxy {
	t.Helper()
	const fetchTimeout = 5 * time.Second
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	f := unstartedFleet(t, url, testSecret, errs)
	s := pacing.Settings{PerAPIQPS: 1e5, GlobalQPS: 1e6}
	sh := f.Decorate(Local{
		Pacer: pacing.New(s), Pacing: s,
		Breakers: breaker.NewSet(breaker.Settings{FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second,
			OpenTimeout: 5 * time.Second, HalfOpenRequests: 1}, nil, nil),
		Quota:         quota.New(quota.Settings{}, nil),
		Cache:         proxy.NewLRU(1 << 20),
		Fetcher:       token.NewOAuth2Fetcher(tr, fake.URL(), dingtalktest.DefaultAppKey, dingtalktest.DefaultAppSecret),
		RefreshBefore: 10 * time.Minute, FetchTimeout: fetchTimeout,
	})
	f.Start()
	src := token.NewSource(sh.Fetcher, token.Options{RefreshBefore: 10 * time.Minute, FetchTimeout: fetchTimeout, MinInterval: minInterval})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		src.Close()
	})
	return tokenProxy{f: f, src: src}
}

// call is one call of the proxy's to DingTalk with its token, as the
// request path makes it: a token DingTalk rejects is dropped and the call
// goes once more with a fresh one. met says whether the first try met a
// rejection.
func (p tokenProxy) call(ctx context.Context, client *http.Client, fake *dingtalktest.Server) (met bool, err error) {
	for try := 0; try < 2; try++ {
		tok, err := p.src.Token(ctx)
		if err != nil {
			return met, fmt.Errorf("no token: %w", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fake.URL()+dingtalktest.PathDeptList+"?access_token="+tok, nil)
		if err != nil {
			return met, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return met, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return met, err
		}
		switch r := dingtalk.Classify(resp.StatusCode, resp.Header.Get("Content-Type"), body); r.Class {
		case dingtalk.Success:
			return met, nil
		case dingtalk.TokenInvalid:
			met = true
			p.src.Invalidate(tok)
		default:
			return met, fmt.Errorf("HTTP %d, %s", resp.StatusCode, r.Reason)
		}
	}
	return met, fmt.Errorf("the token was rejected twice")
}

// A shared token DingTalk revoked (a secret reset, a revocation on its
// side) is in Redis when three proxies start: they all take it, and their
// first calls meet 40014. One proxy of the fleet refetches, at once, and
// the others take its token from Redis: one token fetch reaches DingTalk
// for the fleet, and every proxy ends with the new token. No proxy waits
// out MinInterval: it is an hour here, and every call has ten seconds.
func TestTokenStaleInRedisOneRefetch(t *testing.T) {
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	// Another proxy fetched the token and shared it; DingTalk revoked it.
	seedTr := &http.Transport{}
	defer seedTr.CloseIdleConnections()
	seed := newFleet(t, srv.URL(), testSecret, nil)
	stale, _, err := seed.TokenFetcher(token.NewOAuth2Fetcher(seedTr, fake.URL(), dingtalktest.DefaultAppKey, dingtalktest.DefaultAppSecret),
		10*time.Minute, 5*time.Second).Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fake.ExpireTokens()
	before := fake.TokenFetches()

	var errs errCounts
	var proxies []tokenProxy
	for range 3 {
		proxies = append(proxies, joinedWithToken(t, srv.URL(), fake, &errs, time.Hour))
	}
	for i, p := range proxies {
		waitFor(t, fmt.Sprintf("proxy %d to take the shared token", i), func() bool {
			tok, _ := p.src.Peek()
			return tok == stale
		})
	}
	if n := fake.TokenFetches() - before; n != 0 {
		t.Fatalf("%d token fetches at start, want none: the proxies take the shared one", n)
	}

	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	const each = 8 // calls at once per proxy
	var met [3]atomic.Int32
	var wg sync.WaitGroup
	for i, p := range proxies {
		for range each {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				m, err := p.call(ctx, client, fake)
				if err != nil {
					t.Errorf("proxy %d: %v", i, err)
				}
				if m {
					met[i].Add(1)
				}
			})
		}
	}
	wg.Wait()

	for i := range proxies {
		if met[i].Load() == 0 {
			t.Errorf("proxy %d: no call met 40014 with the stale token", i)
		}
	}
	if n := fake.TokenFetches() - before; n != 1 {
		t.Errorf("%d token fetches reached DingTalk for the fleet of 3, want 1", n)
	}
	fresh, _ := proxies[0].src.Peek()
	fromRedis := 0
	for i, p := range proxies {
		tok, _ := p.src.Peek()
		if tok == "" || tok == stale || tok != fresh {
			t.Errorf("proxy %d holds a different token from proxy 0's, or the stale one", i)
		}
		// The token at start and the new one: two tokens came, one
		// from DingTalk at most. A wait for MinInterval would have
		// failed the calls (an hour against their ten seconds).
		if st := p.src.State(); st.Fetches != 2 || st.LastError != "" {
			t.Errorf("proxy %d: %d tokens came (last error %q), want 2: the shared one and the new one", i, st.Fetches, st.LastError)
		}
		if p.f.TokenFromRedis() {
			fromRedis++
		}
	}
	if fromRedis != 2 {
		t.Errorf("%d proxies took the new token from Redis, want 2 (the third fetched it)", fromRedis)
	}
	if n := errs.get(OpTokenLockStale); n != 0 {
		t.Errorf("token_lock_stale counted %d times, want 0: nobody gave up on the fetching proxy", n)
	}
}

// The fetching proxy dies holding the lock (an expiry a fetch could
// take): of three proxies waiting for its token, one takes the lock over
// once half a fetch's time has passed with no token, fetches and shares;
// the other two take its token. One fetch in all, before the dead lock
// expires (the takeover is counted; a fetch at the lock's expiry is not).
func TestTokenLockHolderDiesOneTakesOver(t *testing.T) {
	srv := redistest.Start(t)
	const fetchTimeout = time.Second
	var errs errCounts
	var fetches atomic.Int32
	inner := countingFetcher(&fetches, 2*time.Hour)
	var fleets []*Fleet
	for range 3 {
		fleets = append(fleets, newFleet(t, srv.URL(), testSecret, &errs))
	}
	if _, err := srv.Do("SET", fleets[0].key("token", "lock"), "dead-proxy", "PX", fmt.Sprint(lockTTL(fetchTimeout).Milliseconds())); err != nil {
		t.Fatal(err)
	}
	toks := make([]string, 3)
	shared := make([]bool, 3)
	var wg sync.WaitGroup
	for i, f := range fleets {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fe := f.TokenFetcher(inner, 10*time.Minute, fetchTimeout).(token.SharedFetcher)
			var err error
			toks[i], _, shared[i], err = fe.FetchShared(ctx)
			if err != nil {
				t.Errorf("proxy %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1: one proxy took over", n)
	}
	nShared := 0
	for i, tok := range toks {
		if tok == "" || tok != toks[0] {
			t.Errorf("proxy %d: token %q, want one token for all (%q)", i, tok, toks[0])
		}
		if shared[i] {
			nShared++
		}
	}
	if nShared != 2 {
		t.Errorf("%d proxies say their token came from Redis, want 2", nShared)
	}
	if n := errs.get(OpTokenLockStale); n != 1 {
		t.Errorf("token_lock_stale counted %d times, want 1: one takeover, before the lock expired", n)
	}
	if v, err := srv.Do("GET", fleets[0].key("token")); err != nil || v == "" {
		t.Errorf("the token was not shared after the takeover (%q, %v)", v, err)
	}
}

// A proxy that fetched a token stores it only while the key still holds
// what it held when the lock was taken: a newer token another proxy stored
// meanwhile (its lock taken over, say) is not overwritten, and a stale
// value dropped meanwhile is replaced.
func TestTokenStoreComparesAndSets(t *testing.T) {
	srv := redistest.Start(t)
	f := newFleet(t, srv.URL(), testSecret, nil)
	ctx := context.Background()
	tokKey, lockKey := f.key("token"), f.key("token", "lock")
	fixed := func(tok string) token.Fetcher {
		return token.FetcherFunc(func(context.Context) (string, time.Duration, error) { return tok, time.Hour, nil })
	}
	now := time.Now()
	newer := f.sealer.seal(f.tokenAD(), "newer", now, now.Add(time.Hour))
	staleV := f.sealer.seal(f.tokenAD(), "stale", now, now.Add(time.Hour))

	// Held stale when the lock was taken; another proxy stored newer since.
	if _, err := srv.Do("SET", tokKey, newer); err != nil {
		t.Fatal(err)
	}
	tok, _, shared, err := f.fetchShared(ctx, fixed("mine"), tokKey, lockKey, "me", staleV)
	if err != nil || tok != "mine" || shared {
		t.Fatalf("fetchShared = %q, %v, %v; want its own token, fetched", tok, shared, err)
	}
	if v, _ := srv.Do("GET", tokKey); v != newer {
		t.Error("the newer token another proxy stored was overwritten")
	}

	// Held stale when the lock was taken; still does, or was dropped since.
	for _, held := range []string{staleV, ""} {
		if held == "" {
			if _, err := srv.Do("DEL", tokKey); err != nil {
				t.Fatal(err)
			}
		} else if _, err := srv.Do("SET", tokKey, held); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := f.fetchShared(ctx, fixed("mine"), tokKey, lockKey, "me", staleV); err != nil {
			t.Fatal(err)
		}
		v, _ := srv.Do("GET", tokKey)
		if got, _, _, err := f.sealer.open(f.tokenAD(), v); err != nil || got != "mine" {
			t.Errorf("key holding %.8q: after the fetch it holds %q (%v), want the fetched token", held, got, err)
		}
	}
}
