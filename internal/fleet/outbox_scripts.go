package fleet

import "github.com/redis/go-redis/v9"

// The shared outbox's scripts. Each checks the types of the keys it
// touches first (a key of another type is not the fleet's: it is deleted,
// and the script says so, to be counted), and every value it reads back
// before it writes anything, so that a hostile value never leaves half a
// change behind.

// outboxPrelude is shared by the scripts: fix deletes a key of a type other
// than want and returns 1 for it; num reads a counter (nil for a value
// that is not one); dec takes c off a counter, dropping it at zero.
const outboxPrelude = `
local function fix(k, want)
  local t = redis.call('TYPE', k).ok
  if t ~= 'none' and t ~= want then
    redis.call('DEL', k)
    return 1
  end
  return 0
end
local function num(v)
  if v == false or v == nil then return 0 end
  if type(v) ~= 'string' or #v > 15 or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end
local function dec(k, f, c)
  local v = num(redis.call('HGET', k, f))
  if v == nil then return end
  if v - c <= 0 then
    redis.call('HDEL', k, f)
  else
    redis.call('HSET', k, f, v - c)
  end
end
-- recount rebuilds the counters in k from the queued sends' charges in qk
-- (a counter that did not read back): a charge that is not the fleet's is
-- counted as a whole queue's share, so that a bad value never lifts a
-- bound.
local function recount(qk, k, max)
  local fin = redis.call('HGET', k, 'fin')
  redis.call('DEL', k)
  if num(fin) ~= nil and fin ~= false then redis.call('HSET', k, 'fin', fin) end
  local quarter = math.floor(max / 4)
  local all, t = 0, {}
  local v = redis.call('HGETALL', qk)
  for i = 2, #v, 2 do
    local c, rd, qd = string.match(v[i], '^(%d+) (%x+) (%x+)$')
    c = tonumber(c)
    if c == nil or #rd ~= 16 or #qd ~= 16 then
      all = all + quarter
    else
      c = math.min(math.max(c, 1024), quarter)
      all = all + c
      t['r:' .. rd] = (t['r:' .. rd] or 0) + c
      t['q:' .. qd] = (t['q:' .. qd] or 0) + c
    end
  end
  redis.call('HSET', k, 'all', all)
  for f, c in pairs(t) do redis.call('HSET', k, f, c) end
end
-- admit charges c to the send's route and queue if it fits: max in all,
-- half of it per route, a quarter per queue. Returns fits, bad.
local function admit(qk, k, c, rd, qd, max)
  local bad = 0
  local rf, qf = 'r:' .. rd, 'q:' .. qd
  local cur = redis.call('HMGET', k, 'all', rf, qf)
  local all, r, q = num(cur[1]), num(cur[2]), num(cur[3])
  if all == nil or r == nil or q == nil then
    bad = 1
    recount(qk, k, max)
    cur = redis.call('HMGET', k, 'all', rf, qf)
    all, r, q = num(cur[1]), num(cur[2]), num(cur[3])
  end
  if all + c > max or r + c > math.floor(max / 2) or q + c > math.floor(max / 4) then
    return false, bad
  end
  redis.call('HINCRBY', k, 'all', c)
  redis.call('HINCRBY', k, rf, c)
  redis.call('HINCRBY', k, qf, c)
  return true, bad
end
`

// putScript keeps a send: KEYS stream, records, queued, counters, first,
// canary; ARGV id, record, charge, route digest, queue digest, max bytes,
// group, canary. The record, the stream's entry and the entry's id (the
// send's place in its queue, kept while the record is) are written
// together or not at all, and only under the canary the proxy opened.
// Returns {1 kept | -1 full | -2 the id is taken | -9 another canary, bad}.
var putScript = redis.NewScript(outboxPrelude + `
if redis.call('TYPE', KEYS[6]).ok ~= 'string' or redis.call('GET', KEYS[6]) ~= ARGV[8] then return {-9, 0} end
local bad = fix(KEYS[1], 'stream') + fix(KEYS[2], 'hash') + fix(KEYS[3], 'hash') + fix(KEYS[4], 'hash') + fix(KEYS[5], 'hash')
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {-2, bad} end
local c, max = tonumber(ARGV[3]), tonumber(ARGV[6])
local ok, b = admit(KEYS[3], KEYS[4], c, ARGV[4], ARGV[5], max)
bad = bad + b
if not ok then return {-1, bad} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
local sid = redis.call('XADD', KEYS[1], '*', 'i', ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], sid)
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[7], '0')
return {1, bad}
`)

// settleScript settles a Put whose answer was lost: KEYS records, finished
// (delivered); ARGV id, now (ms). Returns 1 when the send is kept; else it
// leaves a tombstone under the id, so that the Put, should it still run,
// keeps nothing, and returns 0.
var settleScript = redis.NewScript(outboxPrelude + `
fix(KEYS[1], 'hash')
fix(KEYS[2], 'zset')
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HGET', KEYS[1], ARGV[1]) == 'x' then return 0 end
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], 'x')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 0
`)

