-- release_parts.lua: undo this slot's part of orders that could not be reserved whole.
--
-- KEYS: as reserve_parts.lua: per SKU i, KEYS[2i-1] stock hash, KEYS[2i] parts hash.
-- ARGV: nskus, sku names (nskus), norders, then per order: order_id, home (SKU index).
-- Returns: how many parts were released. Idempotent: releasing twice is a no-op.
local SEP = '\31'
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= 2 * nskus then return redis.error_reply('ERR release_parts.lua: bad header') end
local stock_of = {}
for i = 1, nskus do stock_of[ARGV[1 + i]] = KEYS[2 * i - 1] end
local p = 2 + nskus
local norders = tonumber(ARGV[p])
if not norders or #ARGV ~= p + 2 * norders then return redis.error_reply('ERR release_parts.lua: bad orders') end
local parsed = {}
for o = 1, norders do
  local oid, home = ARGV[p + 2 * o - 1], tonumber(ARGV[p + 2 * o])
  if not home or home < 1 or home > nskus then return redis.error_reply('ERR release_parts.lua: bad home') end
  local stored = redis.call('HGET', KEYS[2 * home], oid)
  if stored then
    local f = {}
    for field in string.gmatch(stored, '[^' .. SEP .. ']+') do f[#f + 1] = field end
    for i = 1, #f, 3 do
      if not stock_of[f[i + 1]] then
        return redis.error_reply('ERR release_parts.lua: SKU not in KEYS: ' .. f[i + 1])
      end
    end
    parsed[#parsed + 1] = { oid, home, f }
  end
end
for _, x in ipairs(parsed) do
  local f = x[3]
  for i = 1, #f, 3 do redis.call('HINCRBY', stock_of[f[i + 1]], f[i], tonumber(f[i + 2])) end
  redis.call('HDEL', KEYS[2 * x[2]], x[1])
end
return #parsed
