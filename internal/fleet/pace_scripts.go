package fleet

import "github.com/redis/go-redis/v9"

// The shared pacer's Redis scripts (pace.go runs them).

// checkLua is the scripts' common part: the checks of what they read. bad
// counts what was dropped; num(p, i, name, lo, hi) is field i of an HMGET
// reply p as a number within [lo, hi], or nil (the field is then listed in
// drop, to be deleted, when it was there); typed(k, ty) deletes k if it
// holds another type than ty; keep(k, ms) gives k an expiry of at most ms
// if it has none or a longer one; paired(ceil, from) keeps the learned
// ceiling and its start only together (0, 0 for none).
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
local function paired(ceil, from)
  if ceil and not from then
    drop[#drop + 1] = 'ceil'
    ceil = nil
  elseif from and not ceil then
    drop[#drop + 1] = 'from'
    from = nil
  end
  return ceil or 0, from or 0
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
ceil, from = paired(ceil, from)
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
ceil, from = paired(ceil, from)
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
