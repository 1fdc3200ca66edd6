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
// per_api_qps on each API and global_qps in all. The engine is GCRA, as in
// github.com/go-redis/redis_rate, but in a script of our own: redis_rate
// answers allow/deny for one key, while a call here needs the later of two
// keys' turns (its API's and the global one), a penalty end, the learned
// rate's climb, and a booked turn it can sleep until rather than a retry
// loop of its own. Robots are a sliding log instead (a sorted set of send
// times): DingTalk's 20 a minute holds in any minute, which GCRA's burst
// would overshoot. A throttle answer (the penalty script, only then) blocks
// the API for every proxy and lowers the shared learned rate, by the same
// curve as the local pacer's (pacing.TheShape), from what the fleet sent in
// the current second.

// takeScript books one turn. KEYS: the API's hash (or the robot's sorted
// set), the robot's block key (robots only), the global hash.
// ARGV: kind ("api" | "robot"), earliest (ms from now), most wait (ms;
// -1: none), the API's configured rate, the global rate, the robot's n a
// minute, beta, floor, margin, K, C, hold, a unique member (robots).
// Returns {1, wait ms} for a turn booked wait ms from now, or {0, wait ms}
// when the turn would come past the most wait (nothing booked).
var takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
local at = now + tonumber(ARGV[2])
local most = tonumber(ARGV[3])
local cfg = tonumber(ARGV[4])
local grate = tonumber(ARGV[5])
local beta, floor, margin = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local K, C, hold = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])

local function burst(rate, per)
  return math.max(1, math.floor(rate - math.floor(per)))
end

-- the global GCRA's earliest turn at or after at
local g = redis.call('HMGET', KEYS[3], 'tat')
local gper = grate * margin
local gT = 1000 / gper
local gtat = tonumber(g[1]) or 0
local gtau = (burst(grate, gper) - 1) * gT

if kind == 'robot' then
  local blk = tonumber(redis.call('GET', KEYS[2]) or '0')
  if blk > at then at = blk end
  local n = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  local c = redis.call('ZCARD', KEYS[1])
  if c >= n then
    local kth = redis.call('ZRANGE', KEYS[1], c - n, c - n, 'WITHSCORES')
    local free = tonumber(kth[2]) + 60000
    if free > at then at = free end
  end
  if gtat - gtau > at then at = gtat - gtau end
  if most >= 0 and at - now > most then return {0, at - now} end
  redis.call('ZADD', KEYS[1], at, ARGV[13])
  redis.call('PEXPIRE', KEYS[1], 120000)
  redis.call('HSET', KEYS[3], 'tat', math.max(gtat, at) + gT)
  redis.call('PEXPIRE', KEYS[3], 60000)
  return {1, at - now}
end

local p = redis.call('HMGET', KEYS[1], 'tat', 'blk', 'ceil', 'from', 'sec', 'n', 'psec', 'pn')
local tat = tonumber(p[1]) or 0
local blk = tonumber(p[2]) or 0
local rate = cfg
local ceil = tonumber(p[3])
if ceil then
  local x = (now - tonumber(p[4])) / 1000
  local top = ceil * hold
  local r
  if x < 0 then
    r = ceil * beta
  elseif x < K then
    local d = 1 - x / K
    r = top - (top - ceil * beta) * d * d * d
  else
    local d = x - K
    r = top * (1 + C * d * d * d)
  end
  if r >= cfg then
    redis.call('HDEL', KEYS[1], 'ceil', 'from')
  else
    rate = math.max(floor, r)
  end
end
local per = rate * margin
local T = 1000 / per
local tau = (burst(rate, per) - 1) * T
if blk > at then at = blk end
-- the later of the API's and the global turn; each moves the other
for i = 1, 4 do
  local from = at
  if tat - tau > at then at = tat - tau end
  if gtat - gtau > at then at = gtat - gtau end
  if at == from then break end
