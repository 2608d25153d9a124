-- release_parts.lua: undo this slot's part of orders that could not be reserved whole.
--
-- KEYS: as reserve_parts.lua (lib_stock.lua sku_key): per SKU i, K_STOCK stock hash,
--       K_RECORDS parts hash, K_BOUGHT units sold per customer, K_ALERTS alerts stream,
--       K_CANDIDATES campaign candidates (a released order's candidacy goes too), K_PROGRESS
--       campaign progress.
-- ARGV: nskus, sku names (nskus), norders, then per order: order_id, home (SKU index); last,
--       the mode: 'all', or 'rules' (an order reserved whole and rejected after its decision:
--       its units go back another way, dataflows/fulfilment.py).
-- Returns: how many parts were released: their units go back to the locations they came
-- from, leave the customer's count and go back into the channel's lock they were drawn from
-- (if the SKU still has one), the order's candidacy ends. Idempotent: releasing twice is a
-- no-op. In mode 'rules' the units stay; the part stays too, with nothing counted or drawn
-- any more (so again is a no-op: a replay still finds the order reserved whole).
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= SKU_KEYS * nskus then return redis.error_reply('ERR release_parts.lua: bad header') end
local index = {}
for i = 1, nskus do index[ARGV[1 + i]] = i end
local p = 2 + nskus
local norders = tonumber(ARGV[p])
if not norders or #ARGV ~= p + 2 * norders + 1 then return redis.error_reply('ERR release_parts.lua: bad orders') end
local mode = ARGV[#ARGV]
if mode ~= 'all' and mode ~= 'rules' then return redis.error_reply('ERR release_parts.lua: bad mode') end
local parsed = {}
for o = 1, norders do
  local oid, home = ARGV[p + 2 * o - 1], tonumber(ARGV[p + 2 * o])
  if not home or home < 1 or home > nskus then return redis.error_reply('ERR release_parts.lua: bad home') end
  local stored = hget_gens(home, oid)
  if stored then
    local f = {}
    for field in string.gmatch(stored, '[^' .. SEP .. ']+') do f[#f + 1] = field end
    for i = 3, #f, 5 do
      if not index[f[i + 1]] then
        return redis.error_reply('ERR release_parts.lua: SKU not in KEYS: ' .. f[i + 1])
      end
    end
    parsed[#parsed + 1] = { oid, home, f }
  end
end
for _, x in ipairs(parsed) do
  local f = x[3]
  local customer, channel = f[1], f[2]
  for i = 3, #f, 5 do
    local s, q, own = index[f[i + 1]], tonumber(f[i + 2]), tonumber(f[i + 4])
    if mode == 'all' then add_units(sku_key(s, K_STOCK), f[i], q) end
    if f[i + 3] == '1' then redis.call('HINCRBY', sku_key(s, K_BOUGHT), customer, -q) end
    if own > 0 and redis.call('HEXISTS', sku_key(s, K_STOCK), LOCK_QTY .. channel) == 1 then
      add_units(sku_key(s, K_STOCK), LOCK_USED .. channel, -own)
    end
    f[i + 3], f[i + 4] = '0', '0'
  end
  if mode == 'all' then
    redis.call('HDEL', sku_key(x[2], K_RECORDS), x[1])
    redis.call('HDEL', sku_key(x[2], K_RECORDS_OLD), x[1])
    redis.call('HDEL', sku_key(x[2], K_RECORDS_NEXT), x[1])
  else -- (where hget_gens found it: the newest generation that has it)
    for _, k in ipairs({ K_RECORDS_NEXT, K_RECORDS, K_RECORDS_OLD }) do
      if redis.call('HEXISTS', sku_key(x[2], k), x[1]) == 1 then
        redis.call('HSET', sku_key(x[2], k), x[1], table.concat(f, SEP))
        break
      end
    end
  end
end
if #parsed > 0 then -- units came back: an alert flag may clear; candidacies end
  for name, s in pairs(index) do
    local t, units, _, camps = read_stock(sku_key(s, K_STOCK))
    settle_alert(s, name, units, t)
    if camps then
      for _, x in ipairs(parsed) do
        for id in pairs(camps) do
          redis.call('ZREM', sku_key(s, K_CANDIDATES), candidate_members(id, x[1]))
        end
      end
    end
  end
end
return #parsed
