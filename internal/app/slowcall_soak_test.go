//go:build soak

package app_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingproxy/dingproxy/internal/breaker"
	"github.com/dingproxy/dingproxy/internal/dingtalktest"
	"github.com/dingproxy/dingproxy/internal/proxy"
)

// TestSlowAPIOpensLikeAFailingOne is the slow-call promise on the wall
// clock: an API that answers every call well but in 1.5 s, under
// breaker.slow_call 500ms, 60 calls at 5/s, open loop (each call in its own
// goroutine at its time, whatever the others are doing; at most the 60 of
// them). DingTalk serves at most 25 of the calls, and at least 30 are
// answered within 100 ms with the fallback mark. Every call DingTalk
// served gets its real answer.
//
// The breaker opens once min_requests (10 here) slow calls have ended,
// 1.5 s after the tenth began: by then about 7 more are in flight, and
// those are answered by DingTalk too (slowly). With the default
// min_requests of 20, the count would pass 25.
func TestSlowAPIOpensLikeAFailingOne(t *testing.T) {
	const (
		latency     = 1500 * time.Millisecond
		slowCall    = 500 * time.Millisecond
		calls       = 60
		rate        = 5 // calls per second
		minRequests = 10
		maxServed   = 25
		minQuick    = 30
		quick       = 100 * time.Millisecond
	)
	s := newStack(t, nil, breakerSettings(minRequests, time.Minute), withSlowCall(slowCall))
	slowOn(s.fake, dingtalktest.PathUserGet, latency)

	type result struct {
		at       time.Duration // since the run began
		took     time.Duration
		status   int
		fallback string
		user     string // DingTalk's answer's user id
		err      error
	}
	results := make([]result, calls)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range calls {
		time.Sleep(time.Until(begin.Add(time.Duration(i) * time.Second / rate))) // the schedule, not synchronisation
		wg.Go(func() {
			r := &results[i]
			start := time.Now()
			r.at = start.Sub(begin)
			req, err := http.NewRequest(http.MethodPost, s.proxy.URL+dingtalktest.PathUserGet, strings.NewReader(fmt.Sprintf(`{"userid":"u%d"}`, i)))
			if err != nil {
				r.err = err
				return
			}
			resp, err := s.client.Do(req)
			if err != nil {
				r.err = err
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.took, r.status, r.fallback, r.err = time.Since(start), resp.StatusCode, resp.Header.Get(proxy.HeaderFallback), err
			r.user = userOf(body)
		})
	}
	wg.Wait()
	run := time.Since(begin)

	served := s.fake.Hits(dingtalktest.PathUserGet)
	var answered, quickFallbacks, fallbacks int
	var firstFallback time.Duration = -1
	var fallbackTimes, answerTimes []time.Duration
	for i, r := range results {
		switch {
		case r.err != nil:
			t.Errorf("call %d: %v", i, r.err)
		case r.fallback == "":
			answered++
			answerTimes = append(answerTimes, r.took)
			if r.status != 200 || r.user != fmt.Sprintf("u%d", i) {
				t.Errorf("call %d (at %v) was served by DingTalk but got %d, user %q: want DingTalk's answer for u%d", i, r.at, r.status, r.user, i)
			}
		default:
			fallbacks++
			fallbackTimes = append(fallbackTimes, r.took)
			if r.fallback != breaker.KindCircuitOpen || r.status != http.StatusServiceUnavailable {
				t.Errorf("call %d: fallback %q, status %d; want %s, 503", i, r.fallback, r.status, breaker.KindCircuitOpen)
			}
			if r.took <= quick {
				quickFallbacks++
			}
			if firstFallback < 0 || r.at < firstFallback {
				firstFallback = r.at
			}
		}
	}
	slices.Sort(fallbackTimes)
	slices.Sort(answerTimes)
	pct := func(d []time.Duration, p float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(p*float64(len(d))))]
	}
	t.Logf("%d calls at %d/s over %v; DingTalk answers in %v, slow_call %v, min_requests %d", calls, rate, run.Round(time.Millisecond), latency, slowCall, minRequests)
	t.Logf("DingTalk served %d (want <= %d); answered by DingTalk %d (p50 %v, max %v)",
		served, maxServed, answered, pct(answerTimes, 0.5).Round(time.Millisecond), pct(answerTimes, 1).Round(time.Millisecond))
	t.Logf("fallbacks %d, within %v %d (want >= %d); fallback p50 %v, p99 %v, max %v; first fallback at +%v",
		fallbacks, quick, quickFallbacks, minQuick, pct(fallbackTimes, 0.5), pct(fallbackTimes, 0.99), pct(fallbackTimes, 1), firstFallback.Round(time.Millisecond))
	if served != answered {
		t.Errorf("DingTalk got %d calls, and %d clients got its answer: want every call it served answered", served, answered)
	}
	if served > maxServed {
		t.Errorf("DingTalk served %d of %d calls, want at most %d", served, calls, maxServed)
	}
	if quickFallbacks < minQuick {
		t.Errorf("%d calls answered within %v with the fallback mark, want at least %d", quickFallbacks, quick, minQuick)
	}
}
