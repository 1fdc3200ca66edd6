package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/redisurl"
)

// FieldError is one problem with one key. Its Error is Key + ": " + Msg, for
// example "retry.backoff.max: must be >= retry.backoff.base (100ms), got 50ms".
// The messages are public: users and tests read them.
type FieldError struct {
	// Key is the dotted YAML key, with list indexes: "routes[2].path".
	Key string
	// Msg states the rule and, except for secrets, the value found.
	Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

// Validate reports every problem in c, in the order of Config's fields, as
// *FieldError values joined with errors.Join; nil when there are none. No
// message contains app.secret's value.
func (c *Config) Validate() error {
	fes := c.validate()
	if len(fes) == 0 {
		return nil
	}
	errs := make([]error, len(fes))
	for i, e := range fes {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// validator collects FieldErrors.
type validator struct {
	errs []*FieldError
}

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) positive(key string, d time.Duration) bool {
	if d <= 0 {
		v.add(key, "must be > 0, got %s", d)
		return false
	}
	return true
}

func (v *validator) atLeast(key string, n, minimum int64) {
	if n < minimum {
		v.add(key, "must be >= %d, got %d", minimum, n)
	}
}

func (v *validator) between(key string, n, lo, hi int64) {
	if n < lo || n > hi {
		v.add(key, "must be between %d and %d, got %d", lo, hi, n)
	}
}

func (v *validator) positiveFloat(key string, f float64) {
	if !(f > 0) { // also NaN
		v.add(key, "must be > 0, got %s", fmtFloat(f))
	}
}

func (c *Config) validate() []*FieldError {
	var v validator

	listenOK := v.hostPort("listen", c.Listen)
	if v.hostPort("admin_listen", c.AdminListen) && listenOK && c.AdminListen == c.Listen {
		// Port 0 picks a free port for each: they cannot collide.
		if _, port, _ := net.SplitHostPort(c.Listen); port != "0" {
			v.add("admin_listen", "must differ from listen (%q)", c.Listen)
		}
	}
	v.positive("shutdown_timeout", c.ShutdownTimeout)
	v.atLeast("max_inflight", int64(c.MaxInflight), 1)

	v.positive("server.read_header_timeout", c.Server.ReadHeaderTimeout)
	v.positive("server.idle_timeout", c.Server.IdleTimeout)
	v.between("server.max_header_bytes", int64(c.Server.MaxHeaderBytes), 4<<10, 16<<20)
	v.positive("server.body_read_timeout", c.Server.BodyReadTimeout)
	if c.Server.MaxRequestBodyBytes < 1 {
		v.add("server.max_request_body_bytes", "must be >= 1, got %d", c.Server.MaxRequestBodyBytes)
	} else if c.Server.MaxRequestBodyBytes < c.Retry.MaxBodyBytes {
		v.add("server.max_request_body_bytes", "must be >= retry.max_body_bytes (%d), got %d", c.Retry.MaxBodyBytes, c.Server.MaxRequestBodyBytes)
	}

	v.upstream("upstreams.oapi", c.Upstreams.OAPI)
	v.upstream("upstreams.api", c.Upstreams.API)

	// Never show the secret: say only whether it is set.
	switch {
	case c.App.Key == "" && c.App.Secret != "":
		v.add("app.key", "must be set when app.secret is set")
	case c.App.Key != "" && c.App.Secret == "" && c.App.SecretFile == "":
		v.add("app.secret", "must be set (or app.secret_file) when app.key is set")
	}

	v.positive("token.refresh_before", c.Token.RefreshBefore)
	if p := c.Token.Placeholder; p != "" && !placeholderOK(p) {
		v.add("token.placeholder", "must be printable ASCII without spaces, at most 128 bytes, got %q", p)
	}
	if e := c.Token.Endpoint; e != EndpointOAuth2 && e != EndpointGetToken {
		v.add("token.endpoint", "must be %q or %q, got %q", EndpointOAuth2, EndpointGetToken, e)
	}

	r := c.Retry
	if r.MaxAttempts < 1 || r.MaxAttempts > 10 {
		v.add("retry.max_attempts", "must be between 1 and 10, got %d", r.MaxAttempts)
	}
	if v.positive("retry.per_try_timeout", r.PerTryTimeout) && r.Timeout > 0 && r.PerTryTimeout > r.Timeout {
		v.add("retry.per_try_timeout", "must be <= retry.timeout (%s), got %s", r.Timeout, r.PerTryTimeout)
	}
	v.positive("retry.timeout", r.Timeout)
	v.positive("retry.backoff.base", r.Backoff.Base)
	if v.positive("retry.backoff.max", r.Backoff.Max) && r.Backoff.Base > 0 && r.Backoff.Max < r.Backoff.Base {
		v.add("retry.backoff.max", "must be >= retry.backoff.base (%s), got %s", r.Backoff.Base, r.Backoff.Max)
	}
	v.atLeast("retry.max_body_bytes", r.MaxBodyBytes, 0)
	if r.MaxBufferedBytes < r.MaxBodyBytes {
		v.add("retry.max_buffered_bytes", "must be >= retry.max_body_bytes (%d), got %d", r.MaxBodyBytes, r.MaxBufferedBytes)
	}
	v.between("retry.max_inspect_bytes", int64(r.MaxInspectBytes), 1<<10, 1<<20)
	if f := r.Budget.Ratio; !(f >= 0 && f <= 1) {
		v.add("retry.budget.ratio", "must be between 0 and 1, got %s", fmtFloat(f))
	}
	if f := r.Budget.MinPerSecond; !(f >= 0) {
		v.add("retry.budget.min_per_second", "must be >= 0, got %s", fmtFloat(f))
	}

	v.positiveFloat("pacing.per_api_qps", c.Pacing.PerAPIQPS)
	v.positiveFloat("pacing.global_qps", c.Pacing.GlobalQPS)
	v.between("pacing.robot_per_minute", int64(c.Pacing.RobotPerMinute), 1, 1000)

	b := c.Breaker
	if f := b.FailureRatio; !(f > 0 && f <= 1) {
		v.add("breaker.failure_ratio", "must be > 0 and <= 1, got %s", fmtFloat(f))
	}
	v.atLeast("breaker.min_requests", int64(b.MinRequests), 1)
	v.positive("breaker.window", b.Window)
	v.positive("breaker.open_timeout", b.OpenTimeout)
	v.atLeast("breaker.half_open_requests", int64(b.HalfOpenRequests), 1)
	v.atLeast("breaker.max_routes", int64(b.MaxRoutes), 1)
	v.slowCall("breaker.slow_call", b.SlowCall, r.PerTryTimeout)

	v.routes(c.Routes, r.PerTryTimeout)

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", `must be "debug", "info", "warn" or "error", got %q`, c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		v.add("log.format", `must be "json" or "console", got %q`, c.Log.Format)
	}
	if c.Quota.MonthlyBudget < 0 {
		v.add("quota.monthly_budget", "must be >= 0 (0: no cap), got %d", c.Quota.MonthlyBudget)
	}
	if _, err := time.LoadLocation(c.Quota.Timezone); err != nil || c.Quota.Timezone == "" || c.Quota.Timezone == "Local" {
		v.add("quota.timezone", "must be an IANA time zone such as Asia/Shanghai, got %q", c.Quota.Timezone)
	}
	v.fleet(c.Fleet)
	if c.Outbox.Dir == "" {
		v.add("outbox.dir", "must be set (a directory the proxy may write)")
	}
	v.between("outbox.max_bytes", int64(c.Outbox.MaxBytes), 1<<20, 64<<30)
	return v.errs
}

// hostPort checks a listen address: host:port, the host possibly empty, the
// port a number.
func (v *validator) hostPort(key, addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		v.add(key, "must be host:port, got %q", addr)
		return false
	}
	return true
}

