-- release_part.lua: undo this slot's part of an order that could not be reserved whole.
--
-- KEYS: KEYS[1] = the parts hash of this slot, KEYS[1+i] = the stock hash of SKU i.
-- ARGV: order_id, then the SKU names in KEYS order.
-- Returns: 1 released now, 0 nothing was reserved (idempotent: a second call is a no-op).
local SEP = '\31'
local oid = ARGV[1]
local stored = redis.call('HGET', KEYS[1], oid)
if not stored then return 0 end
local key_of = {}
for i = 2, #ARGV do key_of[ARGV[i]] = KEYS[i] end
local f = {}
for field in string.gmatch(stored, '[^' .. SEP .. ']+') do f[#f + 1] = field end
for i = 1, #f, 3 do
  local key = key_of[f[i + 1]]
  if not key then return redis.error_reply('ERR release_part.lua: SKU not in KEYS: ' .. f[i + 1]) end
end
for i = 1, #f, 3 do redis.call('HINCRBY', key_of[f[i + 1]], f[i], tonumber(f[i + 2])) end
redis.call('HDEL', KEYS[1], oid)
return 1
