package retry

import (
	"errors"
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
// A throttle waits at least the penalty (or until DingTalk's stated end of it),
// plus up to one base of jitter so that throttled callers do not return in
// step; Retry-After, when the answer has one, is a floor for every wait.
func (p *Policy) wait(o Outcome, n int, penaltyEnd time.Time, retryAfter time.Duration, now time.Time) time.Duration {
	d := Backoff(p.BackoffBase, p.BackoffMax, n)
	if o == Throttled {
		floor := p.ThrottlePenalty
		if until := penaltyEnd.Sub(now); until > floor {
			floor = until
		}
		d = floor + Backoff(p.BackoffBase, p.BackoffBase, 1)
	}
	if o == TokenInvalid {
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
