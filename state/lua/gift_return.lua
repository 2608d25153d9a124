-- gift_return.lua: put back the gift units of cancelled winners (one gift SKU, idempotent).
--
-- KEYS: KEYS[1] the gift SKU's stock hash, KEYS[2] its taken hash ("<campaign>\31<order id>"
--       -> location; "\0b:<location>" once given back; "\0-" when none was taken: every
--       marker starts with NUL, which no location id does).
-- ARGV: the keys of the cancelled winners.
-- Returns per key 1 (a unit went back to its location) or 0 (none taken, or already back).
local out = {}
for i, key in ipairs(ARGV) do
  local loc = redis.call('HGET', KEYS[2], key)
  if loc and string.byte(loc, 1) ~= 0 then
    redis.call('HINCRBY', KEYS[1], loc, 1)
    redis.call('HINCRBY', KEYS[1], STOCK_UP, 1) -- (lib_stock.lua add_units)
    redis.call('HSET', KEYS[2], key, GIFT_BACK .. loc)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
