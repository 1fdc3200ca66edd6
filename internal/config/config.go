package config

import (
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is dingproxy's whole configuration: the YAML schema of
// docs/configuration.md. Every key can
// also come from the environment as DINGPROXY_ + the key upper-cased with dots
// as underscores. Zero values are never defaults: Default returns those.
//
// A field tagged reload:"restart" changes only with a restart: a reload keeps
// its running value and says so (RestartOnly, KeepRestartOnly). Every other
// field applies live. The tag is per field: token.placeholder is live while
// the rest of token is not.
type Config struct {
	// Listen is the proxy's address, host:port. Default 127.0.0.1:8080.
	Listen string `mapstructure:"listen" reload:"restart"`
	// AdminListen serves /metrics, /healthz and /readyz, host:port. Default
	// 127.0.0.1:9090. It must differ from Listen, unless both are port 0.
	AdminListen string `mapstructure:"admin_listen" reload:"restart"`
	// ShutdownTimeout bounds how long in-flight calls may run after SIGTERM.
	// Default 20s; must be > 0.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// MaxInflight is the most client requests served at once; beyond it a
	// request is answered 503 at once with a DingTalk-shaped body and
	// Retry-After, instead of piling up. Default 1024; must be >= 1.
	// Applied live on reload.
	MaxInflight int `mapstructure:"max_inflight"`
	// Server sets the limits on what a client may send, and how slowly.
	Server Server `mapstructure:"server"`
	// Upstreams are DingTalk's hosts.
	Upstreams Upstreams `mapstructure:"upstreams"`
	// App holds the app's credentials.
	App App `mapstructure:"app"`
	// Token configures the shared access token.
	Token Token `mapstructure:"token"`
	// Retry configures the attempt loop.
	Retry Retry `mapstructure:"retry"`
	// Pacing keeps calls under DingTalk's rate limits.
	Pacing Pacing `mapstructure:"pacing"`
	// Breaker configures the per-route circuit breakers.
	Breaker Breaker `mapstructure:"breaker"`
	// Routes is per-path policy. Default: asyncsend_v2 is not idempotent and
	// falls back to a "queued later" answer. An empty list means no routes;
	// from the environment, DINGPROXY_ROUTES holds a YAML or JSON list.
	Routes []Route `mapstructure:"routes"`
	// Log configures logging.
	Log Log `mapstructure:"log"`
	// Quota spends the organisation's monthly API quota wisely.
	Quota Quota `mapstructure:"quota"`
	// Fleet shares state with the other proxies of the app through Redis.
	Fleet Fleet `mapstructure:"fleet"`
	// Outbox keeps the sends that routes[].defer lets wait.
	Outbox Outbox `mapstructure:"outbox"`
}

// Outbox is where deferred sends wait (README, "Deferred sends"). It opens
// at start when a route has defer; alone on local disk, in fleet mode in
// Redis.
type Outbox struct {
	// Dir holds the alone-mode store. Default ./dingproxy-outbox. It must be
	// writable when a route has defer: the proxy does not start otherwise.
	// Restart only.
	Dir string `mapstructure:"dir" reload:"restart"`
	// MaxBytes caps what the outbox holds, bodies and records together
	// (an integer, or with a unit: 64KiB, 256MiB, 1GiB). Past it, and past
	// a quarter of it for any one queue, calls are answered as without
	// defer. Default 256MiB; 1MiB to 64GiB. Restart only.
	MaxBytes ByteSize `mapstructure:"max_bytes" reload:"restart"`
}

// ByteSize is a size in bytes, written as an integer or with a binary unit
// (B, KiB, MiB, GiB).
type ByteSize int64

// String writes s in the largest binary unit that divides it.
func (s ByteSize) String() string {
	n := int64(s)
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// Quota configures the monthly quota's guard: DingTalk meters most calls
// per organisation per calendar month and answers 90020 past its quota.
type Quota struct {
	// MonthlyBudget caps the metered calls this app sends in a month (a
	// warning at 80 %, the quota answer at 100 %); 0: no cap of its own.
	// Applied live on reload.
	MonthlyBudget int64 `mapstructure:"monthly_budget"`
	// Timezone is where the month turns, an IANA name. Default
	// Asia/Shanghai (DingTalk's). Applied live on reload.
	Timezone string `mapstructure:"timezone"`
}

// Server is the proxy listener's limits on its clients. Every answer to a
// request over a limit is a clear status at once; none reaches DingTalk.
type Server struct {
	// ReadHeaderTimeout is how long a client may take to send a request's
	// line and headers (slowloris); past it the connection is closed.
	// Default 10s; must be > 0. Restart only.
	ReadHeaderTimeout time.Duration `mapstructure:"read_header_timeout" reload:"restart"`
	// IdleTimeout is how long a kept-alive connection may wait for its next
	// request. Default 2m; must be > 0. Restart only.
	IdleTimeout time.Duration `mapstructure:"idle_timeout" reload:"restart"`
	// MaxHeaderBytes caps a request's line and headers; beyond it the client
	// gets 431. Default 65536; 4096 to 16777216. Restart only.
	MaxHeaderBytes int `mapstructure:"max_header_bytes" reload:"restart"`
	// BodyReadTimeout is the longest a client may pause while sending a
	// request body; past it the request is answered 408 and nothing more is
	// sent upstream. Default 30s; must be > 0.
	BodyReadTimeout time.Duration `mapstructure:"body_read_timeout"`
	// MaxRequestBodyBytes caps a request body: a larger Content-Length is
	// answered 413 at once, and a body of unknown length is cut off with 413
	// when it passes it. Default 67108864 (64 MiB); must be >= 1 and >=
	// retry.max_body_bytes.
	MaxRequestBodyBytes int64 `mapstructure:"max_request_body_bytes"`
}

// Upstreams are DingTalk's two hosts, as absolute URLs without a path.
type Upstreams struct {
	// OAPI serves every path except /v1.0/ and /v2.0/. Default
	// https://oapi.dingtalk.com. http is allowed, for local fakes.
	OAPI string `mapstructure:"oapi" reload:"restart"`
	// API serves /v1.0/ and /v2.0/ paths. Default https://api.dingtalk.com.
	API string `mapstructure:"api" reload:"restart"`
}

// App holds the credentials. With both empty the proxy runs in pass-through mode.
type App struct {
	// Key is the app key (DINGPROXY_APP_KEY). Set with Secret or not at all.
	Key string `mapstructure:"key" reload:"restart"`
	// Secret is the app secret (DINGPROXY_APP_SECRET). It never prints.
	Secret Secret `mapstructure:"secret" reload:"restart"`
	// SecretFile names a file holding the secret, as Kubernetes mounts a
	// Secret (DINGPROXY_APP_SECRET_FILE); one trailing newline is dropped.
	// Load reads it into Secret. Set Secret or SecretFile, not both.
	SecretFile string `mapstructure:"secret_file" reload:"restart"`
}

// Token configures the shared access token.
type Token struct {
	// RefreshBefore is how long before expiry the background refresh runs.
	// Default 10m; must be > 0.
	RefreshBefore time.Duration `mapstructure:"refresh_before" reload:"restart"`
	// Endpoint is "oauth2" (POST /v1.0/oauth2/accessToken) or "gettoken" (GET /gettoken).
	// Default "oauth2".
	Endpoint string `mapstructure:"endpoint" reload:"restart"`
	// Placeholder, when set, is a token value clients may send (header
	// x-acs-dingtalk-access-token or query access_token) to mean "the
	// shared token": it is replaced like an empty value. Default "" (only
	// empty values are replaced). Printable ASCII, no spaces, at most 128
	// bytes. Applied live.
	Placeholder string `mapstructure:"placeholder"`
}

// Token endpoint names.
const (
	EndpointOAuth2   = "oauth2"
	EndpointGetToken = "gettoken"
)

// Retry configures the attempt loop.
type Retry struct {
	// MaxAttempts counts the first try: 1 means no retries. Default 4; 1 to 10.
	MaxAttempts int `mapstructure:"max_attempts"`
	// PerTryTimeout bounds one attempt up to its response headers; for a
	// body streamed from the client, from the moment it is all sent. Default
	// 10s; must be > 0 and <= Timeout.
	PerTryTimeout time.Duration `mapstructure:"per_try_timeout"`
	// Timeout bounds the whole request: all attempts and waits. Default 30s;
	// must be > 0.
	Timeout time.Duration `mapstructure:"timeout"`
	// Backoff is the wait between attempts.
	Backoff Backoff `mapstructure:"backoff"`
	// MaxBodyBytes is the largest request body buffered for replay, in bytes.
	// Default 1048576 (1 MiB). Zero buffers nothing: a request with a body is
	// streamed once and not retried.
	MaxBodyBytes int64 `mapstructure:"max_body_bytes"`
	// MaxBufferedBytes caps the bytes held in request-body buffers by all
	// requests together. Past it, a request is streamed once without retry
	// (counted in dingproxy_unreplayable_requests_total{reason="buffer_cap"})
	// rather than queued. Default 67108864 (64 MiB); must be >= MaxBodyBytes.
	MaxBufferedBytes int64 `mapstructure:"max_buffered_bytes"`
	// MaxInspectBytes is how much of an answer's (decoded) body is read to
	// find DingTalk's errcode before the answer is passed on; the rest is
	// streamed as it comes. Default 65536; 1024 to 1048576 (each answer of
	// unknown length in flight holds a buffer this large).
	MaxInspectBytes int `mapstructure:"max_inspect_bytes"`
	// Budget caps how many retries are made.
	Budget Budget `mapstructure:"budget"`
}

// Backoff is full-jitter exponential backoff between Base and Max.
type Backoff struct {
	// Base is the first wait's upper bound. Default 100ms; must be > 0.
	Base time.Duration `mapstructure:"base"`
	// Max caps every wait. Default 5s; must be >= Base.
	Max time.Duration `mapstructure:"max"`
}

// Budget caps retries at Ratio of recent requests plus MinPerSecond.
type Budget struct {
	// Ratio is the share of recent requests that may be retries. Default 0.2;
	// 0 to 1, where 0 leaves only MinPerSecond.
	Ratio float64 `mapstructure:"ratio"`
	// MinPerSecond is how many retries per second are always allowed. Default
	// 5; must be >= 0.
	MinPerSecond float64 `mapstructure:"min_per_second"`
}

// Pacing keeps calls under DingTalk's limits.
type Pacing struct {
	// PerAPIQPS is the most calls per second sent to one path. Default 20;
	// must be > 0.
	PerAPIQPS float64 `mapstructure:"per_api_qps"`
	// GlobalQPS is the most calls per second sent in all. Default 450; must
	// be > 0.
	GlobalQPS float64 `mapstructure:"global_qps"`
	// RobotPerMinute is the most messages one custom robot (/robot/send,
	// one access_token) sends in any minute: DingTalk's 20, past which it
	// blocks the robot for 10 minutes. Default 20; 1 to 1000.
	RobotPerMinute int `mapstructure:"robot_per_minute"`
}

// Breaker configures the per-route circuit breakers.
type Breaker struct {
	// FailureRatio of requests in Window that opens the breaker. Default 0.5;
	// must be > 0 and <= 1.
	FailureRatio float64 `mapstructure:"failure_ratio"`
	// MinRequests in Window before FailureRatio is judged. Default 20; >= 1.
	MinRequests uint32 `mapstructure:"min_requests"`
	// Window is the closed state's counting period. Default 30s; must be > 0.
	Window time.Duration `mapstructure:"window"`
	// OpenTimeout is how long the breaker stays open before probing. Default
	// 15s; must be > 0.
	OpenTimeout time.Duration `mapstructure:"open_timeout"`
	// HalfOpenRequests is how many probes run while half-open. Default 3; >= 1.
	HalfOpenRequests uint32 `mapstructure:"half_open_requests"`
	// MaxRoutes is how many paths get a breaker of their own; the rest share
	// one. Default 512; >= 1.
	MaxRoutes int `mapstructure:"max_routes"`
	// SlowCall is how long DingTalk may take to answer a call before the
	// call counts as a failure for its route's breaker, whatever the
	// answer (which still goes back to the client). Measured per call on
	// the attempt whose answer goes back, as
	// dingproxy_upstream_attempt_duration_seconds measures attempts. A
	// route's own routes[].slow_call overrides it. Default 0: off; else
	// > 0 and < retry.per_try_timeout. Applied live on reload.
	SlowCall time.Duration `mapstructure:"slow_call"`
}

// Route is per-path policy.
type Route struct {
	// Path is matched exactly against the request path. It starts with "/"
	// and appears once in Routes.
	Path string `mapstructure:"path"`
	// Idempotent, when set, overrides dingproxy's own judgement of the route:
	// true lets every outcome be retried, false forbids retries that could
	// repeat an executed call, even when the request carries an idempotency key.
	// Absent (nil) leaves the judgement to dingproxy.
	Idempotent *bool `mapstructure:"idempotent"`
	// Fallback, when set, replaces the default answer of an open breaker.
	Fallback *Fallback `mapstructure:"fallback"`
	// Cache, when positive, answers repeats of a successful read from a
	// cache for that long (a hit sends nothing: no quota spent). Only on an
	// idempotent route: idempotent: true, or a read DingTalk's catalogue
	// lists. Zero: no cache.
	Cache time.Duration `mapstructure:"cache"`
	// Defer, when set, keeps a send on this route that cannot go now and
	// delivers it later, instead of answering with an error of dingproxy's
	// own (README, "Deferred sends"). Only on a route that sends: not a
	// read, not a token endpoint.
	Defer *Defer `mapstructure:"defer"`
	// SlowCall, when set, is the route's own slow-call limit in place of
	// breaker.slow_call: 0 turns slow calls off on the route whatever the
	// breaker's default. Absent (nil) leaves the route to
	// breaker.slow_call. 0, or > 0 and < retry.per_try_timeout.
	SlowCall *time.Duration `mapstructure:"slow_call"`
}

// Defer is a route's deferral policy.
type Defer struct {
	// MaxAge is how long a kept send may wait for delivery; past it, it is
	// dead. Required; 1s to 168h. A signed robot send is due within an hour
	// of its own timestamp, whatever MaxAge says.
	MaxAge time.Duration `mapstructure:"max_age"`
	// Merge, on the custom robot route only, sends a robot's queued text
	// and markdown messages as one markdown message when more wait than
	// its minute allows.
	Merge bool `mapstructure:"merge"`
}

// Fallback is what an open breaker answers on the route.
type Fallback struct {
	// Status is the HTTP status, 100 to 599. It may be 0 only when Stale is
	// the only field set: then the default answer follows a too-old stale one.
	Status int `mapstructure:"status"`
	// Headers are added to the answer. Names must be HTTP tokens. Names loaded
	// by Load arrive lower-cased (viper folds map keys); HTTP header names are
	// case-insensitive, so write them with http.Header.Set, which
	// canonicalises them.
	Headers map[string]string `mapstructure:"headers"`
	// Body is sent as is.
	Body string `mapstructure:"body"`
	// Stale, when positive, serves the last good answer up to this age first.
	// Zero serves no stale answers; it must not be negative.
	Stale time.Duration `mapstructure:"stale"`
}

// Fleet configures the shared mode: every proxy of one app (replicas of a
// Deployment, other services) shares the token, pacing, penalties, breaker
// openings and an IP ban through Redis. Empty RedisURL: each proxy alone.
type Fleet struct {
	// RedisURL is redis://[user:password@]host:port/db, or rediss:// for
	// TLS; a Redis Cluster with addr= seeds or the redis+cluster:// scheme;
	// Sentinel with master_name= (internal/redisurl)
	// (DINGPROXY_FLEET_REDIS_URL). Its passwords never print.
	RedisURL RedisURL `mapstructure:"redis_url" reload:"restart"`
	// KeyPrefix starts every key: <prefix>:{<app key>}:... Default dingproxy.
	KeyPrefix string `mapstructure:"key_prefix" reload:"restart"`
	// Timeout bounds every Redis operation; past it the proxy carries on
	// alone. Default 50ms; must be > 0 and at most 5s.
	Timeout time.Duration `mapstructure:"timeout" reload:"restart"`
}

// RedisURL is a Redis URL that prints with its password replaced.
type RedisURL string

// String is the URL with any password replaced by "xxxxx", the user's and
// a query parameter's (Sentinel's master password=); a URL that does not
// parse prints as REDACTED (it might hold a password anywhere).
func (r RedisURL) String() string {
	if r == "" {
		return ""
	}
	u, err := url.Parse(string(r))
	if err != nil {
		return Redacted
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Redacted
	}
	hidden := false
	for k, vs := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			for i := range vs {
				vs[i] = "xxxxx"
			}
			hidden = true
		}
	}
	if hidden {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// GoString keeps %#v from printing the password.
func (r RedisURL) GoString() string { return r.String() }

// MarshalText keeps encoders from printing the password.
func (r RedisURL) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Reveal returns the URL itself, for the one place that connects with it.
func (r RedisURL) Reveal() string { return string(r) }

// Log configures zap.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `mapstructure:"level"`
	// Format is json or console. Default json.
	Format string `mapstructure:"format" reload:"restart"`
}

// Secret is a string that never prints: fmt, JSON, text and zap see REDACTED.
type Secret string

// Redacted is what a Secret prints as.
const Redacted = "REDACTED"

func (s Secret) String() string { return Redacted }

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return Redacted }