end
if most >= 0 and at - now > most then return {0, at - now} end
local sec = math.floor(at / 1000)
local psec, ps, pn, n = tonumber(p[7]) or 0, tonumber(p[5]) or 0, tonumber(p[8]) or 0, tonumber(p[6]) or 0
if sec == ps then
  n = n + 1
elseif sec > ps then
  if sec == ps + 1 then psec, pn = ps, n else psec, pn = 0, 0 end
  ps, n = sec, 1
end
redis.call('HSET', KEYS[1], 'tat', math.max(tat, at) + T, 'sec', ps, 'n', n, 'psec', psec, 'pn', pn, 'rate', rate)
redis.call('PEXPIRE', KEYS[1], 600000)
redis.call('HSET', KEYS[3], 'tat', math.max(gtat, at) + gT)
redis.call('PEXPIRE', KEYS[3], 60000)
return {1, at - now}
`)

// penaltyScript records a throttle answer for the fleet. KEYS: the API's
// hash (or the robot's block key). ARGV: kind ("rate": 90018 and kin, the
// rate is learned; "block": a per-minute limit or a robot's block, only
// blocked), the penalty (ms from now), the API's configured rate, beta,
// floor, margin, min measured, the channel, this proxy's id, the API's name.
// Calls within a penalty already only extend it. Returns the penalty's end
// (ms from now) and the learned rate (0: none).
var penaltyScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = ARGV[1]
local untl = now + tonumber(ARGV[2])
local cfg, beta, floor, margin, minm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function publish()
  redis.call('PUBLISH', ARGV[8], 'pen ' .. ARGV[9] .. ' ' .. untl .. ' ' .. ARGV[10])
end
if kind == 'robot' then
  local blk = tonumber(redis.call('GET', KEYS[1]) or '0')
  if untl > blk then
    redis.call('SET', KEYS[1], untl, 'PX', untl - now + 1000)
    publish()
  end
  return {untl - now, 0}
end
local p = redis.call('HMGET', KEYS[1], 'blk', 'ceil', 'sec', 'n', 'psec', 'pn', 'tat', 'rate')
local blk = tonumber(p[1]) or 0
local tat = tonumber(p[7]) or 0
if now < blk then
  if untl > blk then
    redis.call('HSET', KEYS[1], 'blk', untl, 'tat', math.max(tat, untl))
    publish()
  end
  return {math.max(untl, blk) - now, tonumber(p[2]) or 0}
end
local ceil = 0
if kind == 'rate' then
  -- what the fleet sent: in the current second once half of it passed,
  -- else in the last whole one
  local sec = math.floor(now / 1000)
  local measured = nil
  if tonumber(p[3]) == sec and now - sec * 1000 >= 500 and (tonumber(p[4]) or 0) >= minm then
    measured = tonumber(p[4])
  elseif tonumber(p[3]) == sec and tonumber(p[5]) == sec - 1 and (tonumber(p[6]) or 0) >= minm then
    measured = tonumber(p[6])
  elseif tonumber(p[3]) == sec - 1 and (tonumber(p[4]) or 0) >= minm then
    measured = tonumber(p[4])
  end
  local cur = tonumber(p[8]) or cfg
  if cur > cfg then cur = cfg end
  ceil = cur
  if measured and measured / margin < ceil then ceil = measured / margin end
  if ceil < floor then ceil = floor end
  redis.call('HSET', KEYS[1], 'ceil', ceil, 'from', untl)
end
redis.call('HSET', KEYS[1], 'blk', untl, 'tat', math.max(tat, untl))
redis.call('PEXPIRE', KEYS[1], 600000)
publish()
return {untl - now, ceil}
`)

