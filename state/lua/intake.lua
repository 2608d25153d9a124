-- intake.lua: append accepted webhook events to one input shard, each at most once.
--
-- KEYS: KEYS[1] = the shard's input stream; KEYS[2..] = one dedup key per event that has a
--       delivery id (in the shard's slot: `os:{s<N>}:hook:<source>:<delivery id>`).
-- ARGV: ttl (seconds a delivery id is remembered), n, then per event: its dedup key index
--       into KEYS (0: none, always appended) and its raw canonical JSON.
-- Returns: {stream length after the appends, then per event 1 appended or 0 a duplicate of
--          an earlier delivery (nothing appended)}.
-- One call per shard per group commit: every event of it is appended, or (a failing call)
-- none is; a duplicate delivery inside the same call is caught too.
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if not ttl or not n or #ARGV ~= 2 + 2 * n then
  return redis.error_reply('ERR intake.lua: bad arguments')
end
for i = 1, n do
  local k = tonumber(ARGV[1 + 2 * i])
  if not k or k < 0 or k > #KEYS or k == 1 then
    return redis.error_reply('ERR intake.lua: bad dedup key index for event #' .. i)
  end
end
local out = { 0 }
for i = 1, n do
  local k = tonumber(ARGV[1 + 2 * i])
  local fresh = k == 0 or redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl)
  if fresh then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[2 + 2 * i])
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
out[1] = redis.call('XLEN', KEYS[1])
return out
