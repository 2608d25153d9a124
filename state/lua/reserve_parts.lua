-- reserve_parts.lua: reserve this slot's part of many orders whose SKUs span hash slots.
--
-- KEYS: for SKU i of this call: KEYS[6i-5] = its stock hash (with its NUL-prefixed rules),
--       KEYS[6i-4] = its parts hash (order id -> what is reserved here for that order),
--       KEYS[6i-3] = units sold per customer, KEYS[6i-2] = its alerts stream, KEYS[6i-1] /
--       KEYS[6i] = its campaigns' candidates and progress (unused: an order becomes a
--       first-N candidate once all its parts are reserved, candidates.lua). All in one slot.
-- ARGV: nskus, sku names (nskus), nsafe, nsafe pairs (location, units online channels may
--       not take there), the caller's catalog version, norders, then per order: order_id, home (SKU index whose parts hash
--       keeps this order's part), customer id, channel id, vip (0/1), paid_at (epoch ms),
--       store_channel (1: may take safety stock), nallocs, nallocs triples (sku index,
--       location, qty).
-- Returns: per order 1 reserved now, 2 already reserved by
--          an earlier call (unchanged), 0 not enough stock, 3 vip_only, 4 limit_exceeded,
--          5 sold_out for this channel: other channels' locks hold the units (nothing changed
--          for that order), 6 for every order when a SKU's rules ('\0v') are newer than the
--          caller's catalog (nothing changed: it refreshes and plans again). Rules (locks last) are judged before stock.
--          Each order's part is all or nothing; orders are applied in ARGV order.
-- A stored part is customer, channel, then (location, sku, qty, counted, locked) quintuples:
-- counted = 1 where the units were added to the customer's count, locked = the units drawn
-- from the channel's own lock (release_parts gives both back).
local SEP = '\31'
local call, unpack, tonumber = redis.call, unpack, tonumber
local function bad(msg) return redis.error_reply('ERR reserve_parts.lua: ' .. msg) end


