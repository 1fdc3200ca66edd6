package token

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var errBoom = errors.New("boom")

// fakeFetcher is a scripted Fetcher. Every call records when it started and
// asks script for its result; n counts calls from 1.
type fakeFetcher struct {
	mu     sync.Mutex
	starts []time.Time
	script func(ctx context.Context, n int) (string, time.Duration, error)
}

func (f *fakeFetcher) Fetch(ctx context.Context) (string, time.Duration, error) {
	f.mu.Lock()
	f.starts = append(f.starts, time.Now())
	n := len(f.starts)
	f.mu.Unlock()
	return f.script(ctx, n)
}

func (f *fakeFetcher) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.starts)
}

// offsets returns the start of every call relative to t0.
func (f *fakeFetcher) offsets(t0 time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var d []time.Duration
	for _, s := range f.starts {
		d = append(d, s.Sub(t0))
	}
	return d
}

func tokN(n int) string { return fmt.Sprintf("tok-%d", n) }

// instant answers at once with tok-n and ttl.
func instant(ttl time.Duration) *fakeFetcher {
	return &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
		return tokN(n), ttl, nil
	}}
}

// gated answers when the test sends on release (nil: tok-n, else that
// error), or fails with ctx's error when ctx ends first.
func gated(ttl time.Duration, release chan error) *fakeFetcher {
	return &fakeFetcher{script: func(ctx context.Context, n int) (string, time.Duration, error) {
		select {
		case err := <-release:
			if err != nil {
				return "", 0, err
			}
			return tokN(n), ttl, nil
		case <-ctx.Done():
			return "", 0, ctx.Err()
		}
	}}
}

// startRun runs s.Run in the bubble; the returned func stops Run, waits for
// it to return and closes s.
func startRun(s *Source) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.Run(ctx)
		close(done)
	}()
	return func() {
		cancel()
		<-done
		s.Close()
	}
}

// sleepUntil advances the bubble's clock to t and lets every goroutine
// settle.
func sleepUntil(t time.Time) {
	time.Sleep(time.Until(t))
	synctest.Wait()
}

type result struct {
	tok string
	err error
}

// tokenAsync calls s.Token(ctx) in a goroutine and delivers the result.
func tokenAsync(ctx context.Context, s *Source) <-chan result {
	ch := make(chan result, 1)
	go func() {
		tok, err := s.Token(ctx)
		ch <- result{tok, err}
	}()
	return ch
}

func TestTokenConcurrentCallersOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan error)
		f := gated(time.Hour, release)
		s := NewSource(FetcherFunc(f.Fetch), Options{})
		defer s.Close()

		const callers = 200
		results := make(chan result, callers)
		for range callers {
			go func() {
				tok, err := s.Token(context.Background())
				results <- result{tok, err}
			}()
		}
		synctest.Wait() // all 200 are now waiting
		if got := f.calls(); got != 1 {
			t.Fatalf("fetches while %d callers wait = %d, want 1", callers, got)
		}
		if len(results) != 0 {
			t.Fatalf("%d callers returned before the fetch ended", len(results))
		}
		release <- nil
		for range callers {
			r := <-results
			if r.err != nil || r.tok != "tok-1" {
				t.Errorf("Token() = %q, %v, want %q, nil", r.tok, r.err, "tok-1")
			}
		}
		if got := f.calls(); got != 1 {
			t.Errorf("fetches = %d, want 1", got)
		}
		// Later callers are served from the cache.
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
			t.Errorf("Token() = %q, %v, want %q, nil", tok, err, "tok-1")
		}
		if got := s.State().Fetches; got != 1 {
			t.Errorf("State().Fetches = %d, want 1", got)
		}
	})
}

