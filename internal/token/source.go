package token

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ErrUnavailable wraps the last fetch error when no valid token is held and
// the next fetch is not yet allowed.
var ErrUnavailable = errors.New("token: unavailable")

// Fetcher gets a new token and its lifetime: from DingTalk, or from the
// fleet that shares it.
type Fetcher interface {
	Fetch(ctx context.Context) (token string, ttl time.Duration, err error)
}

// FetcherFunc is a function as a Fetcher.
type FetcherFunc func(ctx context.Context) (token string, ttl time.Duration, err error)

// Fetch calls f.
func (f FetcherFunc) Fetch(ctx context.Context) (string, time.Duration, error) { return f(ctx) }

// Dropper is a Fetcher that shares the token beyond this process (the
// fleet's): the Source tells it of every token it drops (Invalidate), so
// that the others drop it too.
type Dropper interface {
	Dropped(tok string)
}

// SharedFetcher is a Fetcher that may hand over a token this process did
// not fetch from DingTalk: the fleet's, which another proxy of the app (or
// this one, earlier) fetched and shared. FetchShared is Fetch, and says
// which: shared is true when nothing was asked of DingTalk. Only a fetch
// from DingTalk starts MinInterval, so that a shared token DingTalk turns
// out to have revoked is replaced at once, not a MinInterval later.
type SharedFetcher interface {
	Fetcher
	FetchShared(ctx context.Context) (token string, ttl time.Duration, shared bool, err error)
}

// Options configure a Source.
type Options struct {
	// RefreshBefore is how long before expiry the background refresh runs.
	// When it is not shorter than a token's lifetime, the refresh runs at
	// half the lifetime instead.
	RefreshBefore time.Duration
	// FetchTimeout bounds one fetch. Zero means 10 s.
	FetchTimeout time.Duration
	// MinInterval is the least time between the starts of two fetches
	// from DingTalk. A token a SharedFetcher took from the fleet is not
	// one: it neither starts the interval nor waits for it. Zero means 1 s.
	MinInterval time.Duration
	// MaxBackoff caps the wait after consecutive failed fetches. Zero means 30 s.
	MaxBackoff time.Duration
	// Logger gets refreshes and failures. Nil means no logs.
	Logger *zap.Logger
	// Observer, if set, is told of every fetch's result.
	Observer Observer
}

// Observer is told of every fetch's result (nil error: a token came, which
// expires then), for metrics. It runs outside the source's lock.
type Observer interface {
	TokenFetched(err error, expires time.Time)
}

// State is what a Source holds, for /readyz and metrics.
type State struct {
	Held      bool
	ExpiresAt time.Time
	LastError string
	Fetches   int
}

// Source is the shared token. It is safe for concurrent use.
type Source struct {
	fetch Fetcher
	opts  Options

	mu        sync.Mutex
	token     string
	expires   time.Time
	fetched   time.Time     // when the current token was fetched
	inflight  chan struct{} // non-nil while a fetch runs; closed when it ends
	lastStart time.Time     // start of the last fetch
	nextStart time.Time     // no fetch starts before this: MinInterval after the last from DingTalk, or the backoff
	failures  int
	lastErr   error
	fetches   int
	changed   chan struct{} // closed and replaced when the token changes

	base     context.Context // parent of every fetch; ended by Close
	stop     context.CancelFunc
	fetchers sync.WaitGroup
}

// NewSource returns a Source fetching with f. Call Run to keep it fresh.
func NewSource(f Fetcher, opts Options) *Source {
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 10 * time.Second
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	base, stop := context.WithCancel(context.Background())
	return &Source{fetch: f, opts: opts, changed: make(chan struct{}), base: base, stop: stop}
}

// Close cancels a fetch in flight and waits for it to end. Token calls after
// Close fail once the held token expires; Run returns.
func (s *Source) Close() {
	// Cancelled under mu, so that no fetch starts (fetchers.Add) once Wait runs.
	s.mu.Lock()
	s.stop()
	s.mu.Unlock()
	s.fetchers.Wait()
}

