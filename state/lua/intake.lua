-- intake.lua: append accepted webhook deliveries to one input shard, each at most once.
--
-- KEYS: KEYS[1] = the shard's input stream; KEYS[2..] = one dedup key per delivery that has
--       an id (in the shard's slot: `os:{s<N>}:hook:<source>:<delivery id>`).
-- ARGV: ttl (seconds a delivery id is remembered), n (deliveries), then per delivery: its
--       dedup key index into KEYS (0: none, always appended), m (its events, >= 1) and its
--       m raw canonical JSON events.
-- Returns: {stream length after the appends, then per delivery 1 appended (all its events)
--          or 0 a duplicate of an earlier delivery (none of them appended)}.
-- One call per shard per group commit: every event of it is appended, or (a failing call)
-- none is; a duplicate delivery inside the same call is caught too. A delivery that maps to
-- several events (a refund restocking at two locations) is stored whole or not at all.
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if not ttl or not n then
  return redis.error_reply('ERR intake.lua: bad arguments')
end
local at = 3
for i = 1, n do
  local k, m = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  if not k or k < 0 or k > #KEYS or k == 1 then
    return redis.error_reply('ERR intake.lua: bad dedup key index for delivery #' .. i)
  end
  if not m or m < 1 or at + 1 + m > #ARGV then
    return redis.error_reply('ERR intake.lua: bad event count for delivery #' .. i)
  end
  at = at + 2 + m
end
if at ~= #ARGV + 1 then
  return redis.error_reply('ERR intake.lua: bad arguments')
end
local out = { 0 }
at = 3
for i = 1, n do
  local k, m = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local fresh = k == 0 or redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl)
  if fresh then
    for j = 1, m do
      redis.call('XADD', KEYS[1], '*', 'e', ARGV[at + 1 + j])
    end
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
  at = at + 2 + m
end
out[1] = redis.call('XLEN', KEYS[1])
return out