// MarshalText keeps encoders from printing the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// Reveal returns the secret itself, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }

// Default returns the built-in configuration (docs/configuration.md's
// defaults).
func Default() Config {
	f := false
	return Config{
		Listen:          "127.0.0.1:8080",
		AdminListen:     "127.0.0.1:9090",
		ShutdownTimeout: 20 * time.Second,
		MaxInflight:     1024,
		Server: Server{
			ReadHeaderTimeout:   10 * time.Second,
			IdleTimeout:         2 * time.Minute,
			MaxHeaderBytes:      64 << 10,
			BodyReadTimeout:     30 * time.Second,
			MaxRequestBodyBytes: 64 << 20,
		},
		Upstreams: Upstreams{
			OAPI: "https://oapi.dingtalk.com",
			API:  "https://api.dingtalk.com",
		},
		Token: Token{RefreshBefore: 10 * time.Minute, Endpoint: EndpointOAuth2},
		Retry: Retry{
			MaxAttempts:      4,
			PerTryTimeout:    10 * time.Second,
			Timeout:          30 * time.Second,
			Backoff:          Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second},
			MaxBodyBytes:     1 << 20,
			MaxBufferedBytes: 64 << 20,
			MaxInspectBytes:  64 << 10,
			Budget:           Budget{Ratio: 0.2, MinPerSecond: 5},
		},
		Pacing: Pacing{PerAPIQPS: 20, GlobalQPS: 450, RobotPerMinute: 20},
		Breaker: Breaker{
			FailureRatio:     0.5,
			MinRequests:      20,
			Window:           30 * time.Second,
			OpenTimeout:      15 * time.Second,
			HalfOpenRequests: 3,
			MaxRoutes:        512,
		},
		Routes: []Route{{
			Path:       "/topapi/message/corpconversation/asyncsend_v2",
			Idempotent: &f,
			Fallback:   &Fallback{Status: 200, Body: `{"errcode":-1,"errmsg":"queued later"}`},
		}},
		Log:    Log{Level: "info", Format: "json"},
		Quota:  Quota{Timezone: "Asia/Shanghai"},
		Fleet:  Fleet{KeyPrefix: "dingproxy", Timeout: 50 * time.Millisecond},
		Outbox: Outbox{Dir: "./dingproxy-outbox", MaxBytes: 256 << 20},
	}
}
