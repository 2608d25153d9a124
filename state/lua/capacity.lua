-- capacity.lua: count an order against a location's daily capacity, once
-- (dataflows/fulfilment.py, docs/fulfilment.md "Daily capacity").
--
-- KEYS: 1 the location's day hash (keys.capacity: order id -> 1).
-- ARGV: the capacity, the seconds the hash is kept, then order ids.
-- Returns per order id: 1 counted (now or before), 0 the day is full. The hash only grows
-- within its day, so a full day stays full and an order's answer never changes: a replay
-- gets the same answer.
local cap, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
if not cap or not keep then return redis.error_reply('ERR capacity.lua: bad arguments') end
local out = {}
local n = redis.call('HLEN', KEYS[1])
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    out[#out + 1] = 1
  elseif n < cap then
    redis.call('HSET', KEYS[1], ARGV[i], 1)
    n = n + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if n > 0 then redis.call('EXPIRE', KEYS[1], keep) end
return out
