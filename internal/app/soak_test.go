//go:build soak

package app_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
)

var soakFor = flag.Duration("soak", 0, "how long TestFaultSoak runs (default 60s, 5s with -short)")

// soakChaos is every fault the fake can inject but the IP ban, each with
// its own probability; about 60% of calls go through untouched. The ban
// (ip-ban-html, ip-ban-json, and non-json, an HTML page on a 200, which
// DingTalk sends only as its ban page) closes every route for five
// minutes, so the soak ends with it instead.
const soakChaos = "system-busy=0.03,throttle=0.03,too-many=0.02,token-invalid=0.03," +
	"reset-before=0.03,reset-after=0.03,hang=0.01,latency:30ms=0.03," +
	"truncated-json=0.03,errcode-string=0.02,bad-gzip=0.02," +
	"close-mid-body=0.03,endless-chunked=0.01,huge:1048576=0.01,informational:5=0.02"

// banMarker marks the soak's calls made during its final IP ban.
const banMarker = "X-Soak-Ban"

// TestFaultSoak runs concurrent clients through dingproxy for a while
// against a fake DingTalk injecting random faults, while its tokens are
// revoked and its configuration reloaded at random, then under an IP ban.
// Afterwards: no send executed twice, every request answered, no secret in any answer or log
// line, goroutines and heap back to where they were.
func TestFaultSoak(t *testing.T) {
	d := *soakFor
	if d == 0 {
		d = 60 * time.Second
		if testing.Short() {
			d = 5 * time.Second
		}
	}
	faultSoak(t, d, nil)
}

// soakDefer, when a fault soak has it, turns defer on for the send routes
// and is told of every send and its answer.
type soakDefer struct {
	// opts turn defer on.
	opts []stackOpt
	// sent is told of each send whose body is known (not the one too
	// large to buffer), and of its answer.
	sent func(path string, body []byte, resp *http.Response, answer []byte, ban bool)
	// settled runs once the faults are over and the proxy works again,
	// before the IP ban; banned after it.
	settled, banned func(s *stack)
}

