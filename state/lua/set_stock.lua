-- set_stock.lua: replace one SKU's stock levels and rules atomically (catalog load).
--
-- KEYS: KEYS[1] = the SKU's stock hash.
-- ARGV: pairs of (location id, units >= 0), and of (NUL-prefixed rule, value); a channel lock
--       is the pair of rules '\0Lq:<channel>' (units) and '\0Lu:<channel>' (until, epoch ms).
-- Returns: the number of pairs written. The SKU exists afterwards even with no locations.
-- Kept from before: the open low-stock alert while the SKU stays at or below its threshold,
-- and what each channel already drew from its lock ('\0Lc:<channel>') while the SKU keeps a
-- lock for that channel. Everything else is replaced.
if #ARGV % 2 ~= 0 then return redis.error_reply('ERR set_stock.lua: odd arguments') end
for i = 2, #ARGV, 2 do
  local q = tonumber(ARGV[i])
  if not q or q < 0 or q ~= math.floor(q) then
    return redis.error_reply('ERR set_stock.lua: bad units for ' .. ARGV[i - 1])
  end
end
local old = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #old, 2 do
  if string.sub(old[i], 1, 4) == '\0Lc:' then kept[string.sub(old[i], 5)] = old[i + 1] end
end
local units, low, extra = 0, nil, {}
for i = 1, #ARGV, 2 do
  local f, q = ARGV[i], tonumber(ARGV[i + 1])
  if f == '\0low' then low = q
  elseif string.byte(f, 1) ~= 0 then units = units + q
  elseif string.sub(f, 1, 4) == '\0Lq:' and kept[string.sub(f, 5)] then
    extra[#extra + 1] = '\0Lc:' .. string.sub(f, 5)
    extra[#extra + 1] = kept[string.sub(f, 5)]
  end
end
-- A SKU still at or below its low-stock threshold stays alerted: no second alert for it.
local alerted = redis.call('HGET', KEYS[1], '\0alerted')
if alerted and low and units <= low then
  extra[#extra + 1] = '\0alerted'
  extra[#extra + 1] = 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '\0sku', '1', unpack(ARGV))
if #extra > 0 then redis.call('HSET', KEYS[1], unpack(extra)) end
return #ARGV / 2