func TestTokenDuringRefreshReturnsCurrentToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		release := make(chan error)
		f := &fakeFetcher{script: func(ctx context.Context, n int) (string, time.Duration, error) {
			if n == 1 {
				return tokN(n), 2 * time.Hour, nil
			}
			return gated(2*time.Hour, release).script(ctx, n)
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Minute})
		stop := startRun(s)
		defer stop()

		synctest.Wait()
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
			t.Fatalf("Token() = %q, %v, want %q, nil", tok, err, "tok-1")
		}
		sleepUntil(t0.Add(110*time.Minute + time.Second))
		if got := f.calls(); got != 2 {
			t.Fatalf("fetches after the refresh time = %d, want 2", got)
		}
		// The refresh is in flight (blocked on release): callers must not wait.
		before := time.Now()
		ch := tokenAsync(context.Background(), s)
		synctest.Wait()
		select {
		case r := <-ch:
			if r.err != nil || r.tok != "tok-1" {
				t.Errorf("Token() during refresh = %q, %v, want %q, nil", r.tok, r.err, "tok-1")
			}
		default:
			t.Fatal("Token() waited for the background refresh although a valid token is held")
		}
		if d := time.Since(before); d != 0 {
			t.Errorf("Token() during refresh took %v of fake time, want 0", d)
		}
		if tok, _ := s.Peek(); tok != "tok-1" {
			t.Errorf("Peek() during refresh = %q, want %q", tok, "tok-1")
		}
		release <- nil
		synctest.Wait()
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-2" {
			t.Errorf("Token() after refresh = %q, %v, want %q, nil", tok, err, "tok-2")
		}
		if got := f.calls(); got != 2 {
			t.Errorf("fetches = %d, want 2", got)
		}
	})
}

func TestRunRefreshSchedule(t *testing.T) {
	tests := []struct {
		name          string
		ttl           time.Duration
		refreshBefore time.Duration
		wantEvery     time.Duration
	}{
		{name: "default 10m before 2h", ttl: 2 * time.Hour, refreshBefore: 10 * time.Minute, wantEvery: 110 * time.Minute},
		{name: "just shorter than lifetime", ttl: time.Hour, refreshBefore: 59 * time.Minute, wantEvery: time.Minute},
		{name: "zero: at expiry", ttl: time.Hour, refreshBefore: 0, wantEvery: time.Hour},
		{name: "equal to lifetime: half", ttl: 10 * time.Minute, refreshBefore: 10 * time.Minute, wantEvery: 5 * time.Minute},
		{name: "longer than lifetime: half", ttl: 10 * time.Minute, refreshBefore: time.Hour, wantEvery: 5 * time.Minute},
		{name: "tiny lifetime: half, no tight loop", ttl: 4 * time.Second, refreshBefore: 10 * time.Minute, wantEvery: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := instant(tt.ttl)
				s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: tt.refreshBefore})
				stop := startRun(s)
				defer stop()

				synctest.Wait()
				if got := f.calls(); got != 1 {
					t.Fatalf("fetches at start = %d, want 1", got)
				}
				// Not a moment before expiry-RefreshBefore ...
				sleepUntil(t0.Add(tt.wantEvery - time.Nanosecond))
				if got := f.calls(); got != 1 {
					t.Fatalf("fetches %v after start = %d, want 1 (refreshed too early)", tt.wantEvery-time.Nanosecond, got)
				}
				// ... but right at it.
				sleepUntil(t0.Add(tt.wantEvery))
				if got := f.calls(); got != 2 {
					t.Fatalf("fetches %v after start = %d, want 2", tt.wantEvery, got)
				}
				if tok, err := s.Token(context.Background()); err != nil || tok != "tok-2" {
					t.Errorf("Token() = %q, %v, want %q, nil", tok, err, "tok-2")
				}
				// And so on, on the same schedule, without a tight loop.
				const n = 10
				sleepUntil(t0.Add(n * tt.wantEvery))
				var want []time.Duration
				for i := range n + 1 {
					want = append(want, time.Duration(i)*tt.wantEvery)
				}
				if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
					t.Errorf("fetch starts (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestRunFollowsFetchOutsideRun(t *testing.T) {
	// A token fetched by a Token caller (after Invalidate) moves Run's
	// schedule, also to an earlier time than the old token's.
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if n == 1 {
				return tokN(n), 2 * time.Hour, nil // refresh due at 110m
			}
			return tokN(n), 30 * time.Minute, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Minute})
		stop := startRun(s)
		defer stop()

		sleepUntil(t0.Add(20 * time.Minute))
		if !s.Invalidate("tok-1") {
			t.Fatal(`Invalidate("tok-1") = false, want true`)
		}
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-2" {
			t.Fatalf("Token() = %q, %v, want %q, nil", tok, err, "tok-2")
		}
		// tok-2 expires at 50m: its refresh is due at 40m, not at tok-1's 110m.
		sleepUntil(t0.Add(40*time.Minute - time.Nanosecond))
		if got := f.calls(); got != 2 {
			t.Errorf("fetches before tok-2's refresh time = %d, want 2", got)
		}
		sleepUntil(t0.Add(60 * time.Minute))
		want := []time.Duration{0, 20 * time.Minute, 40 * time.Minute, 60 * time.Minute}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-4" {
			t.Errorf("Token() = %q, %v, want %q, nil", tok, err, "tok-4")
		}
	})
}

