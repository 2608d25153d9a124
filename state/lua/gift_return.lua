-- gift_return.lua: put back the gift units of cancelled winners (one gift SKU, idempotent).
--
-- KEYS: KEYS[1] the gift SKU's stock hash, KEYS[2] its taken hash ("<campaign>\31<order id>"
--       -> location; "~<location>" once given back; "-" when none was taken).
-- ARGV: the keys of the cancelled winners.
-- Returns per key 1 (a unit went back to its location) or 0 (none taken, or already back).
local out = {}
for i, key in ipairs(ARGV) do
  local loc = redis.call('HGET', KEYS[2], key)
  if loc and loc ~= '-' and string.sub(loc, 1, 1) ~= '~' then
    redis.call('HINCRBY', KEYS[1], loc, 1)
    redis.call('HSET', KEYS[2], key, '~' .. loc)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
