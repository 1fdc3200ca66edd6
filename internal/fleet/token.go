package fleet

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/token"
)

// The shared token: one fetch per lifetime for the whole fleet. The token
// is kept under <prefix>:{<app>}:token, sealed with AES-GCM under a key
// derived from the app secret (HKDF-SHA256), so Redis alone does not reveal
// it; the associated data names the app key, the purpose and the key, so a
// sealed value moved to another key (a cached answer into the token, one
// answer into another's key) does not open. The proxy that finds it missing
// or due for refresh takes <prefix>:{<app>}:token:lock (SET NX with expiry)
// and fetches; the others wait for it and read the new one. A Redis that is
// gone makes each proxy fetch its own.
//
// A token DingTalk rejects (40014: revoked, the secret reset) is deleted
// only while the key still holds that very value (compare-and-delete), and
// a fetched token is stored only while the key holds what it held when the
// lock was taken, nothing, or a value that is not the fleet's
// (compare-and-set): no proxy deletes or overwrites a newer token another
// stored. So a stale shared token costs the fleet one refetch, at once: a
// token taken from Redis is no fetch from DingTalk, and does not start the
// local source's interval between fetches (token.SharedFetcher).
//
// A lock is never trusted to end by itself: one without an expiry, or with
// a longer one than a fetch takes (no proxy sets such a lock: an operator's
// mistake, a restore, another program), is broken by the next proxy that
// wants it. A holder that has had half a fetch's time and shared no token
// (it died, or DingTalk is slow to it) has its lock taken over by one
// waiting proxy, compared on the holder's id, which fetches and shares; the
// others wait on for half of what their fetch has left, then fetch their
// own. Each is counted (token_lock_stale).

// hkdfInfo names what the derived key is for (and its version).
const hkdfInfo = "dingproxy fleet token v1"

type sealer struct {
	aead cipher.AEAD
	app  string
}

// What a sealed value is for, in its associated data.
const (
	purposeToken = "token"
	purposeCache = "cache"
)

// ad is the associated data of a value sealed for purpose under name, the
// key's part after <prefix>:{<app>}: ("token", "cache:<digest>"). The parts
// hold no NUL but the app key may: read from the right, they are
// unambiguous.
func (s *sealer) ad(purpose, name string) []byte {
	return []byte("dingproxy fleet v2\x00" + s.app + "\x00" + purpose + "\x00" + name)
}

func newSealer(secret, appKey string) (*sealer, error) {
	key, err := hkdf.Key(sha256.New, []byte(secret), nil, hkdfInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("fleet: derive the token key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("fleet: token cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("fleet: token cipher: %w", err)
	}
	return &sealer{aead: aead, app: appKey}, nil
}

// seal returns base64(nonce | AES-GCM(fetched and expiry in unix ms |
// token)), with associated data ad.
func (s *sealer) seal(ad []byte, tok string, fetched, expires time.Time) string {
	plain := make([]byte, 16, 16+len(tok))
	binary.BigEndian.PutUint64(plain, uint64(fetched.UnixMilli()))
	binary.BigEndian.PutUint64(plain[8:], uint64(expires.UnixMilli()))
	plain = append(plain, tok...)
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawStdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, ad))
}

var errSealed = errors.New("fleet: the sealed value does not open (another app secret, or moved from another key?)")

// open opens v, sealed with associated data ad.
func (s *sealer) open(ad []byte, v string) (tok string, fetched, expires time.Time, err error) {
	b, err := base64.RawStdEncoding.DecodeString(v)
	n := s.aead.NonceSize()
	if err != nil || len(b) < n+s.aead.Overhead()+16 {
		return "", time.Time{}, time.Time{}, errSealed
	}
	plain, err := s.aead.Open(nil, b[:n], b[n:], ad)
	if err != nil || len(plain) <= 16 {
		return "", time.Time{}, time.Time{}, errSealed
	}
	fetched = time.UnixMilli(int64(binary.BigEndian.Uint64(plain[:8])))
	expires = time.UnixMilli(int64(binary.BigEndian.Uint64(plain[8:16])))
	return string(plain[16:]), fetched, expires, nil
}

// due says whether a token fetched then and expiring then is due for
// refresh: refreshBefore ahead of its expiry, or at half its lifetime when
// that is shorter (as token.Source schedules it).
func due(now, fetched, expires time.Time, refreshBefore time.Duration) bool {
	before := refreshBefore
	if life := expires.Sub(fetched); before >= life {
		before = life / 2
	}
	return !now.Before(expires.Add(-before))
}