func TestInvalidate(t *testing.T) {
	t.Run("burst of callers causes one fetch", func(t *testing.T) {
		for _, after := range []time.Duration{0, time.Hour / 2} {
			t.Run(fmt.Sprint("after ", after), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					f := instant(time.Hour)
					s := NewSource(FetcherFunc(f.Fetch), Options{})
					defer s.Close()
					old, err := s.Token(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					time.Sleep(after)

					const callers = 100
					type out struct {
						dropped bool
						result
					}
					outs := make(chan out, callers)
					for range callers {
						go func() {
							dropped := s.Invalidate(old)
							tok, err := s.Token(context.Background())
							outs <- out{dropped, result{tok, err}}
						}()
					}
					dropped := 0
					for range callers {
						o := <-outs
						if o.dropped {
							dropped++
						}
						if o.err != nil || o.tok != "tok-2" {
							t.Errorf("Token() after Invalidate = %q, %v, want %q, nil", o.tok, o.err, "tok-2")
						}
					}
					if dropped != 1 {
						t.Errorf("Invalidate(old) returned true %d times, want 1", dropped)
					}
					if got := f.calls(); got != 2 {
						t.Errorf("fetches = %d, want 2 (one new fetch for the burst)", got)
					}
				})
			})
		}
	})

	t.Run("stale token is a no-op", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := instant(time.Hour)
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			defer s.Close()
			if s.Invalidate("") || s.Invalidate("tok-1") {
				t.Error("Invalidate on an empty source = true, want false")
			}
			if _, err := s.Token(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !s.Invalidate("tok-1") {
				t.Fatal(`Invalidate("tok-1") = false, want true`)
			}
			if tok, _ := s.Peek(); tok != "" {
				t.Errorf("Peek() after Invalidate = %q, want none", tok)
			}
			if tok, err := s.Token(context.Background()); err != nil || tok != "tok-2" {
				t.Fatalf("Token() = %q, %v, want %q, nil", tok, err, "tok-2")
			}
			for _, stale := range []string{"tok-1", "", "tok-other"} {
				if s.Invalidate(stale) {
					t.Errorf("Invalidate(%q) = true, want false", stale)
				}
			}
			if tok, _ := s.Peek(); tok != "tok-2" {
				t.Errorf("Peek() = %q, want %q", tok, "tok-2")
			}
			if tok, err := s.Token(context.Background()); err != nil || tok != "tok-2" {
				t.Errorf("Token() = %q, %v, want %q, nil", tok, err, "tok-2")
			}
			if got := f.calls(); got != 2 {
				t.Errorf("fetches = %d, want 2", got)
			}
		})
	})

	t.Run("during a refresh in flight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := time.Now()
			release := make(chan error)
			f := &fakeFetcher{script: func(ctx context.Context, n int) (string, time.Duration, error) {
				if n == 1 {
					return tokN(n), time.Hour, nil
				}
				return gated(time.Hour, release).script(ctx, n)
			}}
			s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Minute})
			stop := startRun(s)
			defer stop()
			sleepUntil(t0.Add(50 * time.Minute))
			if got := f.calls(); got != 2 {
				t.Fatalf("fetches = %d, want 2 (refresh in flight)", got)
			}
			if !s.Invalidate("tok-1") {
				t.Fatal(`Invalidate("tok-1") = false, want true`)
			}
			chs := []<-chan result{tokenAsync(context.Background(), s), tokenAsync(context.Background(), s)}
			synctest.Wait()
			if got := f.calls(); got != 2 {
				t.Errorf("fetches after Invalidate during refresh = %d, want 2 (callers join it)", got)
			}
			release <- nil
			for _, ch := range chs {
				if r := <-ch; r.err != nil || r.tok != "tok-2" {
					t.Errorf("Token() = %q, %v, want %q, nil", r.tok, r.err, "tok-2")
				}
			}
		})
	})
}

func TestBackoffTokenCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &fakeFetcher{script: func(context.Context, int) (string, time.Duration, error) {
			return "", 0, errBoom
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{})
		defer s.Close()
		// Every call here must fail at once; the deadline only keeps a
		// broken Source from waiting forever.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()

		_, err := s.Token(ctx)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
			t.Fatalf("Token() error = %v, want one wrapping ErrUnavailable and %v", err, errBoom)
		}
		// Each backoff is twice the last; Token calls inside it fail at once
		// without a fetch, the first call after it fetches.
		at := time.Duration(0)
		for i, back := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
			for _, d := range []time.Duration{0, back / 2, back - time.Nanosecond} {
				sleepUntil(t0.Add(at + d))
				before := time.Now()
				_, err := s.Token(ctx)
				if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
					t.Errorf("Token() %v into backoff %d = %v, want ErrUnavailable", d, i, err)
				}
				if time.Since(before) != 0 {
					t.Errorf("Token() %v into backoff %d waited", d, i)
				}
				if got := f.calls(); got != i+1 {
					t.Fatalf("fetches %v into backoff %d = %d, want %d", d, i, got, i+1)
				}
			}
			at += back
			sleepUntil(t0.Add(at))
			if _, err := s.Token(ctx); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Token() after backoff %d = %v, want ErrUnavailable", i, err)
			}
			if got := f.calls(); got != i+2 {
				t.Fatalf("fetches after backoff %d = %d, want %d", i, got, i+2)
			}
		}
		want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second, 15 * time.Second}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
	})
}

func TestBackoffRunAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		const failures = 8
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if n <= failures {
				return "", 0, fmt.Errorf("attempt %d: %w", n, errBoom)
			}
			return tokN(n), time.Hour, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Minute})
		stop := startRun(s)
		defer stop()

		// Inside the 30 s cap, between the 8th failure (91 s) and the 9th start (121 s).
		sleepUntil(t0.Add(100 * time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		before := time.Now()
		_, err := s.Token(ctx)
		if time.Since(before) != 0 {
			t.Error("Token() during backoff waited")
		}
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
			t.Errorf("Token() during backoff = %v, want one wrapping ErrUnavailable and %v", err, errBoom)
		}
		if got := f.calls(); got != failures {
			t.Errorf("fetches during backoff = %d, want %d", got, failures)
		}
		st := s.State()
		if st.Held || !strings.Contains(st.LastError, "attempt 8: boom") {
			t.Errorf("State() during backoff = %+v, want not held, LastError of attempt 8", st)
		}

		sleepUntil(t0.Add(121 * time.Second))
		if tok, err := s.Token(context.Background()); err != nil || tok != tokN(failures+1) {
			t.Errorf("Token() after recovery = %q, %v, want %q, nil", tok, err, tokN(failures+1))
		}
		want := []time.Duration{0, 1, 3, 7, 15, 31, 61, 91, 121}
		for i := range want {
			want[i] *= time.Second
		}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
		st = s.State()
		if !st.Held || st.LastError != "" || st.Fetches != failures+1 {
			t.Errorf("State() after recovery = %+v, want held, no error, %d fetches", st, failures+1)
		}
		// A failure after a success starts the backoff over at MinInterval:
		// the refresh of tok-9 is due at 121 s + 50 m.
		sleepUntil(t0.Add(121*time.Second + 50*time.Minute))
		if got := f.calls(); got != failures+2 {
			t.Errorf("fetches after recovery = %d, want %d", got, failures+2)
		}
	})
}

func TestBackoffOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []time.Duration // fetch starts in the first 30 s, in seconds
	}{
		{name: "defaults", opts: Options{}, want: []time.Duration{0, 1, 3, 7, 15}},
		{name: "min 2s max 5s", opts: Options{MinInterval: 2 * time.Second, MaxBackoff: 5 * time.Second}, want: []time.Duration{0, 2, 6, 11, 16, 21, 26}},
		// MinInterval wins over a smaller MaxBackoff: never more than one start per MinInterval.
		{name: "max below min", opts: Options{MinInterval: time.Second, MaxBackoff: 100 * time.Millisecond}, want: []time.Duration{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				f := &fakeFetcher{script: func(context.Context, int) (string, time.Duration, error) {
					return "", 0, errBoom
				}}
				s := NewSource(FetcherFunc(f.Fetch), tt.opts)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second-time.Nanosecond)
				defer cancel()
				s.Run(ctx)
				s.Close()
				want := append([]time.Duration(nil), tt.want...)
				for i := range want {
					want[i] *= time.Second
				}
				got := f.offsets(t0)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("fetch starts (-want +got):\n%s", diff)
				}
				minInterval := tt.opts.MinInterval
				if minInterval == 0 {
					minInterval = time.Second
				}
				for i := 1; i < len(got); i++ {
					if d := got[i] - got[i-1]; d < minInterval {
						t.Errorf("fetch %d started %v after the previous one, want at least %v", i+1, d, minInterval)
						break
					}
				}
			})
		})
	}
}

func TestFailedRefreshKeepsToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if n == 2 || n == 3 {
				return "", 0, errBoom
			}
			return tokN(n), time.Hour, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Minute})
		stop := startRun(s)
		defer stop()

		sleepUntil(t0.Add(50 * time.Minute)) // refresh fails
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
			t.Errorf("Token() after a failed refresh = %q, %v, want %q, nil", tok, err, "tok-1")
		}
		st := s.State()
		if !st.Held || !st.ExpiresAt.Equal(t0.Add(time.Hour)) || !strings.Contains(st.LastError, "boom") {
			t.Errorf("State() after a failed refresh = %+v, want held until %v with LastError boom", st, t0.Add(time.Hour))
		}
		sleepUntil(t0.Add(50*time.Minute + 3*time.Second)) // retries at +1 s (fails), +3 s (succeeds)
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-4" {
			t.Errorf("Token() after recovery = %q, %v, want %q, nil", tok, err, "tok-4")
		}
		want := []time.Duration{0, 50 * time.Minute, 50*time.Minute + time.Second, 50*time.Minute + 3*time.Second}
		if diff := cmp.Diff(want, f.offsets(t0)); diff != "" {
			t.Errorf("fetch starts (-want +got):\n%s", diff)
		}
		if st := s.State(); st.LastError != "" {
			t.Errorf("State().LastError after recovery = %q, want none", st.LastError)
		}
	})
}

func TestTokenExpiredWhileRefreshFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if n > 1 {
				return "", 0, errBoom
			}
			return tokN(n), time.Minute, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{RefreshBefore: 10 * time.Second, MaxBackoff: 16 * time.Second})
		stop := startRun(s)
		defer stop()

		// Refresh at 50 s, retries at 51, 53, 57, 65 s; the token expires at 60 s.
		sleepUntil(t0.Add(time.Minute - time.Nanosecond))
		if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
			t.Errorf("Token() before expiry = %q, %v, want %q, nil", tok, err, "tok-1")
		}
		sleepUntil(t0.Add(time.Minute))
		calls := f.calls()
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		_, err := s.Token(ctx)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
			t.Errorf("Token() after expiry = %v, want one wrapping ErrUnavailable and %v", err, errBoom)
		}
		if got := f.calls(); got != calls {
			t.Errorf("Token() during backoff fetched: %d fetches, want %d", got, calls)
		}
		if tok, _ := s.Peek(); tok != "" {
			t.Errorf("Peek() after expiry = %q, want none", tok)
		}
		if st := s.State(); st.Held {
			t.Errorf("State().Held after expiry = true, want false")
		}
	})
}

