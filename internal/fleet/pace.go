package fleet

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/dingproxy/dingproxy/internal/dingtalk"
	"github.com/dingproxy/dingproxy/internal/pacing"
)

// Shared pacing: every proxy of the app books its turns in Redis, one round
// trip per call (the take script), so the fleet together stays under
// per_api_qps on each API and global_qps in all. The admission rule is the
// local pacer's, not a second one: each API, robot and the global budget is
// a sliding window of at most n calls in any span, with n and span from
// pacing.Window (so a burst within the limit goes at once, as alone), kept
// as a log of booked turns (a sorted set) instead of in memory. An API's
// and a robot's turns are handed out in order; the global log is booked out
// of order (an API's queue or penalty books turns far ahead, and the other
// APIs fill the gaps), as the local global window is.
//
// What a throttle teaches is learned once for the fleet: the penalty
// script blocks the API for every proxy and records the ceiling the
// fleet's sends in the current second measure; the rate after it is
// computed here, by the local pacer's own curve (pacing.Learned), from that
// ceiling and the penalty's end, which each take returns. A take made with
// an outdated ceiling is not booked: the proxy computes again with the
// ceiling Redis holds.

// What the scripts read is checked before use: Redis may hold values no
// proxy wrote (an operator's mistake, a restore, another program, a bug),
// and Lua reads "nan" and "inf" as numbers. A number that is not finite or
// lies outside its bounds is dropped (deleted from the hash, as if never
// written), a log entry further ahead than maxAhead is removed, and a key
// of another type is deleted; the reply says how many such values were
// found, and the proxy counts them in dingproxy_fleet_errors_total (pace,
// penalty). Every path of every script leaves each key it touches with an
// expiry, refusals included.

// maxPenalty is the longest penalty the fleet records or heeds: a robot's
// block (dingtalk.RobotBlock, ten minutes), DingTalk's longest. A 90002
// whose message names a later end is held to it.
const maxPenalty = dingtalk.RobotBlock * time.Second

// maxQueue is the longest a call is queued for its turn (a stated cap: a
// call with a later deadline, or none, is paced when its turn would come
// later).
const maxQueue = 10 * time.Minute

// maxAhead is the furthest ahead a turn is booked: the longest penalty and
// the longest queue after it. A turn, a "last" or a log entry further
// ahead is not the fleet's.
const maxAhead = maxPenalty + maxQueue

// checkLua is the scripts' common part: the checks of what they read. bad
// counts what was dropped; num(p, i, name, lo, hi) is field i of an HMGET
// reply p as a number within [lo, hi], or nil (the field is then listed in
// drop, to be deleted, when it was there); typed(k, ty) deletes k if it
// holds another type than ty; keep(k, ms) gives k an expiry of at most ms
// if it has none or a longer one.
const checkLua = `
local bad = 0
local drop = {}
local function num(p, i, name, lo, hi)
  local v = p[i]
  if not v then return nil end
  local x = tonumber(v)
  if x == nil or x ~= x or x < lo or x > hi then
    drop[#drop + 1] = name
    return nil
  end
  return x
end
local function typed(k, ty)
  local got = redis.call('TYPE', k).ok
  if got ~= 'none' and got ~= ty then
    redis.call('DEL', k)
    bad = bad + 1
  end
end
local function keep(k, ms)
  local left = redis.call('PTTL', k)
  if left == -1 or left > ms then redis.call('PEXPIRE', k, ms) end
end
local function dropped(k)
  if #drop > 0 then
    redis.call('HDEL', k, unpack(drop))
    bad = bad + #drop
  end
end
`

