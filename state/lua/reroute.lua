-- reroute.lua: the lines of a shipment its location rejected, this slot's part, taken at other
-- locations (mode 'take'), or given back when another slot's part could not be (mode
-- 'undo'). Idempotent: the outcome is kept under the key in the decision hash of the call's
-- first SKU. Prepended: lib_protocol.lua, lib_stock.lua.
--
-- KEYS: per SKU i of this call, the decide.lua layout (lib_stock.lua sku_key).
-- ARGV: mode, key ("\0rr:<order id>\31<version>"), now (epoch ms: the channel locks active
--       then), nskus, sku names (nskus), nlocs, the candidate locations (nearest first,
--       without the ones that rejected the order), their floors (units the order may not take
--       there: safety stock), nlines, then per line: sku index, qty.
-- take: each line from the candidates nearest first, split over them when one has too few,
--       never below a floor, and only when the SKU's units minus every channel's active
--       unconsumed lock cover it (a re-route takes no unit a lock holds); all lines or none.
--       Stores and returns ACCEPTED SEP (location SEP sku SEP qty)..., or REJECTED.
-- undo: gives a stored ACCEPTED outcome's units back once (the stored outcome becomes
--       CANCELLED + its allocations); returns the stored outcome as it was.
-- give: gives the lines' units back at the first location once (an order moved off a
--       location whose day is full); stores and returns CANCELLED.
local mode, key, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nskus = tonumber(ARGV[4])
if not now or not nskus or #KEYS ~= SKU_KEYS * nskus then return redis.error_reply('ERR reroute.lua: bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[4 + i] end
local p = 5 + nskus
local nlocs = tonumber(ARGV[p])
if not nlocs then return redis.error_reply('ERR reroute.lua: bad locations') end
local locs, floors = {}, {}
for j = 1, nlocs do
  locs[j] = ARGV[p + j]
  floors[j] = tonumber(ARGV[p + nlocs + j])
  if not floors[j] then return redis.error_reply('ERR reroute.lua: bad floor') end
end
p = p + 2 * nlocs + 1
local nlines = tonumber(ARGV[p])
if not nlines or #ARGV ~= p + 2 * nlines then return redis.error_reply('ERR reroute.lua: bad lines') end
local lines = {}
for j = 1, nlines do
  local s, q = tonumber(ARGV[p + 2 * j - 1]), tonumber(ARGV[p + 2 * j])
  if not s or not q or s < 1 or s > nskus or q < 1 then return redis.error_reply('ERR reroute.lua: bad line') end
  lines[j] = { s = s, q = q }
end

local home = sku_key(1, K_RECORDS)
local stored = hget_gens(1, key) -- (this generation's or the one before's)

local function settle(s, stock)
  local units = 0
  for f, q in pairs(stock) do
    if string.byte(f, 1) ~= 0 and q > 0 then units = units + q end
  end
  settle_alert(s, names[s], units, stock)
end

if mode == 'undo' then
  if not stored or string.sub(stored, 1, 1) ~= ACCEPTED then return stored or REJECTED end
  local f, i = {}, 1
  for part in string.gmatch(stored, '[^' .. SEP .. ']+') do f[i] = part; i = i + 1 end
  for j = 2, #f - 2, 3 do
    for s = 1, nskus do
      if names[s] == f[j + 1] then add_units(sku_key(s, K_STOCK), f[j], tonumber(f[j + 2])) end
    end
  end
  redis.call('HSET', home, key, CANCELLED .. string.sub(stored, 2))
  for s = 1, nskus do settle(s, (read_stock(sku_key(s, K_STOCK)))) end
  return stored
end
if mode == 'give' then -- the lines' units back at the first location, once
  if stored then return stored end
  for _, ln in ipairs(lines) do add_units(sku_key(ln.s, K_STOCK), locs[1], ln.q) end
  redis.call('HSET', home, key, CANCELLED)
  for s = 1, nskus do settle(s, (read_stock(sku_key(s, K_STOCK)))) end
  return CANCELLED
end
if mode ~= 'take' then return redis.error_reply('ERR reroute.lua: bad mode') end
if stored then return stored end

local stock, free = {}, {}
for s = 1, nskus do
  local t, units, locks = read_stock(sku_key(s, K_STOCK))
  stock[s] = t
  local held = 0
  for _, l in pairs(locks or {}) do
    if now < l.u and l.q - l.c > 0 then held = held + l.q - l.c end
  end
  free[s] = units - held -- what any order of no lock's channel may take of the SKU
end
local allocs, taken = {}, {}
for _, ln in ipairs(lines) do
  local s, need = ln.s, ln.q
  if need > free[s] then
    redis.call('HSET', home, key, REJECTED) -- (kept: a replay answers the same)
    return REJECTED
  end
  free[s] = free[s] - need
  for j = 1, nlocs do
    if need == 0 then break end
    local loc = locs[j]
    local have = (stock[s][loc] or 0) - floors[j] - (taken[s .. SEP .. loc] or 0)
    if have > 0 then
      local q = math.min(have, need)
      need = need - q
      taken[s .. SEP .. loc] = (taken[s .. SEP .. loc] or 0) + q
      allocs[#allocs + 1] = { s = s, loc = loc, q = q }
    end
  end
  if need > 0 then
    redis.call('HSET', home, key, REJECTED)
    return REJECTED
  end
end
local out = { ACCEPTED }
for _, a in ipairs(allocs) do
  add_units(sku_key(a.s, K_STOCK), a.loc, -a.q)
  stock[a.s][a.loc] = stock[a.s][a.loc] - a.q
  out[#out + 1] = a.loc .. SEP .. names[a.s] .. SEP .. a.q
end
for s = 1, nskus do settle(s, stock[s]) end
local res = table.concat(out, SEP)
redis.call('HSET', home, key, res)
return res
