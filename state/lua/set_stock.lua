-- set_stock.lua: replace one SKU's stock levels atomically (catalog load).
--
-- KEYS: KEYS[1] = the SKU's stock hash.
-- ARGV: pairs of (location id, units >= 0).
-- Returns: the number of locations written. The SKU exists afterwards even with no locations.
if #ARGV % 2 ~= 0 then return redis.error_reply('ERR set_stock.lua: odd arguments') end
for i = 2, #ARGV, 2 do
  local q = tonumber(ARGV[i])
  if not q or q < 0 or q ~= math.floor(q) then
    return redis.error_reply('ERR set_stock.lua: bad units for ' .. ARGV[i - 1])
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '\0sku', '1', unpack(ARGV))
return #ARGV / 2
