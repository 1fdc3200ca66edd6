package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// DefaultFaults is the demo's fault mix: 25 % of calls, of which 20 % fail.
// Throttling is not drawn at random: the fake enforces DingTalk's real limit
// of QPSLimit calls per second per API, with its 1 s penalty.
const DefaultFaults = "system-busy=0.08,status:503=0.04,reset-before=0.04,reset-after=0.04,latency:30ms=0.05"

// QPSLimit is the fake's per-API limit in the demo: DingTalk's standard 20.
const QPSLimit = 20

// Options shape a demo run.
type Options struct {
	Calls  int     // calls per client; default 240
	Rate   float64 // calls per second; default 40 (about 9 per API, under DingTalk's 20)
	Faults string  // dingtalktest.ParseChaos spec; default DefaultFaults
	Seed   int64   // fault RNG seed; default 1
	// Modes to run; default all three.
	Modes []Mode
}

// Mode is one way of calling DingTalk.
type Mode string

// The three clients.
const (
	Direct   Mode = "direct"
	SDKRetry Mode = "direct + SDK retry"
	Proxy    Mode = "dingproxy"
)

// Result is one client's figures.
type Result struct {
	Mode             Mode
	Reads, ReadsOK   int
	Sends, SendsOK   int
	DuplicateSends   int
	UpstreamAttempts int // calls the fake received, token calls excluded
	Throttled        int // of those, rejected by the fake's per-API limit
	P50, P99         time.Duration
}

// ReadSuccess is the share of reads that got a successful answer.
func (r Result) ReadSuccess() float64 { return ratio(r.ReadsOK, r.Reads) }

// SendSuccess is the share of sends that got a successful answer.
func (r Result) SendSuccess() float64 { return ratio(r.SendsOK, r.Sends) }