// faultSoak is the fault soak for d; with df, defer is on for the send
// routes, and a send during the final IP ban may be answered as kept
// instead of 503.
func faultSoak(t *testing.T, d time.Duration, df *soakDefer) {
	const workers = 12
	opts := []stackOpt{func(c *config.Config) {
		c.Retry.PerTryTimeout, c.Retry.Timeout = 500*time.Millisecond, 3*time.Second
		c.Breaker.OpenTimeout, c.Breaker.Window = time.Second, 5*time.Second
		c.Server.BodyReadTimeout = 5 * time.Second
	}}
	if df != nil {
		opts = append(opts, df.opts...)
	}
	s := newStack(t, zap.NewNop(), opts...)
	chaos, err := dingtalktest.ParseChaos(soakChaos)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: workers}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()

	var secrets atomic.Pointer[[]string]
	refreshSecrets := func() {
		sec := append(s.fake.IssuedTokens(), dingtalktest.DefaultAppSecret, dingtalktest.DefaultRobotToken)
		secrets.Store(&sec)
	}
	refreshSecrets()

	var (
		sent, answered, noAnswer, bodyErrs, leaked atomic.Int64
		kept                                       atomic.Int64 // answered as kept for later
		statusMu                                   sync.Mutex
		statuses                                   = map[int]int{}
		firstErrs, bodyErrMsgs                     []string
	)
	var seq atomic.Int64
	var banPhase atomic.Bool // calls made during the final IP ban carry a marker header
	var banPaths sync.Map    // the paths they were made on
	call := func(rng *rand.Rand) {
		n := seq.Add(1)
		var method, path string
		var body io.Reader
		var sendBody string // a send's body, when known
		var hdr = http.Header{}
		switch x := rng.IntN(100); {
		case x < 30: // a read that uses POST
			method, path, body = http.MethodPost, dingtalktest.PathUserGet, strings.NewReader(fmt.Sprintf(`{"userid":"u%d"}`, n%50))
		case x < 45:
			method, path = http.MethodGet, dingtalktest.PathDeptList
		case x < 70: // a send: never twice
			sendBody = fmt.Sprintf(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"soak %d"}}}`, n)
			method, path, body = http.MethodPost, dingtalktest.PathAsyncSend, strings.NewReader(sendBody)
		case x < 80: // the api host, token in a header
			method, path = http.MethodGet, dingtalktest.PathContactUsers+fmt.Sprint(n%50)
		case x < 90: // a robot webhook with its own token, not idempotent
			sendBody = fmt.Sprintf(`{"msgtype":"text","text":{"content":"robot %d"}}`, n)
			method, path, body = http.MethodPost, dingtalk.PathRobotSend+"?access_token="+dingtalktest.DefaultRobotToken,
				strings.NewReader(sendBody)
		case x < 95: // a send of unknown length: chunked
			method, path = http.MethodPost, dingtalktest.PathAsyncSend
			sendBody = fmt.Sprintf(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"chunked %d"}}}`, n)
			body = io.MultiReader(strings.NewReader(sendBody))
		case df != nil: // with defer on, each send's delivery is looked for in DingTalk's bodies: none too large to keep
			sendBody = fmt.Sprintf(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"soak %d"}}}`, n)
			method, path, body = http.MethodPost, dingtalktest.PathAsyncSend, strings.NewReader(sendBody)
		default: // a send too large to buffer: streamed once
			method, path = http.MethodPost, dingtalktest.PathAsyncSend
			body = strings.NewReader(fmt.Sprintf(`{"agent_id":1,"userid_list":"u1","msg":{"msgtype":"text","text":{"content":"large %d %s"}}}`, n, strings.Repeat("x", 1200<<10)))
		}
		if body != nil {
			hdr.Set("Content-Type", "application/json")
		}
		ban := banPhase.Load()
		if ban {
			hdr.Set(banMarker, "1")
			p, _, _ := strings.Cut(path, "?")
			banPaths.Store(p, true)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, s.proxy.URL+path, body)
		if err != nil {
			t.Error(err)
			return
		}
		req.Header = hdr
		sent.Add(1)
		resp, err := client.Do(req)
		if err != nil {
			noAnswer.Add(1)
			statusMu.Lock()
			if len(firstErrs) < 5 {
				firstErrs = append(firstErrs, fmt.Sprintf("%s %s: %v", method, path, err))
			}
			statusMu.Unlock()
			return
		}
		answered.Add(1)
		// At most 2 MiB: an endless answer is read that far, then dropped.
		var got strings.Builder
		_, err = io.Copy(&got, io.LimitReader(resp.Body, 2<<20))
		resp.Body.Close()
		if err != nil {
			bodyErrs.Add(1)
			statusMu.Lock()
			if len(bodyErrMsgs) < 3 {
				bodyErrMsgs = append(bodyErrMsgs, fmt.Sprintf("%s %s: %d: %v", method, path, resp.StatusCode, err))
			}
			statusMu.Unlock()
		}
		for _, sec := range *secrets.Load() {
			if strings.Contains(got.String(), sec) {
				leaked.Add(1)
			}
		}
		if resp.Header.Get("X-Dingproxy-Deferred") != "" {
			kept.Add(1)
		}
		if df != nil && sendBody != "" {
			p, _, _ := strings.Cut(path, "?")
			df.sent(p, []byte(sendBody), resp, []byte(got.String()), ban)
		}
		statusMu.Lock()
		statuses[resp.StatusCode]++
		statusMu.Unlock()
	}

	// Warm up without faults, then take the baselines.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		call(rng)
	}
	goroutines, heap := settle(t, s, tr)
	s.fake.SetChaos(chaos)

	ctx, stop := context.WithTimeout(context.Background(), d)
	defer stop()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				call(rng)
			}
		}()
	}
	// Revocations and reloads at random, every 100 to 500 ms.
	var revocations, reloads int
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(99, 7))
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(100+rng.IntN(400)) * time.Millisecond):
			}
			if rng.IntN(2) == 0 {
				s.fake.ExpireTokens()
				revocations++
			} else {
				next := *s.app.Config()
				next.Retry.MaxAttempts = 2 + rng.IntN(3)
				next.Retry.MaxInspectBytes = []int{4 << 10, 64 << 10}[rng.IntN(2)]
				next.Retry.MaxBodyBytes = []int64{512 << 10, 1 << 20}[rng.IntN(2)]
				next.Log.Level = []string{"debug", "info"}[rng.IntN(2)]
				if err := next.Validate(); err != nil {
					t.Errorf("reload config: %v", err)
					return
				}
				if err := s.app.Apply(&next); err != nil {
					t.Errorf("reload: %v", err)
				}
				reloads++
			}
			refreshSecrets()
		}
	}()
	wg.Wait()
	s.fake.SetChaos(dingtalktest.Chaos{})
	refreshSecrets()

	dups := s.fake.Duplicates()
	t.Logf("soak %v: %d requests by %d clients, %d revocations, %d reloads; statuses %v; answers cut off while read: %d %v",
		d, sent.Load(), workers, revocations, reloads, statuses, bodyErrs.Load(), bodyErrMsgs)
	if dups != 0 {
		t.Errorf("%d sends executed twice", dups)
	}
	if n := noAnswer.Load(); n != 0 || answered.Load() != sent.Load() {
		t.Errorf("%d of %d requests got no answer: %v", n, sent.Load(), firstErrs)
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("%d answers carried a secret or token", n)
	}
	if sent.Load() < int64(workers) {
		t.Errorf("only %d requests were sent", sent.Load())
	}
	// The proxy works as before: at once, or once the token source's
	// backoff after a failed fetch (a fetch cut by the soak's 500 ms
	// per-try timeout during a VM pause) has passed.
	for deadline := time.Now().Add(35 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, body := s.do(http.MethodGet, dingtalktest.PathDeptList, nil)
		if resp.StatusCode == 200 && errcodeOf(t, body) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after the soak: %d %s", resp.StatusCode, body)
			break
		}
	}
	if df != nil {
		df.settled(s)
	}
	// Last, the one fault left out of the mix: an IP ban. Every route
	// closes for its length; a burst of every kind of call is answered 503
	// at once (or, a send with defer on, kept), and nothing reaches
	// DingTalk.
	s.fake.Script(dingtalktest.PathDeptList, dingtalktest.IPBanHTML())
	if resp, _ := s.do(http.MethodGet, dingtalktest.PathDeptList, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("IP ban: %d, want 503", resp.StatusCode)
	}
	hits, fetches := forwarded(s), s.fake.TokenFetches() // API calls; the token source's own fetches are not calls
	before, keptBefore := statuses[http.StatusServiceUnavailable], kept.Load()
	banPhase.Store(true)
	var banned sync.WaitGroup
	for w := range workers {
		banned.Add(1)
		go func() {
			defer banned.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for range 20 {
				call(rng)
			}
		}()
	}
	banned.Wait()
	if got, k := statuses[http.StatusServiceUnavailable]-before, int(kept.Load()-keptBefore); got+k != 20*workers || df == nil && k != 0 {
		t.Errorf("during the ban %d of %d calls were answered 503, %d kept", got, 20*workers, k)
	}
	// Calls made during the ban are marked: an attempt from before it that
	// the fake reads late (a VM pause) is not one of them.
	marked := 0
	banPaths.Range(func(p, _ any) bool {
		for _, r := range s.fake.Requests(p.(string)) {
			if r.Header.Get(banMarker) != "" {
				marked++
			}
		}
		return true
	})
	if marked != 0 {
		t.Errorf("%d calls reached DingTalk during the ban", marked)
	}
	if n := forwarded(s) - hits; n != 0 {
		t.Logf("%d attempts from before the ban reached the fake late", n)
	}
	t.Logf("during the ban: %d calls answered 503, %d token fetches", 20*workers, s.fake.TokenFetches()-fetches)
	if df != nil && df.banned != nil {
		df.banned(s)
	}

	s.fake.ResetCounters() // the fake's own history of requests is not the proxy's heap
	g, h := settle(t, s, tr)
	t.Logf("goroutines %d -> %d, heap %.1f -> %.1f MiB", goroutines, g, float64(heap)/(1<<20), float64(h)/(1<<20))
	waitFor(t, "goroutines back to their baseline", func() bool {
		g, _ = settle(t, s, tr)
		return g <= goroutines+2
	})
	if h > heap+16<<20 {
		t.Errorf("heap %.1f MiB after the soak, baseline %.1f MiB", float64(h)/(1<<20), float64(heap)/(1<<20))
	}
}

// settle drops idle connections on every side and collects garbage, and
// returns the goroutine count and live heap.
func settle(t *testing.T, s *stack, tr *http.Transport) (int, uint64) {
	t.Helper()
	tr.CloseIdleConnections()
	s.client.CloseIdleConnections()
	s.app.CloseIdleConnections()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapAlloc
}