// upstream checks an absolute http(s) URL with nothing after the host but an
// optional "/". A password in the URL is shown as "xxxxx".
func (v *validator) upstream(key, raw string) {
	u, err := url.Parse(raw)
	if err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.User == nil &&
		(u.Path == "" || u.Path == "/") && u.RawPath == "" && u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" {
		return
	}
	shown := raw
	if err == nil && u.User != nil {
		shown = u.Redacted()
	}
	v.add(key, "must be an absolute http or https URL with no path, query or user info, got %q", shown)
}

func (v *validator) routes(routes []Route, perTry time.Duration) {
	seen := make(map[string]int, len(routes))
	for i, r := range routes {
		key := fmt.Sprintf("routes[%d]", i)
		switch first, dup := seen[r.Path]; {
		case !strings.HasPrefix(r.Path, "/"):
			v.add(key+".path", "must start with %q, got %q", "/", r.Path)
		case dup:
			v.add(key+".path", "duplicate of routes[%d].path %q", first, r.Path)
		default:
			seen[r.Path] = i
		}
		if r.Fallback != nil {
			v.fallback(key+".fallback", r.Fallback)
		}
		v.cache(key, r)
		if r.SlowCall != nil {
			v.slowCall(key+".slow_call", *r.SlowCall, perTry)
		}
		if r.Defer != nil {
			v.deferral(key, r)
		}
	}
}

// slowCall checks a slow-call limit: 0 (off), or a positive duration
// under retry.per_try_timeout (perTry), which cuts a slower attempt off as
// a timeout: a limit at or past it would never apply.
func (v *validator) slowCall(key string, d, perTry time.Duration) {
	switch {
	case d < 0:
		v.add(key, "must be >= 0 (0: off), got %s", d)
	case d > 0 && perTry > 0 && d >= perTry:
		v.add(key, "must be < retry.per_try_timeout (%s), which already cuts off a slower attempt as a failure, got %s", perTry, d)
	}
}