// takeScript books one turn. KEYS: the API's (or robot's) state hash, its
// log, the global log. ARGV: earliest (µs from now), most wait (µs; -1:
// none), the API's n and span (µs), the global n and span, a unique member,
// the ceiling's start the rate was computed from (ms; 0: none), the rate
// used (calls/s, stored for the penalty's measure), clear (1: the climb
// reached the configured rate, forget the ceiling), count (1: count the
// turn in its second, for the penalty's measure), maxAhead (µs),
// maxPenalty (ms).
// Returns {status, wait µs, ceiling in milli-calls/s, ceiling start ms,
// now ms, values dropped}: status 1 booked wait µs from now, 0 none
// before the most wait or maxAhead (nothing booked), 2 the ceiling changed
// (nothing booked: compute again).
var takeScript = redis.NewScript(checkLua + `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowms = math.floor(now / 1000)
local ahead, pen = tonumber(ARGV[12]), tonumber(ARGV[13])
local at = now + tonumber(ARGV[1])
local most = tonumber(ARGV[2])
if most < 0 or most > ahead then most = ahead end
local n, span = tonumber(ARGV[3]), tonumber(ARGV[4])
local gn, gspan = tonumber(ARGV[5]), tonumber(ARGV[6])
typed(KEYS[1], 'hash')
typed(KEYS[2], 'zset')
typed(KEYS[3], 'zset')
-- the logs: turns past no longer count; turns past maxAhead were never booked
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - span))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - gspan))
for i = 2, 3 do
  if redis.call('ZREMRANGEBYSCORE', KEYS[i], '(' .. (now + ahead), '+inf') > 0 then bad = bad + 1 end
end
local p = redis.call('HMGET', KEYS[1], 'blk', 'last', 'ceil', 'from', 'sec', 'n', 'psec', 'pn')
local secmax = math.floor((now + ahead) / 1000000)
local blk = num(p, 1, 'blk', 0, nowms + pen) or 0
local last = num(p, 2, 'last', 0, now + ahead) or 0
local ceil = num(p, 3, 'ceil', 1e-9, 1e9)
local from = num(p, 4, 'from', 1, nowms + pen)
if ceil and not from then
  drop[#drop + 1] = 'ceil'
  ceil = nil
elseif from and not ceil then
  drop[#drop + 1] = 'from'
  from = nil
end
ceil, from = ceil or 0, from or 0
local ps, cnt = num(p, 5, 'sec', 0, secmax) or 0, num(p, 6, 'n', 0, 1e9) or 0
local psec, pn = num(p, 7, 'psec', 0, secmax) or 0, num(p, 8, 'pn', 0, 1e9) or 0
dropped(KEYS[1])

-- a refusal writes nothing, but leaves no key it found without an expiry
local function refuse(status, wait)
  keep(KEYS[1], pen + 60000)
  for i = 2, 3 do keep(KEYS[i], math.ceil(ahead / 1000) + 60000) end
  return {status, wait, math.floor(ceil * 1000), from, nowms, bad}
end

if from ~= tonumber(ARGV[8]) then
  return refuse(2, 0)
end
if ARGV[10] == '1' and from ~= 0 then
  redis.call('HDEL', KEYS[1], 'ceil', 'from')
end

-- an API's (or robot's) window: its turns go in order
local function fifo(at)
  local c = redis.call('ZCARD', KEYS[2])
  if c >= n then
    local kth = redis.call('ZRANGE', KEYS[2], c - n, c - n, 'WITHSCORES')
    local free = tonumber(kth[2]) + span
    if free > at then at = free end
  end
  return at
end

-- the global window: the earliest turn from at on that no span holds
-- together with gn turns already booked (two spans hold at most 2 gn)
local function global(at)
  for _ = 1, 64 do
    local r = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. (at - gspan), '(' .. (at + gspan), 'WITHSCORES', 'LIMIT', 0, 2 * gn + 2)
    local free = at
    for i = 2, #r - 2 * (gn - 1), 2 do
      local first, last = tonumber(r[i]), tonumber(r[i + 2 * (gn - 1)])
      if last - at >= gspan then break end
      if last < at then last = at end
      if first > at then first = at end
      if last - first < gspan then free = tonumber(r[i]) + gspan end
    end
    if free <= at then return at end
    at = free
  end
  return at
end

if blk * 1000 > at then at = blk * 1000 end
if last > at then at = last end
for _ = 1, 8 do
  local before = at
  at = global(fifo(at))
  if at == before then break end
end
if at - now > most then
  return refuse(0, at - now)
end
redis.call('ZADD', KEYS[2], at, ARGV[7])
redis.call('PEXPIRE', KEYS[2], math.ceil((at - now + span) / 1000) + 60000)
redis.call('ZADD', KEYS[3], at, ARGV[7])
redis.call('PEXPIRE', KEYS[3], math.ceil((at - now + gspan) / 1000) + 60000)
local fields = {'last', at, 'rate', ARGV[9]}
if ARGV[11] == '1' then
  -- the turns booked in the turn's second and the one before, for the
  -- penalty's measure of what the fleet sent
  local sec = math.floor(at / 1000000)
  if sec == ps then
    cnt = cnt + 1
  elseif sec > ps then
    if sec == ps + 1 then psec, pn = ps, cnt else psec, pn = 0, 0 end
    ps, cnt = sec, 1
  end
  for _, v in ipairs({'sec', ps, 'n', cnt, 'psec', psec, 'pn', pn}) do fields[#fields + 1] = v end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], 600000)
return {1, at - now, math.floor(ceil * 1000), from, nowms, bad}
`)

