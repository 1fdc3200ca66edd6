package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingproxy/dingproxy/internal/redisurl"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Options configure a Fleet.
type Options struct {
	// URL is fleet.redis_url: one server, a cluster or Sentinel
	// (internal/redisurl).
	URL string
	// KeyPrefix and AppKey start every key: Prefix.
	KeyPrefix, AppKey string
	// AppSecret keys the token's encryption (HKDF). Empty: pass-through
	// mode, no token is shared.
	AppSecret string
	// Timeout bounds every Redis operation. Default 50ms.
	Timeout time.Duration
	// ProbeEvery is how often a proxy whose Redis is down tries it again.
	// Default 1s.
	ProbeEvery time.Duration
	// Logger gets the transitions between shared and alone (once each).
	Logger *zap.Logger
	// Observer, if set, is told whether Redis answers and of every failed
	// operation.
	Observer Observer
}

// Observer is told of Redis's state, for metrics.
type Observer interface {
	// RedisUp: whether Redis answers, at start and at each change (the
	// dingproxy_fleet_redis_up gauge).
	RedisUp(up bool)
	// RedisFailed: a Redis operation failed, by its name
	// (dingproxy_fleet_errors_total{op}).
	RedisFailed(op string)
}

// Operation names, the values of dingproxy_fleet_errors_total's op label.
const (
	OpPing      = "ping"
	OpTokenRead = "token_read"
	OpTokenLock = "token_lock"
	// OpTokenLockStale: a token lock that would not end by itself was
	// broken, or a proxy gave up waiting on its holder and fetched alone.
	OpTokenLockStale  = "token_lock_stale"
	OpTokenStore      = "token_store"
	OpTokenInvalidate = "token_invalidate"
	OpPace            = "pace"
	OpPenalty         = "penalty"
	OpPublish         = "publish"
	OpSubscribe       = "subscribe"
	// OpEvent: a message heard on the events channel, or a record read at
	// resync, that is not a transition a proxy publishes (refused), ends
	// later than any would (cut short), or came past the rate (dropped).
	OpEvent    = "event"
	OpSync     = "sync"
	OpVerdicts = "verdicts"
	OpQuota    = "quota"
	OpCache    = "cache"
)

// Ops lists every operation name, for metrics to pre-create their series.
var Ops = []string{OpPing, OpTokenRead, OpTokenLock, OpTokenLockStale, OpTokenStore, OpTokenInvalidate, OpPace, OpPenalty, OpPublish, OpSubscribe, OpEvent, OpSync, OpVerdicts, OpOutbox, OpQuota, OpCache}

// ErrDown says Redis is down (or was, until the next probe): the caller
// carries on alone.
var ErrDown = errors.New("fleet: redis down")

// Fleet is one proxy's link to the others through Redis. It is safe for
// concurrent use. Every method degrades to "alone" (an error the caller
// treats as such) when Redis is slow or gone; none waits longer than the
// timeout.
type Fleet struct {
	rdb     redis.UniversalClient
	opts    Options
	prefix  string // Prefix: <prefix>:{<app key>}:
	log     *zap.Logger
	timeout time.Duration

	up      atomic.Bool
	upMu    sync.Mutex // orders the transitions' logs and the observer's RedisUp
	upKnown bool

	sealer *sealer // nil in pass-through mode

	// token sharing (token.go)
	tokMu      sync.Mutex
	tokStored  string // the stored (sealed) value of the token in use, for compare-and-delete
	tokUsed    string // the token that value holds
	tokDropped string // the token this proxy last invalidated
	fromRedis  atomic.Bool

	// breaker, ban, penalty and quota sharing (events.go)
	events *events

	// roundTrips counts the commands and pipelines sent to Redis.
	roundTrips atomic.Uint64

	stop chan struct{}
	wg   sync.WaitGroup
}

// RoundTrips is how many round trips to Redis this proxy made (a command or
// a pipeline each; a script's NOSCRIPT fallback counts twice).
func (f *Fleet) RoundTrips() uint64 { return f.roundTrips.Load() }