// AttemptsPerCall is how many upstream attempts each client call cost.
func (r Result) AttemptsPerCall() float64 { return ratio(r.UpstreamAttempts, r.Reads+r.Sends) }

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (o *Options) defaults() {
	if o.Calls <= 0 {
		o.Calls = 240
	}
	if o.Rate <= 0 {
		o.Rate = 40
	}
	if o.Faults == "" {
		o.Faults = DefaultFaults
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if len(o.Modes) == 0 {
		o.Modes = []Mode{Direct, SDKRetry, Proxy}
	}
}

// Run runs the demo: for each mode a fresh fake with the same faults and the
// same workload. It stops early when ctx ends.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	opts.defaults()
	chaos, err := dingtalktest.ParseChaos(opts.Faults)
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, m := range opts.Modes {
		r, err := runMode(ctx, m, chaos, opts)
		if err != nil {
			return out, fmt.Errorf("demo: %s: %w", m, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runMode(ctx context.Context, m Mode, chaos dingtalktest.Chaos, opts Options) (Result, error) {
	fake := dingtalktest.New(dingtalktest.Options{Seed: opts.Seed})
	if err := fake.Start("127.0.0.1:0"); err != nil {
		return Result{}, err
	}
	defer fake.Close()
	fake.SetChaos(chaos)
	fake.SetQPSLimit(QPSLimit)

	tr := &http.Transport{MaxIdleConnsPerHost: 100, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 40 * time.Second}
	c := &client{hc: hc, base: fake.URL()}
	switch m {
	case Proxy:
		stop, url, err := StartProxy(fake.URL())
		if err != nil {
			return Result{}, err
		}
		defer stop()
		c.base = url
	default:
		tok, err := FetchToken(ctx, hc, fake.URL())
		if err != nil {
			return Result{}, err
		}
		c.token = tok
		c.sdkRetry = m == SDKRetry
	}
	res := Result{Mode: m}
	lat := make([]time.Duration, 0, opts.Calls)
	var mu sync.Mutex
	var wg sync.WaitGroup
	rng := rand.New(rand.NewPCG(uint64(opts.Seed), 7))
	// Calls start on an absolute schedule, so the rate holds even when this
	// goroutine is scheduled late (a Ticker would drop the missed ticks).
	interval := time.Duration(float64(time.Second) / opts.Rate)
	begin := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	sem := make(chan struct{}, 128) // bounded in-flight calls
	for i := 0; i < opts.Calls; i++ {
		timer.Reset(time.Until(begin.Add(time.Duration(i) * interval)))
		select {
		case <-ctx.Done():
			wg.Wait()
			return res, ctx.Err()
		case <-timer.C:
		}
		send := rng.Float64() < 0.3
		kind := rng.IntN(3)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			ok := c.call(ctx, i, send, kind)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, d)
			if send {
				res.Sends++
				if ok {
					res.SendsOK++
				}
			} else {
				res.Reads++
				if ok {
					res.ReadsOK++
				}
			}
		}()
	}
	wg.Wait()
	res.DuplicateSends = fake.Duplicates()
	res.Throttled = fake.Throttled()
	res.UpstreamAttempts = fake.TotalHits() - fake.Hits(dingtalk.PathGetToken) - fake.Hits(dingtalk.PathOAuth2Token)
	slices.Sort(lat)
	res.P50, res.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return res, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

// StartProxy runs dingproxy on built-in defaults, pointed at the fake with
// the fake's credentials, on a free loopback port.
func StartProxy(fakeURL string, tweaks ...func(*config.Config)) (stop func(), url string, err error) {
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = fakeURL, fakeURL
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	for _, t := range tweaks {
		t(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, "", err
	}
	a, err := app.New(&cfg, zap.NewNop())
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	a.Start()
	srv := a.Server(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(a.Listener(ln))
	}()
	return func() {
		srv.Close()
		<-done
		a.Close()
	}, "http://" + ln.Addr().String(), nil
}

// FetchToken gets an app token once from the fake, as a simple SDK setup
// does at start.
func FetchToken(ctx context.Context, hc *http.Client, base string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/gettoken?appkey="+dingtalktest.DefaultAppKey+"&appsecret="+dingtalktest.DefaultAppSecret, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.AccessToken == "" {
		return "", errors.New("fetching the demo token failed")
	}
	return v.AccessToken, nil
}

// client calls DingTalk: straight (with its own token) or through dingproxy.
type client struct {
	hc       *http.Client
	base     string
	token    string // set when calling DingTalk directly
	sdkRetry bool   // retry like the popular SDKs: 3 attempts, network errors, 5xx, busy and throttle codes
}

// call makes call number i and reports whether it succeeded.
func (c *client) call(ctx context.Context, i int, send bool, kind int) bool {
	var method, path string
	var body []byte
	switch {
	case send && kind%2 == 0:
		method, path = http.MethodPost, dingtalktest.PathAsyncSend
		body = fmt.Appendf(nil, `{"agent_id":1,"userid_list":"u%d","msg":{"msgtype":"text","text":{"content":"notice %d"}}}`, i%50, i)
	case send:
		method, path = http.MethodPost, dingtalktest.PathRobotBatchSend
		body = fmt.Appendf(nil, `{"robotCode":"r1","userIds":["u%d"],"msgKey":"sampleText","msgParam":"{\"content\":\"notice %d\"}"}`, i%50, i)
	case kind == 0:
		method, path = http.MethodPost, dingtalktest.PathUserGet
		body = fmt.Appendf(nil, `{"userid":"u%d"}`, i%50)
	case kind == 1:
		method, path = http.MethodGet, dingtalktest.PathDeptList+"?id=1"
	default:
		method, path = http.MethodGet, dingtalktest.PathContactUsers+fmt.Sprintf("u%d", i%50)
	}
	ok, _, _ := c.do(ctx, method, path, body)
	return ok
}

// do makes one client call, the SDK way (up to 3 attempts, backoff 100 ms,
// then 200 ms) if the client retries, and reports success, whether dingproxy
// answered with a fallback, and how many upstream attempts the call cost.
func (c *client) do(ctx context.Context, method, path string, body []byte) (ok, fallback bool, upstream int) {
	tries := 1
	if c.sdkRetry {
		tries = 3
	}
	for n := 1; ; n++ {
		a := c.once(ctx, method, path, body)
		upstream += a.upstream
		if a.ok || !a.retryable || n >= tries {
			return a.ok, a.fallback, upstream
		}
		select {
		case <-time.After(time.Duration(50<<n) * time.Millisecond):
		case <-ctx.Done():
			return false, a.fallback, upstream
		}
	}
}

// answer is what one HTTP call came to.
type answer struct {
	ok        bool // a success, not a fallback
	retryable bool // what an SDK retry loop would think
	fallback  bool // answered by dingproxy itself (X-Dingproxy-Fallback)
	upstream  int  // upstream attempts: 1, or X-Dingproxy-Attempts through dingproxy
}

// once makes one HTTP call.
func (c *client) once(ctx context.Context, method, path string, body []byte) answer {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	url := c.base + path
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return answer{}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		if strings.HasPrefix(path, "/v1.0/") {
			req.Header.Set(dingtalk.HeaderAccessToken, c.token)
		} else {
			sep := "?"
			if strings.Contains(url, "?") {
				sep = "&"
			}
			req.URL, _ = req.URL.Parse(url + sep + dingtalk.QueryAccessToken + "=" + c.token)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return answer{retryable: true, upstream: 1} // network errors: every SDK retries them, POST included
	}
	defer resp.Body.Close()
	a := answer{upstream: 1, fallback: resp.Header.Get(proxy.HeaderFallback) != ""}
	if v := resp.Header.Get(proxy.HeaderAttempts); v != "" {
		a.upstream, _ = strconv.Atoi(v)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.retryable = true
		return a
	}
	res := dingtalk.Classify(resp.StatusCode, resp.Header.Get("Content-Type"), b)
	a.ok = res.Class == dingtalk.Success && !a.fallback
	a.retryable = res.Class == dingtalk.ServerError || res.Class == dingtalk.Throttled
	return a
}
