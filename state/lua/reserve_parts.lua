-- reserve_parts.lua: reserve this slot's part of many orders whose SKUs span hash slots.
--
-- KEYS: for SKU i of this call: KEYS[2i-1] = its stock hash, KEYS[2i] = its parts hash
--       (order id -> the allocations reserved here for that order). All in one slot.
-- ARGV: nskus, sku names (nskus), norders, then per order: order_id, home (SKU index whose
--       parts hash keeps this order's part), nallocs, nallocs triples (sku index, location, qty).
-- Returns: per order 1 reserved now, 2 already reserved by an earlier call (unchanged),
--          0 not enough stock (nothing changed for that order). Each order's part is all or
--          nothing; orders are applied in ARGV order.
local SEP = '\31'
local function bad(msg) return redis.error_reply('ERR reserve_parts.lua: ' .. msg) end
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= 2 * nskus then return bad('bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[1 + i] end
local p = 2 + nskus
local norders = tonumber(ARGV[p]); p = p + 1
if not norders then return bad('bad order count') end
local orders = {}
for o = 1, norders do
  local oid, home, n = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  if not oid or not home or not n or home < 1 or home > nskus or n < 1 then
    return bad('malformed order #' .. o)
  end
  p = p + 3
  local allocs = {}
  for i = 1, n do
    local s, loc, q = tonumber(ARGV[p]), ARGV[p + 1], tonumber(ARGV[p + 2])
    if not s or s < 1 or s > nskus or not loc or not q or q < 1 then
      return bad('malformed allocation ' .. i .. ' of order #' .. o)
    end
    allocs[i] = { s, loc, q }
    p = p + 3
  end
  orders[o] = { oid, home, allocs }
end
if p - 1 ~= #ARGV then return bad('trailing arguments') end

-- Batch the Redis work: one HMGET per parts hash, one HGETALL per SKU, decisions on Lua
-- tables, then one HSET per stock hash and per parts hash.
local call, unpack = redis.call, unpack
local done, by_home = {}, {}
for _, od in ipairs(orders) do
  local ids = by_home[od[2]]
  if not ids then ids = {}; by_home[od[2]] = ids end
  ids[#ids + 1] = od[1]
end
for h, ids in pairs(by_home) do
  local got = call('HMGET', KEYS[2 * h], unpack(ids))
  for k = 1, #ids do
    if got[k] then done[ids[k]] = true end
  end
end
local stock, dirty = {}, {}
for s = 1, nskus do
  local flat = call('HGETALL', KEYS[2 * s - 1])
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = tonumber(flat[i + 1]) end
  stock[s], dirty[s] = t, {}
end

local out, parts = {}, {}
for s = 1, nskus do parts[s] = {} end
for o, od in ipairs(orders) do
  local oid, home, allocs = od[1], od[2], od[3]
  if done[oid] then
    out[o] = 2
  else
    local need, ok = {}, true
    for _, a in ipairs(allocs) do
      local k = a[1] .. SEP .. a[2]
      need[k] = (need[k] or 0) + a[3]
      if (stock[a[1]][a[2]] or 0) < need[k] then ok = false; break end
    end
    if ok then
      local stored = {}
      for _, a in ipairs(allocs) do
        stock[a[1]][a[2]] = stock[a[1]][a[2]] - a[3]
        dirty[a[1]][a[2]] = true
        stored[#stored + 1] = a[2]
        stored[#stored + 1] = names[a[1]]
        stored[#stored + 1] = a[3]
      end
      local rec = parts[home]
      rec[#rec + 1] = oid
      rec[#rec + 1] = table.concat(stored, SEP)
      done[oid] = true
      out[o] = 1
    else
      out[o] = 0
    end
  end
end
for s = 1, nskus do
  local args = {}
  for loc in pairs(dirty[s]) do
    args[#args + 1] = loc
    args[#args + 1] = stock[s][loc]
  end
  if #args > 0 then call('HSET', KEYS[2 * s - 1], unpack(args)) end
  if #parts[s] > 0 then call('HSET', KEYS[2 * s], unpack(parts[s])) end
end
return out
