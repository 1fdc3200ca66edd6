//go:build soak && !race

package app_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
	"github.com/dingproxy/dingproxy/internal/redistest"
)

// TestStaleSharedTokenAtLoad: a proxy in fleet mode starts with a shared
// token in Redis that DingTalk has revoked since, and takes 1,000 calls a
// second at once (2,000 calls, open loop). The first calls meet 40014;
// the proxy refetches at once (taking the token from Redis did not start
// its one-second interval between fetches from DingTalk), so the stale
// token costs the run one refetch and no call more than one refetch's
// time: every call answered 200 in at most two attempts, one token fetch,
// p99 under 50 ms, and the calls that met 40014 under 50 ms too (they
// would wait out the interval, about a second, if reading Redis started
// it).
//
// Without the race detector (make soak runs it so): with it, the proxy,
// the fake and the client in one process do not keep up with 1,000 calls
// a second on two cores, stale token or not. A run whose latencies miss
// the bound (a loaded machine) is made again, twice at most; the counts
// must hold in every run.
func TestStaleSharedTokenAtLoad(t *testing.T) {
	const tries = 3
	var runs []string
	for try := 1; ; try++ {
		r := staleTokenRun(t)
		if t.Failed() {
			return
		}
		runs = append(runs, r.String())
		t.Logf("run %d: %s", try, r)
		if r.p99 < staleBound && r.worstMet < staleBound {
			return
		}
		if try == tries {
			t.Fatalf("in %d runs the p99, or the calls that met 40014, were not under %v:\n%s", tries, staleBound, strings.Join(runs, "\n"))
		}
		t.Logf("not under %v: run again with fresh load", staleBound)
	}
}

// staleBound is the latency the stale token must not push a call past.
const staleBound = 50 * time.Millisecond

type staleRunResult struct {
	elapsed, p50, p99, worst time.Duration
	met                      int           // calls that met 40014 and went again
	worstMet                 time.Duration // the slowest of them
}

func (r staleRunResult) String() string {
	rd := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return fmt.Sprintf("2000 calls at 1000/s in %v: p50 %v, p99 %v, slowest %v; %d met 40014 and went again, the slowest of them %v",
		r.elapsed.Round(time.Millisecond), rd(r.p50), rd(r.p99), rd(r.worst), r.met, rd(r.worstMet))
}

// staleTokenRun is one run, on a fresh Redis and fake; it fails t if a
// count does not hold.
func staleTokenRun(t *testing.T) staleRunResult {
	const calls = 2000
	srv := redistest.Start(t)
	fake := dingtalktest.NewServer(t, dingtalktest.Options{})
	// Another proxy of the app fetched the token and shared it; then
	// DingTalk revoked it (a secret reset, a revocation on its side). That
	// proxy stays idle: it does not meet the 40014s.
	seed := fleetOf(t, 1, fake, srv.URL())[0]
	if resp, body := seed.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != http.StatusOK || errcodeOf(t, body) != 0 {
		t.Fatalf("seed call: HTTP %d %s", resp.StatusCode, body)
	}
	// The process warmed up (connections, pools, heap) at the same rate,
	// on the seed, before the run.
	if l := atRate(seed, 500); l.failed > 0 {
		t.Fatalf("warm-up: %d of 500 calls failed: %s", l.failed, strings.Join(l.firstFailures, "; "))
	}
	fake.ExpireTokens()
	fetchesBefore := fake.TokenFetches()

	s := fleetOf(t, 1, fake, srv.URL())[0]
	waitFor(t, "the new proxy to hold the shared (stale) token", func() bool {
		from, up := readyzFleet(t, s)
		return up && from == "redis"
	})
	if n := fake.TokenFetches(); n != fetchesBefore {
		t.Fatalf("the new proxy fetched a token from DingTalk at start (%d fetches, want %d): the run needs it to take the stale one from Redis", n, fetchesBefore)
	}

	l := atRate(s, calls)
	r := staleRunResult{elapsed: l.elapsed}

	for _, f := range l.firstFailures {
		t.Error(f)
	}
	if l.failed > 0 {
		t.Fatalf("%d of %d calls failed", l.failed, calls)
	}
	for i, m := range l.met {
		if m {
			r.met++
			r.worstMet = max(r.worstMet, l.took[i])
		}
	}
	took := slices.Sorted(slices.Values(l.took))
	r.p50, r.p99, r.worst = took[calls/2], took[calls*99/100], took[calls-1]
	if r.met == 0 {
		t.Error("no call met the stale token's 40014: the run did not test a stale token")
	}
	if n := l.more; n > 0 {
		t.Errorf("%d calls took more than two attempts: the stale token cost them more than one refetch", n)
	}
	if n := fake.TokenFetches() - fetchesBefore; n != 1 {
		t.Errorf("%d token fetches reached DingTalk during the run, want 1 (one refetch for the stale token)", n)
	}
	if from, _ := readyzFleet(t, s); from != "dingtalk" {
		t.Errorf("/readyz says the token came from %q, want dingtalk: this proxy refetched it", from)
	}
	return r
}

// loadRun is what atRate measured.
type loadRun struct {
	elapsed       time.Duration
	took          []time.Duration // each call's, from when it was due
	met           []bool          // the calls answered after two attempts
	failed, more  int             // calls not answered 200 errcode 0; calls of more than two attempts
	firstFailures []string
}

// atRate sends calls POSTs through s at 1,000 a second, open loop: each
// call goes when it is due, whatever the others do, with at most 256 in
// flight (a call that finds them all taken waits, and the wait counts in
// its latency).
func atRate(s *stack, calls int) loadRun {
	const (
		rate   = 1000 // calls a second
		inMost = 256
	)
	tr := &http.Transport{MaxIdleConnsPerHost: inMost, MaxConnsPerHost: inMost}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	l := loadRun{took: make([]time.Duration, calls), met: make([]bool, calls)}
	var (
		failed, more atomic.Int32
		mu           sync.Mutex
	)
	fail := func(format string, args ...any) {
		failed.Add(1)
		mu.Lock()
		if len(l.firstFailures) < 5 {
			l.firstFailures = append(l.firstFailures, fmt.Sprintf(format, args...))
		}
		mu.Unlock()
	}
	slots := make(chan struct{}, inMost)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range calls {
		at := start.Add(time.Duration(i) * time.Second / rate)
		time.Sleep(time.Until(at))
		slots <- struct{}{} // waits only when inMost calls are in flight; the wait counts in the latency
		wg.Go(func() {
			defer func() { <-slots }()
			req, err := http.NewRequest(http.MethodPost, s.proxy.URL+dingtalktest.PathUserGet,
				strings.NewReader(fmt.Sprintf(`{"userid":"u%d"}`, i%50)))
			if err != nil {
				fail("call %d: %v", i, err)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				fail("call %d: %v", i, err)
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			l.took[i] = time.Since(at) // from when it was due: open loop
			if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"errcode":0`) {
				fail("call %d: HTTP %d %.200s (%v)", i, resp.StatusCode, body, err)
				return
			}
			switch n, _ := strconv.Atoi(resp.Header.Get(proxy.HeaderAttempts)); {
			case n == 2:
				l.met[i] = true // met 40014 with the stale token, then went with the new one
			case n > 2:
				more.Add(1)
			}
		})
	}
	wg.Wait()
	l.elapsed = time.Since(start)
	l.failed, l.more = int(failed.Load()), int(more.Load())
	return l
}
