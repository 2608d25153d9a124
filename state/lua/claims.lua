-- claims.lua: a shard's shipments waiting to be claimed at locations with a claim timeout
-- (dataflows/fulfilment.py, docs/fulfilment.md): record the batch's new ones, drop the
-- settled ones, then say which are due. Prepended: lib_protocol.lua, lib_clock.lua.
--
-- KEYS (one slot): 1 claims ZSET ("<order id> SEP <location>" scored by its deadline, epoch
--       ms), 2 input stream.
-- ARGV: the last input entry id this worker processed on the shard ("" for none), the most
--       due claims to answer, n, then n pairs (member, deadline ms): added unless present (a
--       shipment's clock starts once, when it is first routed there); then m members that
--       leave the set (claimed, shipped, rejected, or their order moved on).
-- Returns: the due members (deadline before the input stream's horizon: a claim stored by
--       its deadline has then been read) with their deadlines, flat.
local n, limit = tonumber(ARGV[3]), tonumber(ARGV[2])
local m = n and tonumber(ARGV[4 + 2 * n])
if not m or not limit or #ARGV ~= 4 + 2 * n + m then return redis.error_reply('ERR claims.lua: bad arguments') end
for i = 0, n - 1 do
  local deadline = tonumber(ARGV[5 + 2 * i])
  if not deadline then return redis.error_reply('ERR claims.lua: bad deadline') end
  redis.call('ZADD', KEYS[1], 'NX', deadline, ARGV[4 + 2 * i])
end
for i = 5 + 2 * n, 4 + 2 * n + m do redis.call('ZREM', KEYS[1], ARGV[i]) end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. horizon(KEYS[2], ARGV[1]), 'WITHSCORES', 'LIMIT', 0, limit)
