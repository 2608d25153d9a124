-- gift.lua: take one unit of a gift SKU for each winning rank, at most once per rank.
--
-- KEYS: KEYS[1] the gift SKU's stock hash, KEYS[2] its taken hash ("<campaign>\31<order id>"
--       -> location, or "\0-" when no unit was left: state/keys.py GIFT_NONE).
-- ARGV: n, then per winner: its key, the number of candidate locations, and those locations
--       in order of preference (the order's shipping location first, then by distance).
-- Returns per winner the location its unit comes from, or "\0-" (none left: nothing taken).
-- A winner asked again gets its first answer back and takes nothing more. Units never go
-- below zero; the stock hash's marker and rule fields are untouched.
local n = tonumber(ARGV[1])
if not n then return redis.error_reply('ERR gift.lua: bad arguments') end
local out, p = {}, 2
for i = 1, n do
  local key, ncand = ARGV[p], tonumber(ARGV[p + 1])
  if not key or not ncand then return redis.error_reply('ERR gift.lua: bad winner #' .. i) end
  local got = redis.call('HGET', KEYS[2], key)
  if not got then
    got = GIFT_NONE
    for j = 1, ncand do
      local loc = ARGV[p + 1 + j]
      if tonumber(redis.call('HGET', KEYS[1], loc) or '0') >= 1 then
        redis.call('HINCRBY', KEYS[1], loc, -1)
        redis.call('HINCRBY', KEYS[1], STOCK_UP, 1) -- (lib_stock.lua add_units)
        got = loc
        break
      end
    end
    redis.call('HSET', KEYS[2], key, got)
  end
  out[i] = got
  p = p + 2 + ncand
end
return out