// Pacer paces through Redis while it answers, and through Local (this
// proxy's own pacer, which keeps learning from every answer) while it does
// not. It is a retry.Pacer.
type Pacer struct {
	Local *pacing.Pacer
	fleet *Fleet
	set   atomic.Pointer[pacing.Settings]
	seq   atomic.Uint64
	// apiKeys holds the Redis keys of the APIs seen (a digest and three
	// strings each), so a call does not hash its route again; at most
	// maxKeyed of them.
	apiKeys sync.Map // api -> []string
	keyed   atomic.Int64
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

func (p *Pacer) keys(api string) (kind string, keys []string) {
	f := p.fleet
	global := f.key("pace", "global")
	if rest, ok := strings.CutPrefix(api, pacing.RobotPrefix); ok {
		return "robot", []string{f.key("robot", rest), f.key("robotblk", rest), global}
	}
	if v, ok := p.apiKeys.Load(api); ok {
		return "api", v.([]string)
	}
	d := Digest(api)
	keys = []string{f.key("pace", d), f.key("pace", d, "unused"), global}
	if p.keyed.Load() < maxKeyed {
		if _, loaded := p.apiKeys.LoadOrStore(api, keys); !loaded {
			p.keyed.Add(1)
		}
	}
	return "api", keys
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
// *pacing.PacedError, or another error (Redis down: alone).
func (p *Pacer) take(ctx context.Context, api string, earliest, deadline time.Time) (time.Duration, error) {
	s := p.set.Load()
	sh := pacing.TheShape
	now := time.Now()
	from := max(0, earliest.Sub(now).Milliseconds())
	most := int64(-1)
	if !deadline.IsZero() {
		most = max(0, deadline.Sub(now).Milliseconds())
	}
	robotN := s.RobotPerMinute
	if robotN <= 0 {
		robotN = dingtalk.RobotPerMinute
	}
	kind, keys := p.keys(api)
	member := "" // a robot's send, in its sorted set
	if kind == "robot" {
		member = strconv.FormatUint(p.seq.Add(1), 36) + p.fleet.events.id
	}
	var res []int64
	err := p.fleet.do(ctx, OpPace, func(ctx context.Context) (err error) {
		res, err = takeScript.Run(ctx, p.fleet.rdb, keys, kind, from, most, s.PerAPIQPS, s.GlobalQPS, robotN,
			sh.Beta, sh.Floor, sh.Margin, sh.K, sh.C, sh.Hold, member).Int64Slice()
		return err
	})
	if err != nil {
		return 0, err
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("fleet: take: unexpected reply %v", res)
	}
	wait := time.Duration(res[1]) * time.Millisecond
	if res[0] == 0 {
		return 0, &pacing.PacedError{Path: api, Wait: wait}
	}
	return wait, nil
}

// Next is Local's estimate: a retry that would wait past its deadline is
// not made (shared mode's own turns are booked in Wait).
func (p *Pacer) Next(api string, earliest time.Time) time.Time {
	return p.Local.Next(api, earliest)
}

// Answered tells Local (always) and, for a throttle, the fleet: the
// penalty blocks the API for every proxy and lowers the shared rate.
func (p *Pacer) Answered(api string, r dingtalk.Result) pacing.Change {
	c := p.Local.Answered(api, r)
	var kind string
	switch r.Reason {
	case dingtalk.ReasonRateLimited, dingtalk.ReasonHTTP429:
		kind = "rate"
	case dingtalk.ReasonMinuteLimit:
		kind = "block"
	case dingtalk.ReasonRobotThrottled:
		kind = "robot"
	default:
		return c
	}
	if !p.fleet.Up() {
		return c
	}
	d := time.Until(dingtalk.Penalty(r, time.Now()))
	s := p.set.Load()
	sh := pacing.TheShape
	_, keys := p.keys(api)
	key := keys[0]
	if kind == "robot" {
		key = keys[1]
	}
	err := p.fleet.do(context.Background(), OpPenalty, func(ctx context.Context) error {
		return penaltyScript.Run(ctx, p.fleet.rdb, []string{key}, kind, d.Milliseconds(), s.PerAPIQPS,
			sh.Beta, sh.Floor, sh.Margin, sh.MinMeasured, p.fleet.key("events"), p.fleet.events.id, api).Err()
	})
	if err != nil {
		p.fleet.log.Debug("fleet: could not share a penalty", zap.String("error", redactErr(err)))
	}
	return c
}