local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= 6 * nskus then return bad('bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[1 + i] end
local p = 2 + nskus
local nsafe = tonumber(ARGV[p]); p = p + 1
if not nsafe then return bad('bad safety stock') end
local safety = {}
for _ = 1, nsafe do
  safety[ARGV[p]] = tonumber(ARGV[p + 1])
  if not safety[ARGV[p]] then return bad('bad safety stock') end
  p = p + 2
end
local version = tonumber(ARGV[p]); p = p + 1
if not version then return bad('bad catalog version') end
local norders = tonumber(ARGV[p]); p = p + 1
if not norders then return bad('bad order count') end
local orders = {}
for o = 1, norders do
  local oid, home, customer, channel = ARGV[p], tonumber(ARGV[p + 1]), ARGV[p + 2], ARGV[p + 3]
  local vip, paid = ARGV[p + 4] == '1', tonumber(ARGV[p + 5])
  local store_channel, n = ARGV[p + 6] == '1', tonumber(ARGV[p + 7])
  if not oid or not home or not customer or not channel or not paid or not n or home < 1
     or home > nskus or n < 1 then
    return bad('malformed order #' .. o)
  end
  p = p + 8
  local allocs = {}
  for i = 1, n do
    local s, loc, q = tonumber(ARGV[p]), ARGV[p + 1], tonumber(ARGV[p + 2])
    if not s or s < 1 or s > nskus or not loc or not q or q < 1 then
      return bad('malformed allocation ' .. i .. ' of order #' .. o)
    end
    allocs[i] = { s, loc, q }
    p = p + 3
  end
  orders[o] = { oid, home, allocs, customer, vip, paid, store_channel, channel }
end
if p - 1 ~= #ARGV then return bad('trailing arguments') end

-- Batch the Redis work: one HMGET per parts hash, one HGETALL per SKU, decisions on Lua
-- tables, then one HSET per stock hash, per parts hash and per counters hash.
local done, by_home = {}, {}
for _, od in ipairs(orders) do
  local ids = by_home[od[2]]
  if not ids then ids = {}; by_home[od[2]] = ids end
  ids[#ids + 1] = od[1]
end
for h, ids in pairs(by_home) do
  local got = call('HMGET', KEYS[6 * h - 4], unpack(ids))
  for k = 1, #ids do
    if got[k] then done[ids[k]] = true end
  end
end
local stock, dirty, limit, vip_until, sold, sold_dirty, total = {}, {}, {}, {}, {}, {}, {}
local locks = {}
for s = 1, nskus do
  local t, sum, lk = read_stock(KEYS[6 * s - 5])
  total[s], locks[s] = sum, lk
  stock[s], dirty[s], limit[s], vip_until[s] = t, {}, t[RULE_LIMIT], t[RULE_VIP_UNTIL]
  if limit[s] then
    local custs, seen = {}, {}
    for _, od in ipairs(orders) do
      if not seen[od[4]] then seen[od[4]] = true; custs[#custs + 1] = od[4] end
    end
    local got = call('HMGET', KEYS[6 * s - 3], unpack(custs))
    local counts = {}
    for k = 1, #custs do counts[custs[k]] = tonumber(got[k] or '0') end
    sold[s], sold_dirty[s] = counts, {}
  end
end

for s = 1, nskus do -- rules newer than the caller's catalog: nothing is reserved
  if (stock[s][RULES_VERSION] or 0) > version then
    local out = {}
    for o = 1, norders do out[o] = 6 end
    return out
  end
end

-- 1 (reservable), 0, 3, 4 or 5 as above; `draws` gets, per locked SKU, the units that would
-- come out of the channel's own lock.
local function check(allocs, customer, vip, paid, store_channel, channel, draws)
  local need, per_sku = {}, {}
  for _, a in ipairs(allocs) do
    local s = a[1]
    if vip_until[s] and not vip and paid < vip_until[s] then return 3 end
    per_sku[s] = (per_sku[s] or 0) + a[3]
  end
  for s, q in pairs(per_sku) do
    if limit[s] and (customer == '' or (sold[s][customer] or 0) + q > limit[s]) then return 4 end
  end
  for s, q in pairs(per_sku) do
    if locks[s] then
      local own = lock_take(locks[s], channel, paid, q, total[s])
      if not own then return 5 end
      draws[s] = own
    end
  end
  for _, a in ipairs(allocs) do
    local k = a[1] .. SEP .. a[2]
    need[k] = (need[k] or 0) + a[3]
    local floor = store_channel and 0 or (safety[a[2]] or 0)
    if (stock[a[1]][a[2]] or 0) - floor < need[k] then return 0 end
  end
  return 1
end

local out, parts = {}, {}
for s = 1, nskus do parts[s] = {} end
for o, od in ipairs(orders) do
  local oid, home, allocs, customer, vip, paid, store_channel, channel = unpack(od)
  if done[oid] then
    out[o] = 2
  else
    local draws = {}
    local status = check(allocs, customer, vip, paid, store_channel, channel, draws)
    if status == 1 then
      local stored = { customer, channel }
      for _, a in ipairs(allocs) do
        local s, loc, q = a[1], a[2], a[3]
        stock[s][loc] = stock[s][loc] - q
        total[s] = total[s] - q
        dirty[s][loc] = true
        local counted = 0
        if limit[s] then
          sold[s][customer] = (sold[s][customer] or 0) + q
          sold_dirty[s][customer] = true
          counted = 1
        end
        stored[#stored + 1] = loc
        stored[#stored + 1] = names[s]
        stored[#stored + 1] = q
        stored[#stored + 1] = counted
        local own = draws[s] or 0 -- the lock's units go on the SKU's first allocation
        stored[#stored + 1] = own
        if own > 0 then
          local l, field = locks[s][channel], LOCK_USED .. channel
          l.c = l.c + own
          stock[s][field] = l.c
          dirty[s][field] = true
          draws[s] = 0
        end
      end
      local rec = parts[home]
      rec[#rec + 1] = oid
      rec[#rec + 1] = table.concat(stored, SEP)
      done[oid] = true
      for _, a in ipairs(allocs) do
        local s = a[1]
        settle_alert(s, names[s], total[s], stock[s])
      end
    end
    out[o] = status
  end
end
for s = 1, nskus do
  settle_alert(s, names[s], total[s], stock[s])
  write_changed(KEYS[6 * s - 5], dirty[s], stock[s])
  if #parts[s] > 0 then call('HSET', KEYS[6 * s - 4], unpack(parts[s])) end
  if sold_dirty[s] then write_changed(KEYS[6 * s - 3], sold_dirty[s], sold[s]) end
end
return out