// lockScript takes the lock KEYS[1] for ARGV[1] (this proxy's id) for
// ARGV[2] ms, breaking a lock that has no expiry or a longer one than that
// (no proxy sets one). Returns {1 taken, 2 taken after breaking such a
// lock; the token KEYS[2] holds now, or false}: another proxy may have
// stored one since this one looked; or {0 held by another; its id, or
// false when the lock is not a string}.
var lockScript = redis.NewScript(`
local function str(k)
  if redis.call('TYPE', k).ok == 'string' then return redis.call('GET', k) end
  return false
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, str(KEYS[2])}
end
local left = redis.call('PTTL', KEYS[1])
if left == -1 or left > tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, str(KEYS[2])}
end
return {0, str(KEYS[1])}`)

// takeoverScript takes the lock KEYS[1] over for ARGV[2] (this proxy's id)
// for ARGV[3] ms only while ARGV[1], the holder waited on, still holds it:
// of the proxies waiting on a holder that shares no token, one takes over.
// Returns {1; the token KEYS[2] holds now, or false}, or {0, false} when
// another holds the lock, or none does.
var takeoverScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, false}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('TYPE', KEYS[2]).ok == 'string' then return {1, redis.call('GET', KEYS[2])} end
return {1, false}`)

// storeScript stores ARGV[1] in KEYS[1] for ARGV[3] ms unless another
// proxy stored a token there since this one took the lock: only while the
// key holds ARGV[2] (what it held then, "" for nothing), nothing (the
// value it held was dropped since) or a value of another type (not the
// fleet's). Returns 1 stored, 0 left as it was.
var storeScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1`)

// casDelete deletes KEYS[1] only while it holds ARGV[1].
var casDelete = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// lockTTL is how long a fetching proxy holds the lock at most: a fetch's
// timeout and a second; then another proxy may fetch.
func lockTTL(fetchTimeout time.Duration) time.Duration { return fetchTimeout + time.Second }

// Fetcher is the fleet's token fetcher, decorating DingTalk's: the fleet
// fetches once per lifetime, a token one proxy drops (DingTalk rejected
// it) is dropped for all (token.Dropper), and the local source hears
// whether a token came from Redis or from DingTalk (token.SharedFetcher).
type Fetcher struct {
	f                           *Fleet
	inner                       token.Fetcher
	refreshBefore, fetchTimeout time.Duration
}

var (
	_ token.SharedFetcher = (*Fetcher)(nil)
	_ token.Dropper       = (*Fetcher)(nil)
)

// TokenFetcher wraps inner, DingTalk's fetch, so that the fleet fetches
// once: it returns the shared token while it has more than refreshBefore
// to live, fetches (and shares) a new one under the lock when none does, and
// waits for the proxy that holds the lock otherwise. With Redis down it is
// inner. In pass-through mode (no secret to seal with) it is inner itself.
func (f *Fleet) TokenFetcher(inner token.Fetcher, refreshBefore, fetchTimeout time.Duration) token.Fetcher {
	if f.sealer == nil {
		return inner
	}
	return &Fetcher{f: f, inner: inner, refreshBefore: refreshBefore, fetchTimeout: fetchTimeout}
}

// Dropped drops tok for the fleet: the local source dropped it.
func (sf *Fetcher) Dropped(tok string) { sf.f.InvalidateToken(tok) }

// Fetch returns the fleet's token, fetching it for the fleet when due.
func (sf *Fetcher) Fetch(ctx context.Context) (string, time.Duration, error) {
	tok, ttl, _, err := sf.FetchShared(ctx)
	return tok, ttl, err
}