func TestTokenContext(t *testing.T) {
	t.Run("cancel while waiting for a fetch", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			release := make(chan error)
			f := gated(time.Hour, release)
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			defer s.Close()

			ctx, cancel := context.WithCancel(context.Background())
			ch := tokenAsync(ctx, s)
			synctest.Wait()
			select {
			case r := <-ch:
				t.Fatalf("Token() = %q, %v before the fetch ended", r.tok, r.err)
			default:
			}
			before := time.Now()
			cancel()
			r := <-ch
			if !errors.Is(r.err, context.Canceled) || r.tok != "" {
				t.Errorf("Token() after cancel = %q, %v, want context.Canceled", r.tok, r.err)
			}
			if time.Since(before) != 0 {
				t.Error("Token() did not return at once on cancel")
			}
			// The fetch is not tied to the caller that started it.
			release <- nil
			if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
				t.Errorf("Token() = %q, %v, want %q, nil", tok, err, "tok-1")
			}
			if got := f.calls(); got != 1 {
				t.Errorf("fetches = %d, want 1", got)
			}
		})
	})

	t.Run("deadline while waiting for a fetch", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := time.Now()
			f := gated(time.Hour, make(chan error))
			s := NewSource(FetcherFunc(f.Fetch), Options{FetchTimeout: time.Minute})
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := s.Token(ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Token() = %v, want context.DeadlineExceeded", err)
			}
			if d := time.Since(t0); d != 3*time.Second {
				t.Errorf("Token() returned after %v, want 3s", d)
			}
		})
	})

	t.Run("cancel while waiting for MinInterval", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := instant(time.Hour)
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			defer s.Close()
			if _, err := s.Token(context.Background()); err != nil {
				t.Fatal(err)
			}
			s.Invalidate("tok-1") // the next fetch may start only 1 s after the first
			ctx, cancel := context.WithCancel(context.Background())
			ch := tokenAsync(ctx, s)
			synctest.Wait()
			if len(ch) != 0 {
				t.Fatal("Token() returned before MinInterval passed")
			}
			before := time.Now()
			cancel()
			if r := <-ch; !errors.Is(r.err, context.Canceled) {
				t.Errorf("Token() after cancel = %q, %v, want context.Canceled", r.tok, r.err)
			}
			if time.Since(before) != 0 {
				t.Error("Token() did not return at once on cancel")
			}
			if got := f.calls(); got != 1 {
				t.Errorf("fetches = %d, want 1", got)
			}
		})
	})

	t.Run("FetchTimeout bounds a fetch", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := time.Now()
			var fetchErr error
			f := &fakeFetcher{script: func(ctx context.Context, _ int) (string, time.Duration, error) {
				<-ctx.Done()
				fetchErr = ctx.Err()
				return "", 0, ctx.Err()
			}}
			s := NewSource(FetcherFunc(f.Fetch), Options{FetchTimeout: 5 * time.Second})
			defer s.Close()
			_, err := s.Token(context.Background())
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Token() = %v, want ErrUnavailable wrapping context.DeadlineExceeded", err)
			}
			if d := time.Since(t0); d != 5*time.Second {
				t.Errorf("Token() returned after %v, want 5s", d)
			}
			if !errors.Is(fetchErr, context.DeadlineExceeded) {
				t.Errorf("fetch ctx error = %v, want context.DeadlineExceeded", fetchErr)
			}
		})
	})
}

func TestEmptyTokenIsAnError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeFetcher{script: func(context.Context, int) (string, time.Duration, error) {
			return "", time.Hour, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{})
		defer s.Close()
		tok, err := s.Token(context.Background())
		if !errors.Is(err, ErrUnavailable) || tok != "" {
			t.Errorf("Token() = %q, %v, want ErrUnavailable", tok, err)
		}
		if st := s.State(); st.Held || !strings.Contains(st.LastError, "empty token") {
			t.Errorf("State() = %+v, want not held, LastError about the empty token", st)
		}
	})
}