// penaltyScript records a throttle answer for the fleet. KEYS: the API's
// (or robot's) state hash, its log. ARGV: kind ("rate": 90018 and kin, the
// ceiling is learned; "block": a per-minute limit or a robot's block, only
// blocked), the penalty (ms from now), the API's configured rate, beta,
// floor, margin, min measured, the channel, this proxy's id, the API's
// name, maxPenalty (ms), maxAhead (µs). Calls within a penalty already only
// extend it. The turns booked past now are voided (their callers book again
// after the penalty). Returns {penalty's end ms from now, ceiling in
// milli-calls/s, ceiling start ms, now ms, values dropped}.
var penaltyScript = redis.NewScript(checkLua + `
local t = redis.call('TIME')
local nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pen, ahead = tonumber(ARGV[11]), tonumber(ARGV[12])
local kind = ARGV[1]
local d = tonumber(ARGV[2])
if d ~= d or d < 0 then d = 0 end
if d > pen then d = pen end
local untl = nowms + d
local cfg, beta, floor, margin, minm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
typed(KEYS[1], 'hash')
typed(KEYS[2], 'zset')
local p = redis.call('HMGET', KEYS[1], 'blk', 'ceil', 'sec', 'n', 'psec', 'pn', 'rate', 'from', 'last')
local secmax = math.floor(nowms / 1000 + ahead / 1000000)
local blk = num(p, 1, 'blk', 0, nowms + pen) or 0
local ceil = num(p, 2, 'ceil', 1e-9, 1e9)
local from = num(p, 8, 'from', 1, nowms + pen)
if ceil and not from then
  drop[#drop + 1] = 'ceil'
  ceil = nil
elseif from and not ceil then
  drop[#drop + 1] = 'from'
  from = nil
end
ceil, from = ceil or 0, from or 0
local ps, cnt = num(p, 3, 'sec', 0, secmax), num(p, 4, 'n', 0, 1e9)
local psec, pn = num(p, 5, 'psec', 0, secmax), num(p, 6, 'pn', 0, 1e9)
local rate = num(p, 7, 'rate', 1e-9, 1e9)
local last = num(p, 9, 'last', 0, nowms * 1000 + ahead) or 0
dropped(KEYS[1])
keep(KEYS[2], math.ceil(ahead / 1000) + 60000)
local function publish()
  redis.call('PUBLISH', ARGV[8], 'pen ' .. ARGV[9] .. ' ' .. untl .. ' ' .. ARGV[10])
end
if nowms < blk then
  if untl > blk then
    redis.call('HSET', KEYS[1], 'blk', untl)
    publish()
  end
  redis.call('PEXPIRE', KEYS[1], math.max(600000, math.max(untl, blk) - nowms + 60000))
  return {math.max(untl, blk) - nowms, math.floor(ceil * 1000), from, nowms, bad}
end
if kind == 'rate' then
  -- what the fleet sent: in the current second once half of it passed,
  -- else in the last whole one
  local sec = math.floor(nowms / 1000)
  local measured = nil
  if ps == sec and nowms - sec * 1000 >= 500 and (cnt or 0) >= minm then
    measured = cnt
  elseif ps == sec and psec == sec - 1 and (pn or 0) >= minm then
    measured = pn
  elseif ps == sec - 1 and (cnt or 0) >= minm then
    measured = cnt
  end
  local cur = rate or cfg
  if cur > cfg then cur = cfg end
  ceil = cur
  if measured and measured / margin < ceil then ceil = measured / margin end
  if ceil < floor then ceil = floor end
  from = untl
  redis.call('HSET', KEYS[1], 'ceil', ceil, 'from', from)
end
local fields = {'blk', untl}
if last > nowms * 1000 then fields[3], fields[4] = 'last', nowms * 1000 end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '(' .. (nowms * 1000), '+inf')
redis.call('PEXPIRE', KEYS[1], math.max(600000, untl - nowms + 60000))
publish()
return {untl - nowms, math.floor(ceil * 1000), from, nowms, bad}
`)

