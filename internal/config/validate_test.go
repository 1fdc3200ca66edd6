package config

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // "" means valid
	}{
		{"default", func(*Config) {}, ""},

		{"listen without port", func(c *Config) { c.Listen = "8080" }, `listen: must be host:port, got "8080"`},
		{"listen named port", func(c *Config) { c.Listen = ":http" }, `listen: must be host:port, got ":http"`},
		{"listen port too big", func(c *Config) { c.Listen = "127.0.0.1:65536" }, `listen: must be host:port, got "127.0.0.1:65536"`},
		{"listen empty", func(c *Config) { c.Listen = "" }, `listen: must be host:port, got ""`},
		{"listen empty host", func(c *Config) { c.Listen = ":8080" }, ""},
		{"listen ipv6", func(c *Config) { c.Listen = "[::1]:8080" }, ""},
		{"admin_listen bad", func(c *Config) { c.AdminListen = "localhost" }, `admin_listen: must be host:port, got "localhost"`},
		{"admin_listen same", func(c *Config) { c.AdminListen = c.Listen }, `admin_listen: must differ from listen ("127.0.0.1:8080")`},
		{"both port 0", func(c *Config) { c.Listen, c.AdminListen = "127.0.0.1:0", "127.0.0.1:0" }, ""},
		{"shutdown_timeout zero", func(c *Config) { c.ShutdownTimeout = 0 }, "shutdown_timeout: must be > 0, got 0s"},

		{"api host only", func(c *Config) { c.Upstreams.API = "api.dingtalk.com" },
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got "api.dingtalk.com"`},
		{"oapi path", func(c *Config) { c.Upstreams.OAPI = "https://oapi.dingtalk.com/topapi" },
			`upstreams.oapi: must be an absolute http or https URL with no path, query or user info, got "https://oapi.dingtalk.com/topapi"`},
		{"api query", func(c *Config) { c.Upstreams.API = "https://api.dingtalk.com?x=1" },
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got "https://api.dingtalk.com?x=1"`},
		{"api user info hides password", func(c *Config) { c.Upstreams.API = "https://u:hunter2@api.dingtalk.com" },
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got "https://u:xxxxx@api.dingtalk.com"`},
		{"api other scheme", func(c *Config) { c.Upstreams.API = "ws://api.dingtalk.com" },
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got "ws://api.dingtalk.com"`},
		{"api empty", func(c *Config) { c.Upstreams.API = "" },
			`upstreams.api: must be an absolute http or https URL with no path, query or user info, got ""`},
		{"upstreams http and trailing slash", func(c *Config) {
			c.Upstreams.API, c.Upstreams.OAPI = "http://127.0.0.1:8002/", "http://localhost:8001"
		}, ""},

		{"key without secret", func(c *Config) { c.App.Key = "k" }, "app.secret: must be set (or app.secret_file) when app.key is set"},
		{"secret without key", func(c *Config) { c.App.Secret = "s" }, "app.key: must be set when app.secret is set"},
		{"key and secret", func(c *Config) { c.App = App{Key: "k", Secret: "s"} }, ""},

		{"refresh_before negative", func(c *Config) { c.Token.RefreshBefore = -time.Minute }, "token.refresh_before: must be > 0, got -1m0s"},
		{"endpoint unknown", func(c *Config) { c.Token.Endpoint = "foo" }, `token.endpoint: must be "oauth2" or "gettoken", got "foo"`},
		{"endpoint gettoken", func(c *Config) { c.Token.Endpoint = EndpointGetToken }, ""},

		{"max_attempts 0", func(c *Config) { c.Retry.MaxAttempts = 0 }, "retry.max_attempts: must be between 1 and 10, got 0"},
		{"max_attempts 11", func(c *Config) { c.Retry.MaxAttempts = 11 }, "retry.max_attempts: must be between 1 and 10, got 11"},
		{"max_attempts bounds", func(c *Config) { c.Retry.MaxAttempts = 10 }, ""},
		{"per_try_timeout negative", func(c *Config) { c.Retry.PerTryTimeout = -time.Second }, "retry.per_try_timeout: must be > 0, got -1s"},
		{"per_try_timeout above timeout", func(c *Config) { c.Retry.PerTryTimeout = time.Minute }, "retry.per_try_timeout: must be <= retry.timeout (30s), got 1m0s"},
		{"per_try_timeout equal timeout", func(c *Config) { c.Retry.PerTryTimeout = c.Retry.Timeout }, ""},
		{"timeout zero", func(c *Config) { c.Retry.Timeout = 0 }, "retry.timeout: must be > 0, got 0s"},
		{"backoff base zero", func(c *Config) { c.Retry.Backoff.Base = 0 }, "retry.backoff.base: must be > 0, got 0s"},
		{"backoff max zero", func(c *Config) { c.Retry.Backoff.Max = 0 }, "retry.backoff.max: must be > 0, got 0s"},
		{"backoff max below base", func(c *Config) { c.Retry.Backoff.Max = 50 * time.Millisecond }, "retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms"},
		{"max_body_bytes negative", func(c *Config) { c.Retry.MaxBodyBytes = -1 }, "retry.max_body_bytes: must be >= 0, got -1"},
		{"max_body_bytes zero", func(c *Config) { c.Retry.MaxBodyBytes = 0 }, ""},
		{"max_inflight zero", func(c *Config) { c.MaxInflight = 0 }, "max_inflight: must be >= 1, got 0"},
		{"read_header_timeout zero", func(c *Config) { c.Server.ReadHeaderTimeout = 0 }, "server.read_header_timeout: must be > 0, got 0s"},
		{"idle_timeout negative", func(c *Config) { c.Server.IdleTimeout = -time.Second }, "server.idle_timeout: must be > 0, got -1s"},
		{"max_header_bytes too small", func(c *Config) { c.Server.MaxHeaderBytes = 100 }, "server.max_header_bytes: must be between 4096 and 16777216, got 100"},
		{"max_header_bytes too large", func(c *Config) { c.Server.MaxHeaderBytes = 1 << 30 }, "server.max_header_bytes: must be between 4096 and 16777216, got 1073741824"},
		{"body_read_timeout zero", func(c *Config) { c.Server.BodyReadTimeout = 0 }, "server.body_read_timeout: must be > 0, got 0s"},
		{"max_request_body_bytes below max_body_bytes", func(c *Config) { c.Server.MaxRequestBodyBytes = 1000 }, "server.max_request_body_bytes: must be >= retry.max_body_bytes (1048576), got 1000"},
		{"max_inspect_bytes too small", func(c *Config) { c.Retry.MaxInspectBytes = 10 }, "retry.max_inspect_bytes: must be between 1024 and 1048576, got 10"},
		{"max_request_body_bytes zero", func(c *Config) { c.Server.MaxRequestBodyBytes, c.Retry.MaxBodyBytes = 0, 0 }, "server.max_request_body_bytes: must be >= 1, got 0"},
		{"max_buffered_bytes below max_body_bytes", func(c *Config) { c.Retry.MaxBufferedBytes = 1000 }, "retry.max_buffered_bytes: must be >= retry.max_body_bytes (1048576), got 1000"},
		{"ratio above 1", func(c *Config) { c.Retry.Budget.Ratio = 1.5 }, "retry.budget.ratio: must be between 0 and 1, got 1.5"},
		{"ratio negative", func(c *Config) { c.Retry.Budget.Ratio = -0.1 }, "retry.budget.ratio: must be between 0 and 1, got -0.1"},
		{"ratio NaN", func(c *Config) { c.Retry.Budget.Ratio = math.NaN() }, "retry.budget.ratio: must be between 0 and 1, got NaN"},
		{"ratio bounds", func(c *Config) { c.Retry.Budget.Ratio = 0 }, ""},
		{"min_per_second negative", func(c *Config) { c.Retry.Budget.MinPerSecond = -1 }, "retry.budget.min_per_second: must be >= 0, got -1"},

		{"per_api_qps zero", func(c *Config) { c.Pacing.PerAPIQPS = 0 }, "pacing.per_api_qps: must be > 0, got 0"},
		{"global_qps negative", func(c *Config) { c.Pacing.GlobalQPS = -2.5 }, "pacing.global_qps: must be > 0, got -2.5"},
		{"robot_per_minute zero", func(c *Config) { c.Pacing.RobotPerMinute = 0 }, "pacing.robot_per_minute: must be between 1 and 1000, got 0"},

		{"failure_ratio zero", func(c *Config) { c.Breaker.FailureRatio = 0 }, "breaker.failure_ratio: must be > 0 and <= 1, got 0"},
		{"failure_ratio above 1", func(c *Config) { c.Breaker.FailureRatio = 1.01 }, "breaker.failure_ratio: must be > 0 and <= 1, got 1.01"},
		{"failure_ratio 1", func(c *Config) { c.Breaker.FailureRatio = 1 }, ""},
		{"min_requests zero", func(c *Config) { c.Breaker.MinRequests = 0 }, "breaker.min_requests: must be >= 1, got 0"},
		{"window zero", func(c *Config) { c.Breaker.Window = 0 }, "breaker.window: must be > 0, got 0s"},
		{"open_timeout negative", func(c *Config) { c.Breaker.OpenTimeout = -time.Millisecond }, "breaker.open_timeout: must be > 0, got -1ms"},
		{"half_open_requests zero", func(c *Config) { c.Breaker.HalfOpenRequests = 0 }, "breaker.half_open_requests: must be >= 1, got 0"},
		{"max_routes zero", func(c *Config) { c.Breaker.MaxRoutes = 0 }, "breaker.max_routes: must be >= 1, got 0"},
		{"slow_call negative", func(c *Config) { c.Breaker.SlowCall = -time.Second }, "breaker.slow_call: must be >= 0 (0: off), got -1s"},
		{"slow_call zero is off", func(c *Config) { c.Breaker.SlowCall = 0 }, ""},
		{"slow_call under per_try_timeout", func(c *Config) { c.Breaker.SlowCall = 500 * time.Millisecond }, ""},
		{"slow_call at per_try_timeout", func(c *Config) { c.Breaker.SlowCall = c.Retry.PerTryTimeout },
			"breaker.slow_call: must be < retry.per_try_timeout (10s), which already cuts off a slower attempt as a failure, got 10s"},
		{"route slow_call negative", func(c *Config) {
			d := -5 * time.Millisecond
			c.Routes = []Route{{Path: "/a"}, {Path: "/b", SlowCall: &d}}
		}, "routes[1].slow_call: must be >= 0 (0: off), got -5ms"},
		{"route slow_call past per_try_timeout", func(c *Config) {
			d := time.Minute
			c.Routes = []Route{{Path: "/a", SlowCall: &d}}
		}, "routes[0].slow_call: must be < retry.per_try_timeout (10s), which already cuts off a slower attempt as a failure, got 1m0s"},
		{"route slow_call zero under a default", func(c *Config) {
			zero := time.Duration(0)
			c.Breaker.SlowCall = time.Second
			c.Routes = []Route{{Path: "/a", SlowCall: &zero}}
		}, ""},

		{"route path relative", func(c *Config) {
			c.Routes = []Route{{Path: "/a"}, {Path: "topapi/x"}}
		}, `routes[1].path: must start with "/", got "topapi/x"`},
		{"route path empty", func(c *Config) { c.Routes = []Route{{}} }, `routes[0].path: must start with "/", got ""`},
		{"route path duplicate", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/x"}, {Path: "/b"}, {Path: "/topapi/x"}}
		}, `routes[2].path: duplicate of routes[0].path "/topapi/x"`},
		{"no routes", func(c *Config) { c.Routes = nil }, ""},
		{"fallback status 700", func(c *Config) { c.Routes[0].Fallback.Status = 700 }, "routes[0].fallback.status: must be between 100 and 599, got 700"},
		{"fallback status 99", func(c *Config) { c.Routes[0].Fallback.Status = 99 }, "routes[0].fallback.status: must be between 100 and 599, got 99"},
		{"fallback empty", func(c *Config) { c.Routes[0].Fallback = &Fallback{} }, "routes[0].fallback.status: must be set (100 to 599) unless only fallback.stale is set"},
		{"fallback stale only", func(c *Config) { c.Routes[0].Fallback = &Fallback{Stale: time.Minute} }, ""},
		{"fallback stale and body without status", func(c *Config) {
			c.Routes[0].Fallback = &Fallback{Stale: time.Minute, Body: "x"}
		}, "routes[0].fallback.status: must be set (100 to 599) unless only fallback.stale is set"},
		{"fallback stale negative", func(c *Config) { c.Routes[0].Fallback.Stale = -time.Second }, "routes[0].fallback.stale: must be >= 0, got -1s"},
		{"fallback header names", func(c *Config) {
			c.Routes[0].Fallback.Headers = map[string]string{"X-Ok": "1", "bad name": "2", "": "3", "x:y": "4"}
		}, strings.Join([]string{
			`routes[0].fallback.headers: header name must be a valid HTTP token, got ""`,
			`routes[0].fallback.headers: header name must be a valid HTTP token, got "bad name"`,
			`routes[0].fallback.headers: header name must be a valid HTTP token, got "x:y"`,
		}, "\n")},

		{"log level", func(c *Config) { c.Log.Level = "verbose" }, `log.level: must be "debug", "info", "warn" or "error", got "verbose"`},
		{"log format", func(c *Config) { c.Log.Format = "text" }, `log.format: must be "json" or "console", got "text"`},

		{"quota budget negative", func(c *Config) { c.Quota.MonthlyBudget = -1 }, `quota.monthly_budget: must be >= 0 (0: no cap), got -1`},
		{"quota timezone", func(c *Config) { c.Quota.Timezone = "Mars/Olympus" }, `quota.timezone: must be an IANA time zone such as Asia/Shanghai, got "Mars/Olympus"`},
		{"quota timezone UTC", func(c *Config) { c.Quota.Timezone = "UTC" }, ""},
		{"cache on a catalogued read", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/v2/department/listsub", Cache: 30 * time.Second}}
		}, ""},
		{"cache on a route made idempotent", func(c *Config) {
			c.Routes = []Route{{Path: "/department/list", Idempotent: ptr(true), Cache: time.Minute}}
		}, ""},
		{"cache on a send", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/message/corpconversation/asyncsend_v2", Cache: time.Minute}}
		}, `routes[0].cache: allowed only on an idempotent route: "/topapi/message/corpconversation/asyncsend_v2" is not a read DingTalk's catalogue lists (set routes[0].idempotent: true if it is one)`},
		{"cache on a route made not idempotent", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/v2/department/listsub", Idempotent: ptr(false), Cache: time.Minute}}
		}, `routes[0].cache: allowed only on an idempotent route, and routes[0].idempotent is false`},
		{"cache negative", func(c *Config) { c.Routes = []Route{{Path: "/x", Cache: -time.Second}} }, `routes[0].cache: must be >= 0, got -1s`},
		{"cache too long", func(c *Config) {
			c.Routes = []Route{{Path: "/x", Idempotent: ptr(true), Cache: 48 * time.Hour}}
		}, `routes[0].cache: must be at most 24h, got 48h0m0s`},
		{"defer on a send", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/message/corpconversation/asyncsend_v2", Defer: &Defer{MaxAge: 10 * time.Minute}}}
		}, ""},
		{"defer merge on the robot", func(c *Config) {
			c.Routes = []Route{{Path: "/robot/send", Defer: &Defer{MaxAge: time.Hour, Merge: true}}}
		}, ""},
		{"defer without max_age", func(c *Config) { c.Routes = []Route{{Path: "/robot/send", Defer: &Defer{}}} },
			`routes[0].defer.max_age: must be between 1s and 168h, got 0s`},
		{"defer too long", func(c *Config) { c.Routes = []Route{{Path: "/robot/send", Defer: &Defer{MaxAge: 200 * time.Hour}}} },
			`routes[0].defer.max_age: must be between 1s and 168h, got 200h0m0s`},
		{"defer on a read", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/v2/department/listsub", Defer: &Defer{MaxAge: time.Minute}}}
		}, `routes[0].defer: allowed only on a route that sends: "/topapi/v2/department/listsub" is a read DingTalk's catalogue lists`},
		{"defer on a route made idempotent", func(c *Config) {
			c.Routes = []Route{{Path: "/x", Idempotent: ptr(true), Defer: &Defer{MaxAge: time.Minute}}}
		}, `routes[0].defer: allowed only on a route that sends, and routes[0].idempotent is true`},
		{"defer on the token endpoint", func(c *Config) {
			c.Routes = []Route{{Path: "/gettoken", Defer: &Defer{MaxAge: time.Minute}}}
		}, `routes[0].defer: not allowed on a token endpoint ("/gettoken")`},
		{"defer merge off the robot", func(c *Config) {
			c.Routes = []Route{{Path: "/topapi/message/corpconversation/asyncsend_v2", Defer: &Defer{MaxAge: time.Minute, Merge: true}}}
		}, `routes[0].defer.merge: allowed only on the custom robot's route "/robot/send", got "/topapi/message/corpconversation/asyncsend_v2"`},
		{"outbox dir empty", func(c *Config) { c.Outbox.Dir = "" }, `outbox.dir: must be set (a directory the proxy may write)`},
		{"outbox too small", func(c *Config) { c.Outbox.MaxBytes = 1000 }, `outbox.max_bytes: must be between 1048576 and 68719476736, got 1000`},
		{"fleet redis", func(c *Config) { c.Fleet.RedisURL = "rediss://user:s3cret@redis:6380/3" }, ""},
		{"fleet scheme", func(c *Config) { c.Fleet.RedisURL = "http://:s3cret@redis:6379" },
			`fleet.redis_url: must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL, got scheme "http"`},
		{"fleet unparsable", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@redis:port/0" }, `fleet.redis_url: does not parse as a URL`},
		{"fleet no host", func(c *Config) { c.Fleet.RedisURL = "redis:///0" }, `fleet.redis_url: must name a host`},
		{"fleet db", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@redis:6379/x" }, `fleet.redis_url: must end in a database number (/0)`},
		{"fleet cluster", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@r1:6379?addr=r2:6379&addr=r3:6379" }, ""},
		{"fleet cluster, one seed", func(c *Config) { c.Fleet.RedisURL = "rediss+cluster://app:s3cret@clustercfg.example:6379" }, ""},
		{"fleet cluster, database 0", func(c *Config) { c.Fleet.RedisURL = "redis+cluster://r1:6379/0" }, ""},
		{"fleet cluster, another database", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@r1:6379/2?addr=r2:6379" },
			`fleet.redis_url: names a database other than 0, which a Redis Cluster does not have: end it in /0 or no database`},
		{"fleet cluster, a bad seed", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@r1:6379?addr=r2:6379&addr=u:s3cret@r3" },
			`fleet.redis_url: addr parameter 2 is not host:port`},
		{"fleet sentinel", func(c *Config) {
			c.Fleet.RedisURL = "redis://:s3cret@s1:26379/1?master_name=mymaster&addr=s2:26379&password=m4ster"
		}, ""},
		{"fleet sentinel, no master", func(c *Config) { c.Fleet.RedisURL = "redis://s1:26379?master_name=" },
			`fleet.redis_url: master_name= must name the master`},
		{"fleet sentinel and cluster", func(c *Config) { c.Fleet.RedisURL = "redis+cluster://s1:26379?master_name=m" },
			`fleet.redis_url: master_name= (Sentinel) does not go with the redis+cluster:// scheme (a cluster): use redis://`},
		{"fleet unknown option", func(c *Config) { c.Fleet.RedisURL = "redis://:s3cret@redis:6379/0?pool_size=3&pool_sise=3" },
			`fleet.redis_url: query parameter 2 is not an option of a Redis URL`},
		{"fleet option value", func(c *Config) { c.Fleet.RedisURL = "redis://r1:6379?addr=r2:6379&read_only=s3cret" },
			`fleet.redis_url: query parameter "read_only": its value does not parse`},
		{"fleet password as a parameter", func(c *Config) { c.Fleet.RedisURL = "redis://redis:6379/0?s3cret" },
			`fleet.redis_url: query parameter 1 is not an option of a Redis URL`},
		{"fleet no scheme", func(c *Config) { c.Fleet.RedisURL = "localhost:6379" },
			`fleet.redis_url: "localhost:6379" has no scheme: write redis://localhost:6379/0 (or rediss:// for TLS)`},
		{"fleet no scheme, a database", func(c *Config) { c.Fleet.RedisURL = "redis.svc:6380/2" },
			`fleet.redis_url: "redis.svc:6380/2" has no scheme: write redis://redis.svc:6380/2 (or rediss:// for TLS)`},
		{"fleet no scheme, a password", func(c *Config) { c.Fleet.RedisURL = ":s3cret@localhost:6379" },
			`fleet.redis_url: ":xxxxx@localhost:6379" has no scheme: write redis://:xxxxx@localhost:6379/0 (or rediss:// for TLS)`},
		{"fleet no scheme, a user and password", func(c *Config) { c.Fleet.RedisURL = "app:s3cret@10.0.0.7:6379/1" },
			`fleet.redis_url: "app:xxxxx@10.0.0.7:6379/1" has no scheme: write redis://app:xxxxx@10.0.0.7:6379/1 (or rediss:// for TLS)`},
		{"fleet no scheme, unreadable", func(c *Config) { c.Fleet.RedisURL = ":s3cret%@localhost:6379" },
			`fleet.redis_url: has no scheme: write redis://host:port/0 (or rediss:// for TLS)`},
		{"fleet prefix", func(c *Config) { c.Fleet.KeyPrefix = "a:b" }, `fleet.key_prefix: must be 1 to 64 bytes without spaces, colons or braces, got "a:b"`},
		{"fleet timeout", func(c *Config) { c.Fleet.Timeout = 0 }, `fleet.timeout: must be > 0, got 0s`},
		{"fleet timeout long", func(c *Config) { c.Fleet.Timeout = time.Minute }, `fleet.timeout: must be at most 5s, got 1m0s`},

		{"all at once, in struct order", func(c *Config) {
			c.Log.Format = "text"
			c.Retry.Budget.Ratio = 2
			c.Listen = "x"
		}, strings.Join([]string{
			`listen: must be host:port, got "x"`,
			`retry.budget.ratio: must be between 0 and 1, got 2`,
			`log.format: must be "json" or "console", got "text"`,
		}, "\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := Default()
			tt.modify(&c)
			err := c.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Validate mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// The zero Config is invalid and says so key by key.
func TestValidateZero(t *testing.T) {
	t.Parallel()
	err := (&Config{}).Validate()
	if err == nil {
		t.Fatal("Validate of the zero Config = nil")
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate error %T does not unwrap to a list", err)
	}
	for _, e := range joined.Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Errorf("%v (%T) is not a *FieldError", e, e)
			continue
		}
		if e.Error() != fe.Key+": "+fe.Msg {
			t.Errorf("Error() = %q, want Key + \": \" + Msg", e.Error())
		}
	}
}

// fleet.redis_url's passwords, the user's and Sentinel's master password=
// in the query, never print, nor show in a validation error of any form.
func TestRedisURLPasswordsNeverPrint(t *testing.T) {
	t.Parallel()
	const pw = "s3cr3t-Val-4b9f"
	prints := []struct{ url, want string }{
		{"redis://:" + pw + "@r:6379/0", "redis://:xxxxx@r:6379/0"},
		{"redis://app:" + pw + "@r1:6379?addr=r2:6379", "redis://app:xxxxx@r1:6379?addr=r2:6379"},
		{"rediss+cluster://:" + pw + "@cfg:6379", "rediss+cluster://:xxxxx@cfg:6379"},
		{"redis://:" + pw + "@s1:26379?master_name=m&password=" + pw, "redis://:xxxxx@s1:26379?master_name=m&password=xxxxx"},
		{"redis://s1:26379?master_name=m&password=" + pw + "&password=" + pw, "redis://s1:26379?master_name=m&password=xxxxx&password=xxxxx"},
		{"redis://s1:26379?master_name=m&password=" + pw + "%zz", Redacted},
	}
	for _, p := range prints {
		if got := RedisURL(p.url).String(); got != p.want {
			t.Errorf("RedisURL(%q).String() = %q, want %q", p.url, got, p.want)
		}
	}
	bad := []string{
		"http://:" + pw + "@r:6379",
		"redis://:" + pw + "@r:port/0",
		"redis://:" + pw + "@r:6379/x",
		"redis://:" + pw + "@r1:6379/3?addr=r2:6379",
		"redis://r1:6379?addr=u:" + pw + "@r2",
		"redis://r1:6379?addr=r2:6379&" + pw + "=1",
		"redis://r1:6379?" + pw,
		"redis://r1:6379?read_timeout=" + pw,
		"redis://s1:26379?master_name=m&dial_timeout=" + pw,
		"redis+cluster://:" + pw + "@s1:26379?master_name=m",
		":" + pw + "@r:6379",
	}
	for _, u := range bad {
		c := Default()
		c.Fleet.RedisURL = RedisURL(u)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "fleet.redis_url: ") {
			t.Errorf("%q: Validate = %v, want a fleet.redis_url error", u, err)
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("%q: the error shows the password: %v", u, err)
		}
	}
}
