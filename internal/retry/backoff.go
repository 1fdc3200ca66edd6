package retry

import (
	"errors"

	"github.com/dingproxy/dingproxy/internal/call"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Backoff returns the full-jitter wait before retry number n (1 for the first
// retry): uniform in [0, min(max, base·2^(n-1))].
func Backoff(base, max time.Duration, n int) time.Duration {
	if base <= 0 {
		return 0
	}
	ceil := base
	for i := 1; i < n && ceil < max; i++ {
		ceil *= 2
	}
	if max > 0 && ceil > max {
		ceil = max
	}
	return rand.N(ceil + 1)
}

// wait is the time to wait before retrying an attempt that came to o.
// A throttle waits up to one base of jitter, so that throttled callers do
// not return in step: DingTalk's penalty itself is pacing's to keep (the
// throttled API is blocked until it ends, and the retry's turn comes after
// it). Retry-After, when the answer has one, is a floor for every wait.
func (p *Policy) wait(o call.Outcome, n int, retryAfter time.Duration) time.Duration {
	d := Backoff(p.BackoffBase, p.BackoffMax, n)
	if o == call.Throttled {
		d = Backoff(p.BackoffBase, p.BackoffBase, 1)
	}
	if o == call.TokenInvalid {
		d = 0
	}
	if retryAfter > d {
		d = retryAfter
	}
	return d
}

// RetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// It returns 0 when there is none or it cannot be read.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	// A number too large for a Duration saturates: it must not wrap into a
	// short wait, nor be ignored.
	if s, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case s < 0:
			return 0
		case s > int64(math.MaxInt64/time.Second):
			return math.MaxInt64
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