// Pacer paces through Redis while it answers, and through Local (this
// proxy's own pacer, which keeps learning from every answer) while it does
// not. It is the pacing layer's pacing.Turns.
type Pacer struct {
	Local *pacing.Pacer
	fleet *Fleet
	set   atomic.Pointer[pacing.Settings]
	seq   atomic.Uint64
	// apis holds what is kept of each API seen: its Redis keys (so a call
	// does not hash its name again) and the fleet's ceiling as last read;
	// at most maxKeyed of them.
	apis  sync.Map // api -> *sharedAPI
	keyed atomic.Int64
}

// sharedAPI is what a proxy keeps of an API's shared pacing.
type sharedAPI struct {
	robot bool
	keys  []string // state hash, log, global log
	mu    sync.Mutex
	// ceil is the fleet's learned ceiling (0: none), learned from a
	// penalty that ended at from (Redis's ms) and, here, at fromLocal.
	ceil      float64
	from      int64
	fromLocal time.Time
}

// maxKeyed bounds the APIs whose keys are kept.
const maxKeyed = 4096

// NewPacer returns the fleet's pacer over local, under s.
func (f *Fleet) NewPacer(local *pacing.Pacer, s pacing.Settings) *Pacer {
	p := &Pacer{Local: local, fleet: f}
	p.set.Store(&s)
	return p
}

// Update installs new configured rates, for both modes.
func (p *Pacer) Update(s pacing.Settings) {
	p.set.Store(&s)
	p.Local.Update(s)
}

// api returns what is kept of api (made anew, and kept while there is room).
func (p *Pacer) api(name string) *sharedAPI {
	if v, ok := p.apis.Load(name); ok {
		return v.(*sharedAPI)
	}
	f := p.fleet
	a := &sharedAPI{}
	global := f.key("pace", "global", "log")
	if rest, ok := strings.CutPrefix(name, pacing.RobotPrefix); ok {
		a.robot = true
		a.keys = []string{f.key("robotpace", rest), f.key("robotpace", rest, "log"), global}
	} else {
		d := Digest(name)
		a.keys = []string{f.key("pace", d), f.key("pace", d, "log"), global}
	}
	if p.keyed.Load() < maxKeyed {
		if v, loaded := p.apis.LoadOrStore(name, a); loaded {
			return v.(*sharedAPI)
		}
		p.keyed.Add(1)
	}
	return a
}

// learn keeps the fleet's ceiling as a reply gave it (milli-calls/s, its
// start in Redis's ms, Redis's now in ms).
func (a *sharedAPI) learn(ceilMilli, from, nowMS int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ceil, a.from = float64(ceilMilli)/1000, from
	a.fromLocal = time.Now().Add(time.Duration(from-nowMS) * time.Millisecond)
}

// window is the window api's turns run in now: (n, span), the rate, the
// ceiling's start it was computed from, and whether the climb reached the
// configured rate (the ceiling is to be forgotten).
func (a *sharedAPI) window(s *pacing.Settings) (n int, span time.Duration, rate float64, from int64, clear bool) {
	if a.robot {
		n = s.RobotPerMinute
		if n <= 0 {
			n = dingtalk.RobotPerMinute
		}
		return n, time.Minute, float64(n) / 60, 0, false
	}
	a.mu.Lock()
	ceil, from, fromLocal := a.ceil, a.from, a.fromLocal
	a.mu.Unlock()
	rate, learned := s.PerAPIQPS, false
	if ceil > 0 {
		rate, learned = pacing.Learned(ceil, time.Since(fromLocal).Seconds(), s.PerAPIQPS)
	}
	n, span = pacing.Window(rate, learned)
	return n, span, rate, from, ceil > 0 && !learned
}