func TestClose(t *testing.T) {
	t.Run("cancels a fetch in flight", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := time.Now()
			fetchErr := make(chan error, 1)
			f := &fakeFetcher{script: func(ctx context.Context, _ int) (string, time.Duration, error) {
				<-ctx.Done()
				fetchErr <- ctx.Err()
				return "", 0, ctx.Err()
			}}
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			ch := tokenAsync(context.Background(), s)
			synctest.Wait()
			s.Close() // returns only once the fetch has ended
			if len(fetchErr) != 1 {
				t.Fatal("Close() returned before the fetch in flight ended")
			}
			if err := <-fetchErr; !errors.Is(err, context.Canceled) {
				t.Errorf("fetch ctx error after Close = %v, want context.Canceled", err)
			}
			r := <-ch
			if !errors.Is(r.err, ErrUnavailable) || !errors.Is(r.err, context.Canceled) {
				t.Errorf("Token() = %q, %v, want ErrUnavailable wrapping context.Canceled", r.tok, r.err)
			}
			if d := time.Since(t0); d != 0 {
				t.Errorf("Close took %v of fake time, want 0", d)
			}
			s.Close() // a second Close is harmless
		})
	})

	t.Run("stops Run", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := gated(time.Hour, make(chan error))
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			done := make(chan struct{})
			go func() {
				s.Run(context.Background())
				close(done)
			}()
			synctest.Wait()
			s.Close()
			synctest.Wait()
			select {
			case <-done:
			default:
				t.Fatal("Run still running after Close")
			}
			if got := f.calls(); got != 1 {
				t.Errorf("fetches = %d, want 1", got)
			}
		})
	})

	t.Run("no fetch after Close", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// This fetcher ignores ctx, so only the Source can refuse to fetch.
			f := instant(time.Minute)
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			if _, err := s.Token(context.Background()); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// The held token is still good until it expires ...
			if tok, err := s.Token(context.Background()); err != nil || tok != "tok-1" {
				t.Errorf("Token() after Close = %q, %v, want %q, nil", tok, err, "tok-1")
			}
			// ... then Token fails without fetching,
			time.Sleep(time.Hour)
			tok, err := s.Token(context.Background())
			if !errors.Is(err, ErrUnavailable) || tok != "" {
				t.Errorf("Token() after Close and expiry = %q, %v, want ErrUnavailable", tok, err)
			}
			// and Run does nothing.
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			before := time.Now()
			s.Run(ctx)
			if d := time.Since(before); d != 0 {
				t.Errorf("Run after Close ran for %v, want it to return at once", d)
			}
			if got := f.calls(); got != 1 {
				t.Errorf("fetches = %d, want 1 (none after Close)", got)
			}
		})
	})
}

func TestRunStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, f := range []*fakeFetcher{instant(time.Hour), gated(time.Hour, make(chan error))} {
			s := NewSource(FetcherFunc(f.Fetch), Options{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				s.Run(ctx)
				close(done)
			}()
			synctest.Wait()
			cancel()
			synctest.Wait()
			select {
			case <-done:
			default:
				t.Error("Run still running after its ctx ended")
			}
			s.Close()
		}
	})
}

func TestStateAndPeek(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		fail := false
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if fail {
				return "", 0, errBoom
			}
			return tokN(n), time.Hour, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{})
		defer s.Close()

		if diff := cmp.Diff(State{}, s.State()); diff != "" {
			t.Errorf("State() of a new source (-want +got):\n%s", diff)
		}
		if tok, exp := s.Peek(); tok != "" || !exp.IsZero() {
			t.Errorf("Peek() of a new source = %q, %v, want none", tok, exp)
		}
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		want := State{Held: true, ExpiresAt: t0.Add(time.Hour), Fetches: 1}
		if diff := cmp.Diff(want, s.State()); diff != "" {
			t.Errorf("State() after a fetch (-want +got):\n%s", diff)
		}
		if tok, exp := s.Peek(); tok != "tok-1" || !exp.Equal(t0.Add(time.Hour)) {
			t.Errorf("Peek() = %q, %v, want %q, %v", tok, exp, "tok-1", t0.Add(time.Hour))
		}

		time.Sleep(time.Hour) // expired
		want = State{Fetches: 1}
		if diff := cmp.Diff(want, s.State()); diff != "" {
			t.Errorf("State() after expiry (-want +got):\n%s", diff)
		}
		if tok, _ := s.Peek(); tok != "" {
			t.Errorf("Peek() after expiry = %q, want none", tok)
		}

		fail = true
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour) // only against a hang
		defer cancel()
		if _, err := s.Token(ctx); !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
			t.Fatalf("Token() = %v, want ErrUnavailable wrapping %v", err, errBoom)
		}
		want = State{LastError: errBoom.Error(), Fetches: 2}
		if diff := cmp.Diff(want, s.State()); diff != "" {
			t.Errorf("State() after a failure (-want +got):\n%s", diff)
		}
	})
}

