-- payments.lua: a shard's reserved orders (dataflows/payments.py, docs/payments.md): record
-- the batch's new ones, then say which are due to expire.
--
-- KEYS (one slot): 1 registry hash (this generation's: written), 2 deadlines ZSET (order id
--       scored by its deadline, epoch ms), 3 input stream, 4 and 5 the registry hashes of
--       the generations before and after (read: state/gens.py).
-- ARGV: the last input entry id this worker processed on the shard ("" for none), the most
--       due orders to answer, n, then per new reserved order: order id, deadline ms, its
--       channel and delivery mode (SEP-joined: the later versions of its record carry them);
--       then m and m order ids paid in this batch: they leave the deadlines (a replay of
--       the payment, which is accepted again, does not need its deadline).
-- An order is due when its deadline is before the input stream's horizon (lib_clock.lua): a
--       `paid` event stored by its deadline has then been read (and decided first, in its
--       batch). Prepended: lib_protocol.lua, lib_clock.lua.
-- Returns: per due order still reserved: order id, deadline ms, channel SEP mode. Orders no
--       longer reserved (paid, expired, cancelled) leave the set; one a cancel is giving
--       back stays, unanswered; ones whose record is not
--       written yet stay (their batch is on its way).
-- a registry field in this generation or the one before (nil: neither)
local function reg(field)
  return redis.call('HGET', KEYS[5], field) or redis.call('HGET', KEYS[1], field)
      or redis.call('HGET', KEYS[4], field) or nil
end
local n = tonumber(ARGV[3])
local limit = tonumber(ARGV[2])
local gone = n and tonumber(ARGV[4 + 3 * n])
if not gone or not limit or #ARGV ~= 4 + 3 * n + gone then
  return redis.error_reply('ERR payments.lua: bad arguments')
end
for i = 0, n - 1 do
  local oid, deadline, how = ARGV[4 + 3 * i], tonumber(ARGV[5 + 3 * i]), ARGV[6 + 3 * i]
  if not deadline then return redis.error_reply('ERR payments.lua: bad deadline') end
  redis.call('ZADD', KEYS[2], deadline, oid)
  redis.call('HSET', KEYS[1], REG_PENDING .. oid, how)
end
for i = 5 + 3 * n, 4 + 3 * n + gone do redis.call('ZREM', KEYS[2], ARGV[i]) end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. horizon(KEYS[3], ARGV[1]), 'WITHSCORES', 'LIMIT', 0, limit)
local out = {}
for i = 1, #due, 2 do
  local oid = due[i]
  local value = reg(oid)
  local reserved = value and string.sub(value, 1, 1) == RESERVED
  if reserved and not reg(REG_CANCEL .. oid) then
    if not reg(REG_CANCELLING .. oid) then -- (else: a cancel's replay ends it)
      out[#out + 1] = oid
      out[#out + 1] = due[i + 1]
      out[#out + 1] = reg(REG_PENDING .. oid) or ''
    end
  elseif value then
    redis.call('ZREM', KEYS[2], oid)
    redis.call('HDEL', KEYS[1], REG_PENDING .. oid)
    redis.call('HDEL', KEYS[4], REG_PENDING .. oid)
    redis.call('HDEL', KEYS[5], REG_PENDING .. oid)
  end
end
return out
