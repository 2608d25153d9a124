-- reserve_part.lua: reserve one slot's part of an order whose SKUs span hash slots.
--
-- KEYS: KEYS[1] = the parts hash of this slot (order id -> reserved allocations),
--       KEYS[1+i] = the stock hash of SKU i of this part.
-- ARGV: order_id, nallocs, then nallocs triples (sku index into KEYS[1+i], location, qty),
--       then the SKU names in KEYS order.
-- Returns: 1 reserved now, 2 already reserved by an earlier call (unchanged), 0 not enough
--          stock (nothing changed). All or nothing within the slot.
local SEP = '\31'
local oid, n = ARGV[1], tonumber(ARGV[2])
if not oid or not n or n < 1 or #ARGV ~= 2 + 3 * n + (#KEYS - 1) then
  return redis.error_reply('ERR reserve_part.lua: malformed arguments')
end
if redis.call('HEXISTS', KEYS[1], oid) == 1 then return 2 end
local allocs, need = {}, {}
for i = 1, n do
  local s, loc, q = tonumber(ARGV[3 * i]), ARGV[3 * i + 1], tonumber(ARGV[3 * i + 2])
  if not s or s < 1 or s >= #KEYS or not q or q < 1 then
    return redis.error_reply('ERR reserve_part.lua: malformed allocation ' .. i)
  end
  allocs[i] = { s, loc, q }
  local k = s .. SEP .. loc
  need[k] = (need[k] or 0) + q
end
for k, q in pairs(need) do
  local s, loc = string.match(k, '^(%d+)' .. SEP .. '(.*)$')
  local have = tonumber(redis.call('HGET', KEYS[1 + tonumber(s)], loc) or '0')
  if have < q then return 0 end
end
local names = {}
for i = 1, #KEYS - 1 do names[i] = ARGV[2 + 3 * n + i] end
local stored = {}
for _, a in ipairs(allocs) do
  redis.call('HINCRBY', KEYS[1 + a[1]], a[2], -a[3])
  stored[#stored + 1] = a[2]
  stored[#stored + 1] = names[a[1]]
  stored[#stored + 1] = a[3]
end
redis.call('HSET', KEYS[1], oid, table.concat(stored, SEP))
return 1