// FetchShared is Fetch, and says whether the token came from Redis
// (shared: another proxy, or this one before, fetched it) rather than from
// DingTalk by this proxy now.
func (sf *Fetcher) FetchShared(ctx context.Context) (tok string, ttl time.Duration, shared bool, err error) {
	f, inner, refreshBefore, fetchTimeout := sf.f, sf.inner, sf.refreshBefore, sf.fetchTimeout
	lockKey, tokKey := f.key("token", "lock"), f.key("token")
	var (
		waitingSince time.Time
		waitMost     time.Duration
		waitedOn     string // the holder waited on since waitingSince
		tookOver     bool   // this proxy tried to take a silent holder's lock over
	)
	for {
		if !f.Up() {
			return f.alone(ctx, inner)
		}
		var stored string
		err := f.do(ctx, OpTokenRead, func(ctx context.Context) (err error) {
			stored, err = f.rdb.Get(ctx, tokKey).Result()
			return err
		})
		switch {
		case err == nil:
			tok, fetched, exp, oerr := f.sealer.open(f.tokenAD(), stored)
			now := time.Now()
			if oerr != nil {
				f.failed(OpTokenRead)
				f.log.Warn("fleet: the shared token does not open with this app's secret and key: fetching a new one")
			} else if left := exp.Sub(now); !due(now, fetched, exp, refreshBefore) && tok != f.invalidated() {
				f.remember(tok, stored)
				f.fromRedis.Store(true)
				return tok, left, true, nil
			}
		case isWrongType(err):
			// Not the fleet's value (counted): fetched anew, and
			// replaced, under the lock.
		case !errors.Is(err, redis.Nil):
			return f.alone(ctx, inner)
		}
		// Missing, due, dropped here or unreadable: the proxy that takes
		// the lock fetches.
		var got int64
		var current string // the token stored when the lock was taken; the holder's id when not taken
		id := lockID()
		err = f.do(ctx, OpTokenLock, func(ctx context.Context) error {
			res, err := lockScript.Run(ctx, f.rdb, []string{lockKey, tokKey}, id, lockTTL(fetchTimeout).Milliseconds()).Slice()
			if err == nil && len(res) == 2 {
				got, _ = res[0].(int64)
				current, _ = res[1].(string)
			}
			return err
		})
		if err != nil {
			return f.alone(ctx, inner)
		}
		if got == 2 {
			f.failed(OpTokenLockStale)
			f.log.Warn("fleet: the token lock had no expiry, or a longer one than a fetch takes: broken")
		}
		if got > 0 {
			return f.locked(ctx, inner, tokKey, lockKey, id, current, stored, refreshBefore)
		}
		// Another proxy fetches: read again shortly, but not for longer
		// than half of what this fetch has.
		holder := current
		now := time.Now()
		switch {
		case waitingSince.IsZero() || holder != waitedOn:
			// A new holder (one that has just taken a silent holder's
			// lock over, or the next fetch's) has its own patience.
			waitingSince, waitMost, waitedOn = now, patience(ctx, fetchTimeout), holder
		case now.Sub(waitingSince) < waitMost:
		case !tookOver && holder != "":
			// The holder has had half a fetch's time and shared no
			// token: take its lock over (one waiting proxy does: the
			// others find another holder), fetch and share.
			tookOver = true
			var taken bool
			err := f.do(ctx, OpTokenLock, func(ctx context.Context) error {
				res, err := takeoverScript.Run(ctx, f.rdb, []string{lockKey, tokKey}, holder, id, lockTTL(fetchTimeout).Milliseconds()).Slice()
				if err == nil && len(res) == 2 {
					n, _ := res[0].(int64)
					taken = n == 1
					current, _ = res[1].(string)
				}
				return err
			})
			if err != nil {
				return f.alone(ctx, inner)
			}
			if taken {
				f.failed(OpTokenLockStale)
				f.log.Warn("fleet: another proxy holds the token lock but no token came: taken over")
				return f.locked(ctx, inner, tokKey, lockKey, id, current, stored, refreshBefore)
			}
			// Another took it over first, or the lock ended: wait on,
			// for half of what is left.
			waitingSince, waitMost = now, patience(ctx, fetchTimeout)
		default:
			f.failed(OpTokenLockStale)
			f.log.Warn("fleet: another proxy holds the token lock but no token came: fetching alone")
			return f.alone(ctx, inner)
		}
		t := time.NewTimer(25 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", 0, false, ctx.Err()
		}
	}
}

// locked goes on once this proxy holds the lock: with the token another
// proxy stored since this one read before, if it is in use, or with a
// fetch for the fleet. current is what the token key held when the lock
// was taken.
func (f *Fleet) locked(ctx context.Context, inner token.Fetcher, tokKey, lockKey, id, current, before string, refreshBefore time.Duration) (string, time.Duration, bool, error) {
	if tok, left, ok := f.fresh(current, before, refreshBefore); ok {
		// Another proxy stored a token between the read and the lock:
		// take it, and free the lock.
		f.unlock(ctx, lockKey, id)
		return tok, left, true, nil
	}
	return f.fetchShared(ctx, inner, tokKey, lockKey, id, current)
}

// tokenAD is the token's associated data.
func (f *Fleet) tokenAD() []byte { return f.sealer.ad(purposeToken, "token") }