// leaseScript takes or renews the courier's lease: KEYS lease, canary;
// ARGV the holder's value, ttl (ms), the canary the proxy opened. A lease
// of another type, without an expiry or longer than any proxy sets is not
// the fleet's: broken. Returns {1 renewed | 2 taken | 0 held by another |
// -9 another canary (nothing done), bad}.
var leaseScript = redis.NewScript(`
if redis.call('TYPE', KEYS[2]).ok ~= 'string' or redis.call('GET', KEYS[2]) ~= ARGV[3] then return {-9, 0} end
local bad = 0
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'none' and t ~= 'string' then
  redis.call('DEL', KEYS[1])
  bad = 1
elseif t == 'string' then
  local p = redis.call('PTTL', KEYS[1])
  if p < 0 or p > tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[1])
    bad = 1
  end
end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, bad}
end
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, bad}
end
return {0, bad}
`)

// releaseScript gives the lease up: KEYS lease; ARGV the holder's value.
var releaseScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
`)

// beginScript marks a send as being sent, if this proxy holds the lease
// and the record is as read: KEYS lease, records; ARGV holder, id, old
// record, new record. Returns 1, -1 (the lease is not held) or -2 (the
// record changed).
var beginScript = redis.NewScript(outboxPrelude + `
if fix(KEYS[1], 'string') + fix(KEYS[2], 'hash') > 0 then return -3 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return -2 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
`)

// updateScript records what a send came to, if this proxy holds the lease
// and the record is as read: KEYS lease, records, queued, counters,
// stream, finished (the zset the new state is pruned from); ARGV holder,
// id, old record, new record, finished (1) or queued again (0), charge,
// route digest, queue digest, stream entry, group, now (ms). A finished
// send's entry is acknowledged and deleted, its charge given back, its
// record's size counted as finished. Returns 1, -1, -2 as beginScript.
var updateScript = redis.NewScript(outboxPrelude + `
if fix(KEYS[1], 'string') + fix(KEYS[2], 'hash') > 0 then return -3 end
fix(KEYS[3], 'hash')
fix(KEYS[4], 'hash')
fix(KEYS[5], 'stream')
fix(KEYS[6], 'zset')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then return -2 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
if ARGV[5] == '1' then
  if redis.call('HDEL', KEYS[3], ARGV[2]) == 1 then
    local c = tonumber(ARGV[6])
    dec(KEYS[4], 'all', c)
    dec(KEYS[4], 'r:' .. ARGV[7], c)
    dec(KEYS[4], 'q:' .. ARGV[8], c)
  end
  redis.call('XACK', KEYS[5], ARGV[10], ARGV[9])
  redis.call('XDEL', KEYS[5], ARGV[9])
  redis.call('ZADD', KEYS[6], ARGV[11], ARGV[2])
  local fin = num(redis.call('HGET', KEYS[4], 'fin'))
  if fin ~= nil then redis.call('HSET', KEYS[4], 'fin', fin + #ARGV[4]) end
end
return 1
`)

// dropScript drops a stream entry that is not (or no longer) a queued
// send's, and the record that did not read back, if still as read, and
// only under the canary the proxy opened: KEYS stream, records, queued,
// first, canary; ARGV group, entry (empty: none), id (empty: none), old record,
// canary. Its charge is not given back (it may not be the fleet's): the
// counters start again from zero once nothing is queued. Returns 0, or -9
// (another canary: nothing dropped).
var dropScript = redis.NewScript(outboxPrelude + `
if redis.call('TYPE', KEYS[5]).ok ~= 'string' or redis.call('GET', KEYS[5]) ~= ARGV[5] then return -9 end
if ARGV[2] ~= '' and fix(KEYS[1], 'stream') == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
if ARGV[3] ~= '' and fix(KEYS[2], 'hash') == 0 and redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[4] then
  redis.call('HDEL', KEYS[2], ARGV[3])
  if fix(KEYS[3], 'hash') == 0 then redis.call('HDEL', KEYS[3], ARGV[3]) end
  if fix(KEYS[4], 'hash') == 0 then redis.call('HDEL', KEYS[4], ARGV[3]) end
end
return 0
`)

// retryScript puts a dead or unknown send back in its queue, if it fits
// and its record is as read: KEYS records, queued, counters, stream,
// delivered, dead, first; ARGV id, old record, new record, charge, route
// digest, queue digest, max bytes, group. Its new stream entry is read
// in the place of its first (kept in first: the courier orders a queue
// by it), so that it goes before the sends kept after it, as on disk; a
// send kept before first was written has the new entry's place. Returns
// {1 | -1 full | -2 changed, bad}.
var retryScript = redis.NewScript(outboxPrelude + `
local bad = fix(KEYS[1], 'hash') + fix(KEYS[2], 'hash') + fix(KEYS[3], 'hash') + fix(KEYS[4], 'stream') + fix(KEYS[5], 'zset') + fix(KEYS[6], 'zset') + fix(KEYS[7], 'hash')
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return {-2, bad} end
local ok, b = admit(KEYS[2], KEYS[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7]))
bad = bad + b
if not ok then return {-1, bad} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
dec(KEYS[3], 'fin', #ARGV[2])
local sid = redis.call('XADD', KEYS[4], '*', 'i', ARGV[1])
redis.call('HSETNX', KEYS[7], ARGV[1], sid)
redis.pcall('XGROUP', 'CREATE', KEYS[4], ARGV[8], '0')
return {1, bad}
`)

// deleteScript forgets a send, if its record is as read: KEYS records,
// queued, counters, delivered, dead, first; ARGV id, old record, charge (” for a
// record that did not read back), route digest, queue digest. A queued
// send's stream entry is left to the courier, which drops entries without
// a queued record. Returns 1 or -2.
var deleteScript = redis.NewScript(outboxPrelude + `
local bad = fix(KEYS[1], 'hash') + fix(KEYS[2], 'hash') + fix(KEYS[3], 'hash') + fix(KEYS[4], 'zset') + fix(KEYS[5], 'zset') + fix(KEYS[6], 'hash')
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -2 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
  if ARGV[3] ~= '' then
    local c = tonumber(ARGV[3])
    dec(KEYS[3], 'all', c)
    dec(KEYS[3], 'r:' .. ARGV[4], c)
    dec(KEYS[3], 'q:' .. ARGV[5], c)
  end
else
  dec(KEYS[3], 'fin', #ARGV[2])
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
`)

// pruneScript forgets finished sends: KEYS records, queued, counters,
// delivered, dead, stream, first; ARGV delivered before (ms), dead before (ms),
// most finished, most finished bytes, most forgotten in one run. Past the
// counts, the oldest delivered go first, then the oldest dead and unknown.
// A name in the finished sets that is a queued send's is only taken out
// of the set. With nothing queued, the counters of queued bytes start
// again from zero (a charge that leaked: a record dropped). Returns how
// many were forgotten.
var pruneScript = redis.NewScript(outboxPrelude + `
fix(KEYS[1], 'hash')
fix(KEYS[2], 'hash')
fix(KEYS[3], 'hash')
fix(KEYS[4], 'zset')
fix(KEYS[5], 'zset')
fix(KEYS[6], 'stream')
fix(KEYS[7], 'hash')
local limit = tonumber(ARGV[5])
local n = 0
local function forget(z, id)
  redis.call('ZREM', z, id)
  n = n + 1
  if redis.call('HEXISTS', KEYS[2], id) == 1 then return end
  dec(KEYS[3], 'fin', redis.call('HSTRLEN', KEYS[1], id))
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[7], id)
end
for _, z in ipairs({{KEYS[4], ARGV[1]}, {KEYS[5], ARGV[2]}}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', z[1], '-inf', z[2], 'LIMIT', 0, limit)) do
    if n >= limit then break end
    forget(z[1], id)
  end
end
while n < limit do
  local nd, nx = redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5])
  local fin = num(redis.call('HGET', KEYS[3], 'fin'))
  if fin == nil then
    redis.call('HDEL', KEYS[3], 'fin')
    fin = 0
  end
  if nd + nx <= tonumber(ARGV[3]) and fin <= tonumber(ARGV[4]) then break end
  local z = KEYS[4]
  if nd == 0 then z = KEYS[5] end
  local m = redis.call('ZRANGE', z, 0, 0)
  if #m == 0 then
    redis.call('HDEL', KEYS[3], 'fin')
    break
  end
  forget(z, m[1])
end
if redis.call('XLEN', KEYS[6]) == 0 and redis.call('HLEN', KEYS[2]) == 0 then
  for _, f in ipairs(redis.call('HKEYS', KEYS[3])) do
    if f ~= 'fin' then redis.call('HDEL', KEYS[3], f) end
  end
end
return n
`)

// ensureScript readies the stream and its group: KEYS stream, records,
// queued, counters, delivered, dead, lease, first; ARGV group. Returns how many
// keys of another type it deleted.
var ensureScript = redis.NewScript(outboxPrelude + `
local bad = fix(KEYS[1], 'stream') + fix(KEYS[2], 'hash') + fix(KEYS[3], 'hash') + fix(KEYS[4], 'hash') + fix(KEYS[5], 'zset') + fix(KEYS[6], 'zset') + fix(KEYS[7], 'string') + fix(KEYS[8], 'hash')
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return bad
`)
