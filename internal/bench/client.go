package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
	"github.com/dingproxy/dingproxy/internal/deferral"
	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// Mode names a client in the tables.
type Mode string

// The three clients every view compares.
const (
	Direct   Mode = "direct"
	SDKRetry Mode = "direct + SDK retry"
	Proxy    Mode = "dingproxy"
)

// SDKAttempts is the common DingTalk SDK retry loop: 3 attempts, backoff
// 100 ms, then 200 ms, retrying network errors, 5xx, "system busy" and
// throttle codes, POST included.
const SDKAttempts = 3

// QPSLimit is DingTalk's standard limit, 20 calls per second per API (with
// its 1 s penalty), which the views set on the fake.
const QPSLimit = 20

// ClientTimeout bounds one client call (every attempt of the SDK loop):
// more than dingproxy's retry.timeout (30 s), so calls it queues complete.
const ClientTimeout = 35 * time.Second

// Client is one kind of client.
type Client struct {
	Mode     Mode
	Via      Via
	SDKRetry bool // retry as the popular SDKs do (SDKAttempts)
}

// Standard is the client a Mode names: Direct and SDKRetry call the fake
// straight, Proxy through one dingproxy, adjusted by tune.
func Standard(m Mode, tune ...func(*config.Config)) (Client, error) {
	switch m {
	case Direct:
		return Client{Mode: m, Via: Straight{}}, nil
	case SDKRetry:
		return Client{Mode: m, Via: Straight{}, SDKRetry: true}, nil
	case Proxy:
		return Client{Mode: m, Via: ThroughProxy{Tune: tune}}, nil
	}
	return Client{}, fmt.Errorf("bench: unknown client %q", m)
}

// Via is how a client's calls reach the fake DingTalk.
type Via interface {
	// Open readies the way to fake; hc is the client's HTTP client.
	Open(ctx context.Context, fake *dingtalktest.Server, hc *http.Client) (Endpoint, error)
}

// Endpoint is where a client sends its calls.
type Endpoint struct {
	// Bases are the URLs calls go to; call i goes to Bases[i%len(Bases)]
	// (a Fleet's replicas).
	Bases []string
	// Token is the token calls carry, or "" when what is in between
	// injects its own.
	Token string
	// Close, if set, stops what Open started.
	Close func()
}

// Straight calls the fake itself with a token fetched once at start, as a
// simple SDK setup does.
type Straight struct{}

// Open implements Via.
func (Straight) Open(ctx context.Context, fake *dingtalktest.Server, hc *http.Client) (Endpoint, error) {
	tok, err := FetchToken(ctx, hc, fake.URL())
	if err != nil {
		return Endpoint{}, err
	}
	return Endpoint{Bases: []string{fake.URL()}, Token: tok}, nil
}

// ThroughProxy calls through one dingproxy on its built-in defaults, pointed
// at the fake, each Tune applied.
type ThroughProxy struct{ Tune []func(*config.Config) }

// Open implements Via.
func (p ThroughProxy) Open(_ context.Context, fake *dingtalktest.Server, _ *http.Client) (Endpoint, error) {
	stop, url, err := StartProxy(fake.URL(), p.Tune...)
	if err != nil {
		return Endpoint{}, err
	}
	return Endpoint{Bases: []string{url}, Close: stop}, nil
}

// Fleet is N replicas of one app side by side, each opened with Of (N
// dingproxies alone, with no shared state, for ThroughProxy; N clients of
// the app's one token for Straight). The Caller spreads calls over them by
// call number: call i goes to replica i%N.
type Fleet struct {
	N  int
	Of Via
}

// Open implements Via.
func (f Fleet) Open(ctx context.Context, fake *dingtalktest.Server, hc *http.Client) (Endpoint, error) {
	if f.N < 1 || f.Of == nil {
		return Endpoint{}, fmt.Errorf("bench: a fleet of %d replicas of %T", f.N, f.Of)
	}
	var out Endpoint
	var closes []func()
	out.Close = func() {
		for _, c := range closes {
			c()
		}
	}
	for i := range f.N {
		ep, err := f.Of.Open(ctx, fake, hc)
		if ep.Close != nil {
			closes = append(closes, ep.Close)
		}
		if err == nil && i > 0 && ep.Token != out.Token {
			err = errors.New("bench: the replicas of a fleet got different tokens")
		}
		if err != nil {
			out.Close()
			return Endpoint{}, err
		}
		out.Bases = append(out.Bases, ep.Bases...)
		out.Token = ep.Token
	}
	return out, nil
}

// StartProxy runs dingproxy on built-in defaults, pointed at the fake with
// the fake's credentials, on a free loopback port.
func StartProxy(fakeURL string, tweaks ...func(*config.Config)) (stop func(), url string, err error) {
	cfg := config.Default()
	cfg.Upstreams.OAPI, cfg.Upstreams.API = fakeURL, fakeURL
	cfg.App.Key, cfg.App.Secret = dingtalktest.DefaultAppKey, config.Secret(dingtalktest.DefaultAppSecret)
	for _, t := range tweaks {
		if t != nil {
			t(&cfg)
		}
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
		a.Close()
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

// FetchToken gets an app token once from the fake.
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
		return "", errors.New("bench: fetching a token from the fake failed")
	}
	return v.AccessToken, nil
}