// countHook counts round trips.
type countHook struct{ n *atomic.Uint64 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// quietRedis keeps go-redis's own log lines (dial failures, naming the
// address) out of the proxy's output, which is JSON lines only: the fleet
// logs Redis's state itself, once per change.
var quietRedis sync.Once

type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// New connects lazily: it returns at once, and the first operations find
// out whether Redis answers.
func New(o Options) (*Fleet, error) {
	if o.Timeout <= 0 {
		o.Timeout = 50 * time.Millisecond
	}
	if o.ProbeEvery <= 0 {
		o.ProbeEvery = time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	quietRedis.Do(func() { redis.SetLogger(discardLogger{}) })
	target, err := redisurl.Parse(o.URL)
	if err != nil {
		// The message never quotes the URL: it may hold a password.
		return nil, fmt.Errorf("fleet: fleet.redis_url %v", err)
	}
	f := &Fleet{
		rdb:     newClient(target, o.Timeout),
		opts:    o,
		prefix:  Prefix(o.KeyPrefix, o.AppKey),
		log:     o.Logger,
		timeout: o.Timeout,
		stop:    make(chan struct{}),
	}
	if o.AppSecret != "" {
		if f.sealer, err = newSealer(o.AppSecret, o.AppKey); err != nil {
			_ = f.rdb.Close()
			return nil, err
		}
	}
	f.rdb.AddHook(countHook{&f.roundTrips})
	f.events = newEvents(f)
	return f, nil
}

// Start checks Redis once, then keeps probing it while it is down and
// listens for the other proxies' breaker openings and bans.
func (f *Fleet) Start() {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	err := f.rdb.Ping(ctx).Err()
	cancel()
	f.setUp(err == nil, err)
	if err != nil {
		f.failed(OpPing)
	}
	f.wg.Add(1)
	go f.events.run()
	f.every(f.opts.ProbeEvery, f.probe)
}

// Close stops the background work and closes the connections.
func (f *Fleet) Close() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	f.events.close()
	f.wg.Wait()
	_ = f.rdb.Close()
}

// Up says whether Redis answered the last operation: shared mode.
func (f *Fleet) Up() bool { return f.up.Load() }

// Prefix starts every key of an app: <key prefix>:{<app key>}:. The
// braces are Redis Cluster's hash tag: every key of one app, and so every
// script, MULTI and pipeline on them, is on one slot (one node), while
// apps spread over the cluster. An app key that is empty (pass-through
// mode) or holds a brace, which would spoil the tag, is replaced by its
// Digest.
func Prefix(keyPrefix, appKey string) string {
	tag := appKey
	if tag == "" || strings.ContainsAny(tag, "{}") {
		tag = Digest(appKey)
	}
	return keyPrefix + ":{" + tag + "}:"
}

// newClient is the client for t, one try per operation bounded by
// timeout: a plain client for one server, a cluster client, or a client
// of the master that Sentinel names.
func newClient(t *redisurl.Target, timeout time.Duration) redis.UniversalClient {
	switch t.Form {
	case redisurl.Cluster:
		o := t.Cluster
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.ContextTimeoutEnabled = true
		// The nodes' clients make one try. The cluster client itself
		// follows MOVED and ASK (a slot that moved, a failover), and may
		// try a dial or a dropped connection once more: all within the
		// operation's timeout, as the context bounds it.
		o.MaxRetries = -1
		o.DialerRetries = 1
		o.DisableIdentity = true
		o.PoolSize = 32 // per node
		o.MinIdleConns = 2
		return redis.NewClusterClient(o)
	case redisurl.Sentinel:
		o := t.Failover
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
		o.DialerRetries = 1
		o.DisableIdentity = true
		o.PoolSize = 32
		o.MinIdleConns = 2
		return redis.NewFailoverClient(o)
	}
	o := t.Single
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1 // no retries inside go-redis: one try, bounded
	// One dial per try too: go-redis dials in the background, five times
	// 100ms apart by default, and a caller whose timeout ends first sees only
	// that, never why the dial failed (redactErr).
	o.DialerRetries = 1
	o.DisableIdentity = true
	o.PoolSize = 32
	o.MinIdleConns = 2
	return redis.NewClient(o)
}

// key is prefix + the parts joined by colons.
func (f *Fleet) key(parts ...string) string {
	k := f.prefix
	for i, p := range parts {
		if i > 0 {
			k += ":"
		}
		k += p
	}
	return k
}

// Digest names a route or robot in a key: routes hold braces and other
// bytes that Redis Cluster and tools read specially.
func Digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// do runs one Redis operation bounded by the timeout, while Redis is up.
// A failure (not redis.Nil) counts under op and marks Redis down; the probe
// brings it back.
func (f *Fleet) do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if !f.up.Load() {
		return ErrDown
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	err := fn(ctx)
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	f.failed(op)
	if isDown(err) {
		f.setUp(false, err)
	}
	return fmt.Errorf("fleet: %s: %w", op, err)
}

// isDown tells a Redis that cannot be reached or is too slow (the proxy
// goes alone) from an error in a reply (a script bug, a wrong type), which
// fails only that operation.
func isDown(err error) bool {
	var re redis.Error
	if errors.As(err, &re) && !errors.Is(err, context.DeadlineExceeded) {
		// A reply from the server: it is up. LOADING and similar mean it
		// cannot serve yet.
		msg := re.Error()
		return len(msg) >= 7 && (msg[:7] == "LOADING" || msg[:7] == "MASTERD" || msg[:7] == "READONL")
	}
	return true
}

func (f *Fleet) failed(op string) {
	if f.opts.Observer != nil {
		f.opts.Observer.RedisFailed(op)
	}
}

// setUp records whether Redis answers, logging each change once.
func (f *Fleet) setUp(up bool, err error) {
	f.upMu.Lock()
	defer f.upMu.Unlock()
	was := f.up.Load()
	if f.upKnown && was == up {
		return
	}
	first := !f.upKnown
	f.upKnown = true
	f.up.Store(up)
	if f.opts.Observer != nil {
		f.opts.Observer.RedisUp(up)
	}
	switch {
	case up && first:
		f.log.Info("fleet: sharing through Redis")
	case up:
		f.log.Info("fleet: Redis answers again: sharing again")
		f.events.resync()
	default:
		f.log.Warn("fleet: Redis unreachable or slow: carrying on alone until it answers", zap.String("error", redactErr(err)))
	}
}

// every runs fn every d in the background until Close.
func (f *Fleet) every(d time.Duration, fn func()) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-f.stop:
				return
			case <-t.C:
			}
			fn()
		}
	}()
}

// probe pings Redis while it is down, until it answers again.
func (f *Fleet) probe() {
	if f.up.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	err := f.rdb.Ping(ctx).Err()
	cancel()
	if err == nil {
		f.setUp(true, nil)
	} else {
		f.failed(OpPing)
	}
}