// fresh opens v, a token stored by another proxy since this one read
// before: the token and its time left, if it is in use (not due, not
// dropped here).
func (f *Fleet) fresh(v, before string, refreshBefore time.Duration) (string, time.Duration, bool) {
	if v == "" || v == before {
		return "", 0, false
	}
	tok, fetched, exp, err := f.sealer.open(f.tokenAD(), v)
	now := time.Now()
	if err != nil || due(now, fetched, exp, refreshBefore) || tok == f.invalidated() {
		return "", 0, false
	}
	f.remember(tok, v)
	f.fromRedis.Store(true)
	return tok, exp.Sub(now), true
}

// unlock frees the lock if this proxy (id) still holds it.
func (f *Fleet) unlock(ctx context.Context, lockKey, id string) {
	_ = f.do(context.WithoutCancel(ctx), OpTokenLock, func(ctx context.Context) error {
		return casDelete.Run(ctx, f.rdb, []string{lockKey}, id).Err()
	})
}

// patience is how long a proxy waits for another to fetch the token: half
// of what its own fetch may take (fetchTimeout, or ctx's deadline if
// sooner), so that it can still fetch its own.
func patience(ctx context.Context, fetchTimeout time.Duration) time.Duration {
	d := fetchTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	return d / 2
}

// isWrongType says whether err is Redis's WRONGTYPE: the key holds a value
// of another type, not the fleet's.
func isWrongType(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// alone fetches for this proxy only, as without a fleet.
func (f *Fleet) alone(ctx context.Context, inner token.Fetcher) (string, time.Duration, bool, error) {
	f.fromRedis.Store(false)
	f.remember("", "")
	tok, ttl, err := inner.Fetch(ctx)
	return tok, ttl, false, err
}

// fetchShared fetches under the lock and shares the result, unless another
// proxy stored a token since the lock was taken (the key no longer holds
// current): that one is left as it is, and this proxy uses its own.
func (f *Fleet) fetchShared(ctx context.Context, inner token.Fetcher, tokKey, lockKey, id, current string) (string, time.Duration, bool, error) {
	tok, ttl, err := inner.Fetch(ctx)
	if err == nil && tok != "" && ttl > 0 {
		now := time.Now()
		v := f.sealer.seal(f.tokenAD(), tok, now, now.Add(ttl))
		var stored int64
		if serr := f.do(context.WithoutCancel(ctx), OpTokenStore, func(ctx context.Context) (err error) {
			stored, err = storeScript.Run(ctx, f.rdb, []string{tokKey}, v, current, max(ttl.Milliseconds(), 1)).Int64()
			return err
		}); serr != nil {
			f.remember("", "")
			f.log.Debug("fleet: could not share the new token", zap.String("error", redactErr(serr)))
		} else if stored == 1 {
			f.remember(tok, v)
		} else {
			f.remember("", "")
			f.log.Debug("fleet: another proxy shared a token first: it is left as it is")
		}
	}
	f.fromRedis.Store(false)
	f.unlock(ctx, lockKey, id)
	return tok, ttl, false, err
}

// remember keeps the token in use and its stored value, for
// compare-and-delete on invalidation.
func (f *Fleet) remember(tok, stored string) {
	f.tokMu.Lock()
	f.tokUsed, f.tokStored = tok, stored
	f.tokMu.Unlock()
}

// invalidated is the token this proxy last dropped, never to be taken from
// Redis again (a stale copy must not come back).
func (f *Fleet) invalidated() string {
	f.tokMu.Lock()
	defer f.tokMu.Unlock()
	return f.tokDropped
}

// InvalidateToken drops tok from Redis if it is still the shared token
// (compare-and-delete), so that a burst of 40014s across the fleet causes
// one refetch. Call it once the local Source dropped tok.
func (f *Fleet) InvalidateToken(tok string) {
	f.tokMu.Lock()
	f.tokDropped = tok
	stored := ""
	if f.tokUsed == tok {
		stored = f.tokStored
	}
	f.tokMu.Unlock()
	if stored == "" || f.sealer == nil {
		return
	}
	_ = f.do(context.Background(), OpTokenInvalidate, func(ctx context.Context) error {
		return casDelete.Run(ctx, f.rdb, []string{f.key("token")}, stored).Err()
	})
}

// TokenFromRedis says whether the token in use came from the fleet (another
// proxy fetched it), for /readyz.
func (f *Fleet) TokenFromRedis() bool { return f.fromRedis.Load() }

func lockID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