// deferral checks routes[i].defer: only a send is kept for later (a read's
// caller needs its answer now), and only the custom robot's messages merge.
func (v *validator) deferral(key string, r Route) {
	d := r.Defer
	if d.MaxAge < time.Second || d.MaxAge > 168*time.Hour {
		v.add(key+".defer.max_age", "must be between 1s and 168h, got %s", d.MaxAge)
	}
	if !strings.HasPrefix(r.Path, "/") {
		return
	}
	ep := dingtalk.Describe(r.Path)
	switch {
	case ep.TokenEndpoint:
		v.add(key+".defer", "not allowed on a token endpoint (%q)", r.Path)
	case r.Idempotent != nil && *r.Idempotent:
		v.add(key+".defer", "allowed only on a route that sends, and %s.idempotent is true", key)
	case r.Idempotent == nil && ep.Read:
		v.add(key+".defer", "allowed only on a route that sends: %q is a read DingTalk's catalogue lists", r.Path)
	}
	if d.Merge && r.Path != dingtalk.PathRobotSend {
		v.add(key+".defer.merge", "allowed only on the custom robot's route %q, got %q", dingtalk.PathRobotSend, r.Path)
	}
}

// cache checks routes[i].cache: a cached answer is served again, so only a
// call that may be repeated can be cached (an explicit idempotent: true,
// or a read DingTalk's catalogue lists).
func (v *validator) cache(key string, r Route) {
	switch {
	case r.Cache < 0:
		v.add(key+".cache", "must be >= 0, got %s", r.Cache)
	case r.Cache > 24*time.Hour:
		v.add(key+".cache", "must be at most 24h, got %s", r.Cache)
	case r.Cache > 0 && r.Idempotent != nil && !*r.Idempotent:
		v.add(key+".cache", "allowed only on an idempotent route, and %s.idempotent is false", key)
	case r.Cache > 0 && r.Idempotent == nil && strings.HasPrefix(r.Path, "/") && !dingtalk.Describe(r.Path).Read:
		v.add(key+".cache", "allowed only on an idempotent route: %q is not a read DingTalk's catalogue lists (set %s.idempotent: true if it is one)", r.Path, key)
	}
}

func (v *validator) fallback(key string, f *Fallback) {
	switch {
	case f.Status == 0 && f.Stale > 0 && len(f.Headers) == 0 && f.Body == "":
		// Only stale: the default answer follows a too-old stale one.
	case f.Status == 0:
		v.add(key+".status", "must be set (100 to 599) unless only fallback.stale is set")
	case f.Status < 100 || f.Status > 599:
		v.add(key+".status", "must be between 100 and 599, got %d", f.Status)
	}
	names := make([]string, 0, len(f.Headers))
	for name := range f.Headers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !isToken(name) {
			v.add(key+".headers", "header name must be a valid HTTP token, got %q", name)
		}
	}
	if f.Stale < 0 {
		v.add(key+".stale", "must be >= 0, got %s", f.Stale)
	}
}

// isToken reports whether s is an RFC 9110 token, as a header name must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// placeholderOK: 1 to 128 bytes of printable ASCII other than space, so it
// can stand in a header and a query as it is.
func placeholderOK(p string) bool {
	if len(p) > 128 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] > '~' {
			return false
		}
	}
	return true
}

// fleet checks the fleet keys. Its messages never hold the URL's password.
func (v *validator) fleet(f Fleet) {
	if raw := f.RedisURL.Reveal(); raw != "" {
		if !strings.Contains(raw, "://") {
			v.add("fleet.redis_url", "%s", noScheme(raw))
		} else if _, err := redisurl.Parse(raw); err != nil {
			// The fleet's own parse: its messages say what is wrong and
			// never quote the URL, which may hold a password.
			v.add("fleet.redis_url", "%s", err)
		}
	}
	if p := f.KeyPrefix; p == "" || len(p) > 64 || strings.ContainsAny(p, " \t\r\n:{}") {
		v.add("fleet.key_prefix", "must be 1 to 64 bytes without spaces, colons or braces, got %q", p)
	}
	if v.positive("fleet.timeout", f.Timeout) && f.Timeout > 5*time.Second {
		v.add("fleet.timeout", "must be at most 5s, got %s", f.Timeout)
	}
}

// noScheme is fleet.redis_url's message for a URL written without its
// scheme (localhost:6379): it shows the value and the URL to write instead,
// each with a password replaced by "xxxxx", or neither when the value does
// not read as host:port even with the scheme (it might be all password).
func noScheme(raw string) string {
	const tail = " (or rediss:// for TLS)"
	u, err := url.Parse("redis://" + raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return "has no scheme: write redis://host:port/0" + tail
	}
	shown := strings.TrimPrefix(u.Redacted(), "redis://")
	if u.Path == "" {
		u.Path = "/0"
	}
	return fmt.Sprintf("%q has no scheme: write %s%s", shown, u.Redacted(), tail)
}