// Wait books a turn in Redis (one round trip) and waits for it; with Redis
// down it is Local.Wait. A turn that a penalty met by any proxy voids
// (Local knows: its own answers and the fleet's penalty messages) is booked
// again.
func (p *Pacer) Wait(ctx context.Context, api string, earliest, deadline time.Time) error {
	for range 4 {
		wait, err := p.take(ctx, api, earliest, deadline)
		if err != nil {
			if _, ok := err.(*pacing.PacedError); ok {
				return err
			}
			return p.Local.Wait(ctx, api, earliest, deadline)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		// A penalty met meanwhile (here, or by another proxy) voids a turn
		// inside it: book again after it.
		until := p.Local.BlockedUntil(api)
		if !until.After(time.Now()) {
			return nil
		}
		earliest = until
	}
	return nil
}

// take runs the take script: the wait until the booked turn, or a
// *pacing.PacedError, or another error (Redis down: alone). A reply that
// the ceiling changed is computed again once more.
func (p *Pacer) take(ctx context.Context, api string, earliest, deadline time.Time) (time.Duration, error) {
	s := p.set.Load()
	a := p.api(api)
	gn, gspan := pacing.Window(s.GlobalQPS, false)
	for range 3 {
		n, span, rate, from, clear := a.window(s)
		now := time.Now()
		at := max(0, earliest.Sub(now).Microseconds())
		most := maxAhead.Microseconds()
		if !deadline.IsZero() {
			most = min(most, max(0, deadline.Sub(now).Microseconds()))
		}
		count := "1"
		if a.robot {
			count = "0"
		}
		member := strconv.FormatUint(p.seq.Add(1), 36) + p.fleet.events.id
		var res []int64
		err := p.fleet.do(ctx, OpPace, func(ctx context.Context) (err error) {
			res, err = takeScript.Run(ctx, p.fleet.rdb, a.keys, at, most, n, span.Microseconds(), gn, gspan.Microseconds(),
				member, from, strconv.FormatFloat(rate, 'f', 3, 64), flag(clear), count,
				maxAhead.Microseconds(), maxPenalty.Milliseconds()).Int64Slice()
			return err
		})
		if err != nil {
			return 0, err
		}
		if len(res) != 6 {
			return 0, fmt.Errorf("fleet: take: unexpected reply %v", res)
		}
		if res[5] > 0 {
			p.fleet.failed(OpPace) // values out of bounds, dropped
		}
		wait := time.Duration(res[1]) * time.Microsecond
		switch res[0] {
		case 1:
			if clear {
				a.learn(0, 0, res[4])
			}
			return wait, nil
		case 0:
			return 0, &pacing.PacedError{Path: api, Wait: wait}
		}
		a.learn(res[2], res[3], res[4]) // the ceiling changed: again
	}
	return 0, fmt.Errorf("fleet: take: the ceiling of %s keeps changing", api)
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Next is Local's estimate: a retry that would wait past its deadline is
// not made (shared mode's own turns are booked in Wait).
func (p *Pacer) Next(api string, earliest time.Time) time.Time {
	return p.Local.Next(api, earliest)
}

// Answered tells Local (always) and, for a throttle, the fleet: the
// penalty blocks the API for every proxy and teaches the fleet its ceiling.
func (p *Pacer) Answered(api string, r dingtalk.Result) pacing.Change {
	c := p.Local.Answered(api, r)
	var kind string
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		kind = "rate"
	case dingtalk.ReasonMinuteLimit, dingtalk.ReasonRobotThrottled:
		kind = "block"
	default:
		return c
	}
	if !p.fleet.Up() {
		return c
	}
	d := min(time.Until(dingtalk.Penalty(r, time.Now())), maxPenalty)
	s := p.set.Load()
	sh := pacing.TheShape
	a := p.api(api)
	var res []int64
	err := p.fleet.do(context.Background(), OpPenalty, func(ctx context.Context) (err error) {
		res, err = penaltyScript.Run(ctx, p.fleet.rdb, a.keys[:2], kind, d.Milliseconds(), s.PerAPIQPS,
			sh.Beta, sh.Floor, sh.Margin, sh.MinMeasured, p.fleet.key("events"), p.fleet.events.id, api,
			maxPenalty.Milliseconds(), maxAhead.Microseconds()).Int64Slice()
		return err
	})
	if err != nil {
		p.fleet.log.Debug("fleet: could not share a penalty", zap.String("error", redactErr(err)))
		return c
	}
	if len(res) != 5 {
		return c
	}
	if res[4] > 0 {
		p.fleet.failed(OpPenalty) // values out of bounds, dropped
	}
	if kind == "rate" {
		a.learn(res[1], res[2], res[3])
	}
	return c
}
