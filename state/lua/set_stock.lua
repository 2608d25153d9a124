-- set_stock.lua: replace one SKU's stock levels atomically (catalog load).
--
-- KEYS: KEYS[1] = the SKU's stock hash.
-- ARGV: pairs of (location id, units >= 0), and of (NUL-prefixed rule, value).
-- Returns: the number of locations written. The SKU exists afterwards even with no locations.
if #ARGV % 2 ~= 0 then return redis.error_reply('ERR set_stock.lua: odd arguments') end
for i = 2, #ARGV, 2 do
  local q = tonumber(ARGV[i])
  if not q or q < 0 or q ~= math.floor(q) then
    return redis.error_reply('ERR set_stock.lua: bad units for ' .. ARGV[i - 1])
  end
end
-- A SKU still at or below its low-stock threshold stays alerted: no second alert for it.
local alerted = redis.call('HGET', KEYS[1], '\0alerted')
local units, low = 0, nil
for i = 1, #ARGV, 2 do
  local q = tonumber(ARGV[i + 1])
  if ARGV[i] == '\0low' then low = q
  elseif string.byte(ARGV[i], 1) ~= 0 then units = units + q end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '\0sku', '1', unpack(ARGV))
if alerted and low and units <= low then redis.call('HSET', KEYS[1], '\0alerted', 1) end
return #ARGV / 2