// fetchObserver is a function as an Observer.
type fetchObserver func(err error, expires time.Time)

func (f fetchObserver) TokenFetched(err error, expires time.Time) { f(err, expires) }

func TestObserverTold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		type call struct {
			Err     error
			Expires time.Time
		}
		var calls []call
		f := &fakeFetcher{script: func(_ context.Context, n int) (string, time.Duration, error) {
			if n == 2 {
				return "", 0, errBoom
			}
			return tokN(n), time.Hour, nil
		}}
		s := NewSource(FetcherFunc(f.Fetch), Options{Observer: fetchObserver(func(err error, expires time.Time) {
			calls = append(calls, call{err, expires})
		})})
		defer s.Close()
		s.Token(context.Background())
		synctest.Wait()
		s.Invalidate("tok-1")
		time.Sleep(time.Second)
		s.Token(context.Background()) // fails
		synctest.Wait()
		time.Sleep(time.Second)
		s.Token(context.Background())
		synctest.Wait()
		want := []call{
			{nil, t0.Add(time.Hour)},
			{errBoom, time.Time{}},
			{nil, t0.Add(2*time.Second + time.Hour)},
		}
		if diff := cmp.Diff(want, calls, cmpopts.EquateErrors()); diff != "" {
			t.Errorf("Observer calls (-want +got):\n%s", diff)
		}
	})
}

func TestLogsNeverCarrySecretsOrTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const oapi = "https://oapi.example.invalid"
		core, logs := observer.New(zapcore.DebugLevel)
		step := 0
		rt := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			step++
			switch step {
			case 1:
				return nil, &url.Error{Op: "Get", URL: req.URL.String(), Err: errBoom}
			case 2:
				return jsonResponse(200, `{"errcode":40096,"errmsg":"invalid appkey or appsecret"}`), nil
			default:
				return jsonResponse(200, `{"errcode":0,"errmsg":"ok","access_token":"`+testToken+`","expires_in":7200}`), nil
			}
		})
		var fetchErrs []error
		s := NewSource(NewGetTokenFetcher(rt, oapi, testKey, testSecret), Options{
			Logger:   zap.New(core),
			Observer: fetchObserver(func(err error, _ time.Time) { fetchErrs = append(fetchErrs, err) }),
		})
		defer s.Close()
		var tokenErrs []error
		var states []State
		for range 3 {
			tok, err := s.Token(context.Background())
			synctest.Wait()
			states = append(states, s.State())
			if err != nil {
				tokenErrs = append(tokenErrs, err)
			} else if tok != testToken {
				t.Errorf("Token() = %q, want %q", tok, testToken)
			}
			time.Sleep(2 * time.Second)
		}
		if len(tokenErrs) != 2 || len(fetchErrs) != 3 || logs.Len() != 3 {
			t.Fatalf("got %d Token errors, %d Observer calls, %d log entries; want 2, 3, 3", len(tokenErrs), len(fetchErrs), logs.Len())
		}
		if !strings.Contains(states[1].LastError, "40096") {
			t.Errorf("State().LastError = %q, want DingTalk's code 40096", states[1].LastError)
		}
		var texts []string
		for _, err := range append(tokenErrs, fetchErrs...) {
			if err != nil {
				texts = append(texts, err.Error(), fmt.Sprintf("%+v", err))
			}
		}
		for _, st := range states {
			texts = append(texts, st.LastError)
		}
		for _, e := range logs.All() {
			texts = append(texts, e.Message)
			for k, v := range e.ContextMap() {
				texts = append(texts, fmt.Sprintf("%s=%v", k, v))
			}
		}
		for _, s := range texts {
			for _, secret := range []string{testSecret, testToken, "appsecret=", "appkey="} {
				if strings.Contains(s, secret) {
					t.Errorf("%q contains %q", s, secret)
				}
			}
		}
		if got := logs.FilterMessage("token refreshed").Len(); got != 1 {
			t.Errorf("%d \"token refreshed\" entries, want 1", got)
		}
	})
}