// HTTPClient is a client's HTTP client: up to conns idle connections kept
// (and at most maxConns per host, 0 for no bound), no compression.
func HTTPClient(timeout time.Duration, conns, maxConns int) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: maxConns, DisableCompression: true,
	}}
}

// Request is one client call.
type Request struct {
	Method, Path string
	Body         []byte
	Send         bool // a send (it executes something), not a read
}

// Outcome is what one client call ended with.
type Outcome struct {
	I        int // the call's number in its load
	Req      Request
	OK       bool // a successful answer; a fallback answered by dingproxy is not one
	Fallback bool // answered by dingproxy itself (X-Dingproxy-Fallback)
	// Status is the last answer's HTTP status (0: none), FallbackKind its
	// X-Dingproxy-Fallback ("paced", "circuit-open", ...).
	Status       int
	FallbackKind string
	// Cache is the last answer's X-Dingproxy-Cache ("hit", "miss", or "").
	Cache string
	// Deferred: the last answer said the send was kept for later
	// (X-Dingproxy-Deferred), DeferredID the id it gave.
	Deferred   bool
	DeferredID string
	// Attempts is what the call cost DingTalk as the client can count it:
	// one per try straight, X-Dingproxy-Attempts through dingproxy.
	Attempts int
	Due      time.Time // when the schedule meant it to start
	Start    time.Time
	Latency  time.Duration // from Start to the end of the last answer
	Last     string        // the last answer's status and the start of its body, or the error
}

// End is when the call ended.
func (o Outcome) End() time.Time { return o.Start.Add(o.Latency) }

// Caller makes one Client's calls.
type Caller struct {
	client Client
	hc     *http.Client
	ep     Endpoint
}

// Open readies c against fake; Close the Caller when done.
func Open(ctx context.Context, c Client, fake *dingtalktest.Server, hc *http.Client) (*Caller, error) {
	ep, err := c.Via.Open(ctx, fake, hc)
	if err != nil {
		return nil, err
	}
	return &Caller{client: c, hc: hc, ep: ep}, nil
}

// Close stops what Open started.
func (c *Caller) Close() {
	if c.ep.Close != nil {
		c.ep.Close()
	}
}

// Do makes call number i: one try, or up to SDKAttempts the SDK way.
func (c *Caller) Do(ctx context.Context, i int, r Request) Outcome {
	out := Outcome{I: i, Req: r, Start: time.Now()}
	base := c.ep.Bases[i%len(c.ep.Bases)]
	tries := 1
	if c.client.SDKRetry {
		tries = SDKAttempts
	}
	for n := 1; ; n++ {
		a := c.once(ctx, base, r)
		out.Attempts += a.attempts
		out.OK, out.Fallback, out.Last = a.ok, a.fallback, a.last
		out.Status, out.FallbackKind, out.Cache, out.Deferred, out.DeferredID = a.status, a.kind, a.cache, a.deferred != "", a.deferred
		if a.ok || !a.retryable || n >= tries {
			break
		}
		t := time.NewTimer(time.Duration(50<<n) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			out.Latency = time.Since(out.Start)
			return out
		}
	}
	out.Latency = time.Since(out.Start)
	return out
}

// answer is one HTTP call's result.
type answer struct {
	ok, fallback bool
	// retryable is what an SDK retry loop thinks: network errors, 5xx,
	// "system busy" and throttle codes, POST included.
	retryable bool
	attempts  int
	status    int
	kind      string // X-Dingproxy-Fallback
	cache     string // X-Dingproxy-Cache
	deferred  string // X-Dingproxy-Deferred
	last      string
}

func (c *Caller) once(ctx context.Context, base string, r Request) answer {
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	url := base + r.Path
	apiHost := strings.HasPrefix(r.Path, "/v1.0/") || strings.HasPrefix(r.Path, "/v2.0/")
	if c.ep.Token != "" && !apiHost && !ownToken(r.Path) {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + dingtalk.QueryAccessToken + "=" + c.ep.Token
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, url, body)
	if err != nil {
		return answer{last: err.Error()}
	}
	if r.Body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.ep.Token != "" && apiHost {
		req.Header.Set(dingtalk.HeaderAccessToken, c.ep.Token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return answer{retryable: ctx.Err() == nil, attempts: 1, last: err.Error()}
	}
	defer resp.Body.Close()
	a := answer{attempts: 1, status: resp.StatusCode, kind: resp.Header.Get(proxy.HeaderFallback), cache: resp.Header.Get(proxy.HeaderCache)}
	a.fallback = a.kind != ""
	a.deferred = resp.Header.Get(deferral.HeaderDeferred)
	if v := resp.Header.Get(proxy.HeaderAttempts); v != "" {
		a.attempts, _ = strconv.Atoi(v)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.retryable, a.last = true, err.Error()
		return a
	}
	a.last = resp.Status + " " + string(b[:min(len(b), 120)])
	switch dingtalk.Classify(resp.StatusCode, resp.Header.Get("Content-Type"), b).Class {
	case dingtalk.Success:
		a.ok = !a.fallback
	case dingtalk.ServerError, dingtalk.Throttled:
		a.retryable = true
	}
	return a
}

// ownToken says whether path carries an access_token of its own (a custom
// robot's webhook), which the app's token must not displace.
func ownToken(path string) bool {
	_, q, ok := strings.Cut(path, "?")
	if !ok {
		return false
	}
	v, err := url.ParseQuery(q)
	return err == nil && v.Has(dingtalk.QueryAccessToken)
}