// Token returns a valid token, fetching one if none is held. Callers that
// arrive while a fetch runs wait for it (or for ctx) instead of starting
// another.
func (s *Source) Token(ctx context.Context) (string, error) {
	for {
		s.mu.Lock()
		now := time.Now()
		if s.token != "" && now.Before(s.expires) {
			tok := s.token
			s.mu.Unlock()
			return tok, nil
		}
		if s.base.Err() != nil {
			s.mu.Unlock()
			return "", fmt.Errorf("%w: source closed", ErrUnavailable)
		}
		ch := s.inflight
		var wait time.Duration
		if ch == nil {
			if now.Before(s.nextStart) {
				if s.lastErr != nil {
					err := s.lastErr
					s.mu.Unlock()
					return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
				// A fetch ran less than MinInterval ago and its token is gone
				// already: wait for the next allowed start.
				wait = s.nextStart.Sub(now)
			} else {
				ch = s.startLocked(now)
			}
		}
		s.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return "", ctx.Err()
			}
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		s.mu.Lock()
		if s.token == "" && s.lastErr != nil && s.inflight == nil {
			err := s.lastErr
			s.mu.Unlock()
			return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		s.mu.Unlock()
	}
}

// startLocked starts a fetch in its own goroutine, detached from any one
// caller's context, and returns the channel closed when it ends. The next
// start is decided when it ends: whether it asked DingTalk, and whether it
// failed.
func (s *Source) startLocked(now time.Time) chan struct{} {
	ch := make(chan struct{})
	s.inflight = ch
	s.lastStart = now
	s.fetches++
	s.fetchers.Add(1)
	go s.run(ch)
	return ch
}

func (s *Source) run(ch chan struct{}) {
	defer s.fetchers.Done()
	ctx, cancel := context.WithTimeout(s.base, s.opts.FetchTimeout)
	var (
		tok    string
		ttl    time.Duration
		shared bool
		err    error
	)
	if sf, ok := s.fetch.(SharedFetcher); ok {
		tok, ttl, shared, err = sf.FetchShared(ctx)
	} else {
		tok, ttl, err = s.fetch.Fetch(ctx)
	}
	cancel()
	if err == nil && tok == "" {
		err = errors.New("token: fetch: empty token")
	}
	s.mu.Lock()
	now := time.Now()
	s.inflight = nil
	if err != nil {
		// Whether it asked DingTalk or not, a failed fetch backs off.
		s.failures++
		s.lastErr = err
		back := s.opts.MinInterval << min(s.failures-1, 16)
		if back <= 0 || back > s.opts.MaxBackoff { // <= 0: the shift overflowed
			back = s.opts.MaxBackoff
		}
		back = max(back, s.opts.MinInterval) // never sooner than MinInterval
		s.nextStart = s.lastStart.Add(back)
	} else {
		if !shared {
			// Asked of DingTalk: the next may start MinInterval after
			// this one did. A token taken from the fleet leaves the
			// last fetch from DingTalk's interval as it was.
			s.nextStart = s.lastStart.Add(s.opts.MinInterval)
		}
		s.failures, s.lastErr = 0, nil
		s.token, s.expires, s.fetched = tok, now.Add(ttl), now
		close(s.changed)
		s.changed = make(chan struct{})
	}
	expires := s.expires
	s.mu.Unlock()
	close(ch)
	if s.opts.Observer != nil {
		s.opts.Observer.TokenFetched(err, expires)
	}
	if l := s.opts.Logger; l != nil {
		if err != nil {
			l.Warn("token fetch failed", zap.Error(err))
		} else if shared {
			l.Info("token refreshed", zap.Duration("expires_in", ttl), zap.String("from", "redis"))
		} else {
			l.Info("token refreshed", zap.Duration("expires_in", ttl))
		}
	}
}

// Invalidate drops tok if it is still the current token, so that the next
// Token call fetches a new one. A burst of callers rejected with the same
// token causes one fetch. It reports whether tok was dropped; a Fetcher
// that is a Dropper hears of it (outside the source's lock).
func (s *Source) Invalidate(tok string) bool {
	s.mu.Lock()
	if tok == "" || tok != s.token {
		s.mu.Unlock()
		return false
	}
	s.token, s.expires = "", time.Time{}
	s.mu.Unlock()
	if d, ok := s.fetch.(Dropper); ok {
		d.Dropped(tok)
	}
	return true
}

// Peek returns the current token and its expiry without fetching; "" when
// none is held.
func (s *Source) Peek() (string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token == "" || !time.Now().Before(s.expires) {
		return "", time.Time{}
	}
	return s.token, s.expires
}

// State reports what the source holds.
func (s *Source) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{Fetches: s.fetches}
	if s.token != "" && time.Now().Before(s.expires) {
		st.Held, st.ExpiresAt = true, s.expires
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	return st
}

// refreshAt is when the background refresh of the current token should run.
func (s *Source) refreshAtLocked() time.Time {
	if s.token == "" {
		return time.Time{}
	}
	ttl := s.expires.Sub(s.fetched)
	before := s.opts.RefreshBefore
	if before >= ttl {
		before = ttl / 2
	}
	return s.expires.Add(-before)
}

// Run fetches a token at once and then keeps it fresh, refreshing it
// RefreshBefore ahead of its expiry and retrying failed fetches with backoff,
// until ctx ends. Callers keep getting the current token while a refresh runs.
func (s *Source) Run(ctx context.Context) {
	for {
		s.mu.Lock()
		if s.base.Err() != nil { // closed
			s.mu.Unlock()
			return
		}
		now := time.Now()
		var ch chan struct{}
		var wait time.Duration
		switch {
		case s.inflight != nil:
			ch = s.inflight
		case s.token == "" || !now.Before(s.refreshAtLocked()):
			if now.Before(s.nextStart) {
				wait = s.nextStart.Sub(now)
			} else {
				ch = s.startLocked(now)
			}
		default:
			wait = s.refreshAtLocked().Sub(now)
		}
		changed := s.changed
		s.mu.Unlock()
		if ch != nil {
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-changed: // a fetch outside Run changed the schedule
			t.Stop()
		case <-s.base.Done(): // closed
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}
