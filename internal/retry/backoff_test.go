package retry_test

import (
	"math"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dingproxy/dingproxy/internal/call"
	"github.com/dingproxy/dingproxy/internal/retry"
)

// TestBackoff: full jitter, uniform in [0, min(max, base·2^(n-1))]. Many
// draws per n check the bounds, and that the ceiling really grows (a draw
// above half of it is all but certain in 2000 tries).
func TestBackoff(t *testing.T) {
	t.Parallel()
	const base, max = 100 * time.Millisecond, 5 * time.Second
	tests := []struct {
		n    int
		ceil time.Duration
	}{
		{1, base},
		{2, 2 * base},
		{3, 4 * base},
		{4, 8 * base},
		{6, 32 * base},
		{7, max}, // 6.4 s, capped
		{10, max},
		{64, max}, // base·2^63 overflows: still max
		{1000, max},
	}
	for _, tt := range tests {
		var top time.Duration
		for range 2000 {
			d := retry.Backoff(base, max, tt.n)
			if d < 0 || d > tt.ceil {
				t.Fatalf("Backoff(%v, %v, %d) = %v, want in [0, %v]", base, max, tt.n, d, tt.ceil)
			}
			top = maxDur(top, d)
		}
		if top <= tt.ceil/2 {
			t.Errorf("Backoff(%v, %v, %d): largest of 2000 draws %v, want some above %v", base, max, tt.n, top, tt.ceil/2)
		}
	}
	if d := retry.Backoff(0, max, 3); d != 0 {
		t.Errorf("Backoff(0, %v, 3) = %v, want 0", max, d)
	}
	// A base above max is capped too.
	for range 100 {
		if d := retry.Backoff(2*time.Second, time.Second, 1); d > time.Second {
			t.Fatalf("Backoff(2s, 1s, 1) = %v, want <= 1s", d)
		}
	}
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

var chinaTime = time.FixedZone("UTC+8", 8*60*60)

// TestThrottleWait: a throttled attempt is retried, even when not
// idempotent, after at least the throttle penalty (or until the end of a
// 90002 penalty DingTalk named, or Retry-After), plus at most one base of
// jitter; Retry-After is a floor for every wait. The penalty is pacing's
// to keep: the loop runs over a pacer, as in the proxy.
func TestThrottleWait(t *testing.T) {
	const base = 100 * time.Millisecond
	// throttle answers with status and body; the next attempt may come min
	// after it at the earliest.
	throttle := func(status int, body string, min time.Duration, header ...string) func(req *http.Request) (*http.Response, time.Time) {
		return func(req *http.Request) (*http.Response, time.Time) {
			resp, _ := jsonAnswer(req, status, body)
			for i := 0; i+1 < len(header); i += 2 {
				resp.Header.Set(header[i], header[i+1])
			}
			return resp, time.Now().Add(min)
		}
	}
	// penaltyEnd answers 90002 (top level or in an 88) with a penalty
	// ending in, DingTalk's whole seconds in UTC+8.
	penaltyEnd := func(gateway bool, in time.Duration) func(req *http.Request) (*http.Response, time.Time) {
		return func(req *http.Request) (*http.Response, time.Time) {
			end := time.Now().Add(in).Truncate(time.Second)
			code := `"errcode":90002`
			if gateway {
				code = `"errcode":88,"sub_code":"90002"`
			}
			resp, _ := jsonAnswer(req, 200, `{`+code+`,"errmsg":"接口调用过于频繁，处罚将在 `+end.In(chinaTime).Format(time.DateTime)+` 结束"}`)
			return resp, later(end, time.Now().Add(penalty))
		}
	}
	tests := []struct {
		name       string
		idempotent bool
		answer     func(req *http.Request) (resp *http.Response, earliest time.Time)
	}{
		{"oapi 90018", false, throttle(200, `{"errcode":90018,"errmsg":"qps"}`, penalty)},
		{"88 + 90018", false, throttle(200, `{"errcode":88,"sub_code":"90018","errmsg":"qps"}`, penalty)},
		{"HTTP 429", false, throttle(429, `{}`, penalty)},
		{"api QpsLimit", false, throttle(403, `{"code":"Forbidden.AccessDenied.QpsLimitForApi","message":"qps"}`, penalty)},
		{"90002 with a penalty end", false, penaltyEnd(false, 5*time.Second)},
		{"88 + 90002 with a penalty end", false, penaltyEnd(true, 3*time.Second)},
		{"90002 with a past penalty end", false, penaltyEnd(false, -time.Hour)},
		{"429 with Retry-After seconds", false, throttle(429, `{}`, 3*time.Second, "Retry-After", "3")},
		{"429 with a short Retry-After", false, throttle(429, `{}`, penalty, "Retry-After", "0")},
		{"503 with Retry-After seconds", true, throttle(503, `{"errcode":-1,"errmsg":"busy"}`, 3*time.Second, "Retry-After", "3")},
		{"503 with Retry-After date", true, func(req *http.Request) (*http.Response, time.Time) {
			date := time.Now().Add(4 * time.Second).Truncate(time.Second)
			resp, _ := throttle(503, `{"errcode":-1,"errmsg":"busy"}`, 0, "Retry-After", date.UTC().Format(http.TimeFormat))(req)
			return resp, date
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				// Jitter is random: repeat to see several draws.
				for range 10 {
					var up upstream
					var earliest []time.Time
					p := basePolicy()
					p.MaxAttempts = 4
					p.BackoffBase, p.BackoffMax = base, 10*base
					tr := newTransport(up.rt(func(n int, req *http.Request) (*http.Response, error) {
						wroteHeaders(req)
						if n < 3 {
							resp, e := tt.answer(req)
							earliest = append(earliest, e)
							return resp, nil
						}
						return ok(req)
					}), p)
					tr.Pacer = fastPacer()
					tc := newCall(tt.idempotent)
					resp, err := do(tr, newRequest(t, t.Context(), http.MethodPost, tc, nil))
					if err != nil {
						t.Fatalf("RoundTrip: %v", err)
					}
					readAll(t, resp)
					if tc.Attempts != 3 || tc.Outcome != call.Success {
						t.Fatalf("Attempts = %d, Outcome = %s, want 3, success", tc.Attempts, tc.Outcome)
					}
					for i, e := range earliest {
						// At most one base of jitter for a throttle; retry
						// n's own backoff ceiling, base·2^(n-1), otherwise.
						got, late := up.times[i+1], e.Add(base<<i)
						if got.Before(e) || got.After(late) {
							t.Fatalf("attempt %d came %v after attempt %d, want between %v and %v", i+2, got.Sub(up.times[i]), i+1, e.Sub(up.times[i]), late.Sub(up.times[i]))
						}
					}
				}
			})
		})
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// TestRetryAfter reads Retry-After as delay-seconds or an HTTP date.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		value string // "" leaves the header out
		want  time.Duration
	}{
		{"none", "", 0},
		{"zero", "0", 0},
		{"seconds", "5", 5 * time.Second},
		{"minutes of seconds", "120", 2 * time.Minute},
		{"negative", "-1", 0},
		{"fraction", "1.5", 0},
		{"garbage", "soon", 0},
		{"IMF-fixdate", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"RFC 850 date", now.Add(time.Hour).Format(time.RFC850), time.Hour},
		{"ANSI C date", now.Add(30 * time.Second).Format(time.ANSIC), 30 * time.Second},
		{"date now", now.Format(http.TimeFormat), 0},
		{"past date", now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"date not in GMT", "Wed, 01 May 2024 12:00:10 +0800", 0},
		{"largest seconds", "9223372036", 9223372036 * time.Second},
		// Beyond what a Duration holds: as long as can be, not a wrapped
		// small (or negative) number.
		{"seconds overflowing a Duration", "18446744074", math.MaxInt64},
		{"seconds overflowing int64", "99999999999999999999", math.MaxInt64},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.value != "" {
			h.Set("Retry-After", tt.value)
		}
		if got := retry.RetryAfter(h, now); got != tt.want {
			t.Errorf("%s: RetryAfter(%q) = %v, want %v", tt.name, tt.value, got, tt.want)
		}
	}
}
