-- decide.lua: decide a batch of orders against the stock of one hash slot, each atomically.
--
-- KEYS: for SKU i of this call (1-based): KEYS[2i-1] = its stock hash (location -> units),
--       KEYS[2i] = its decision hash (order id -> stored outcome). All in one slot.
-- ARGV: nskus, nlocs, sku names (nskus), location ids (nlocs), norders, then per order two
--       arguments: a spec "order_id,home,pickup,sku,qty,sku,qty..." (fields separated by
--       \31; home = SKU index whose decision hash keeps the outcome; pickup = location index,
--       0 = ship; sku = SKU index), and the ranking (candidate location indices, 2-byte
--       little-endian each, nearest first; empty for pickup).
-- Returns: one outcome per order, fields separated by \31:
--       "A" followed by (location, sku, qty) triples, or "R" followed by a reason.
-- A replayed order id returns its stored outcome and changes nothing. Stock never goes
-- below zero. The whole ARGV is validated before the first write (no rollback in Redis).
local SEP = '\31'
local MARKER = '\0sku'
local FIELD = '[^' .. SEP .. ']+'
local tonumber, byte, gmatch, concat, call = tonumber, string.byte, string.gmatch, table.concat, redis.call
local SOLD_OUT, UNKNOWN, NO_PICKUP = 'R' .. SEP .. 'sold_out', 'R' .. SEP .. 'unknown_sku', 'R' .. SEP .. 'pickup_unavailable'

local function bad(msg) return redis.error_reply('ERR decide.lua: ' .. msg) end

local nskus, nlocs = tonumber(ARGV[1]), tonumber(ARGV[2])
if not nskus or not nlocs or nskus < 1 or #KEYS ~= 2 * nskus then return bad('bad header') end
local skus, locs = {}, {}
local p = 3
for i = 1, nskus do skus[i] = ARGV[p]; p = p + 1 end
for i = 1, nlocs do locs[i] = ARGV[p]; p = p + 1 end
local norders = tonumber(ARGV[p]); p = p + 1
if not norders then return bad('bad order count') end

local orders = {}
for o = 1, norders do
  local spec, ranking = ARGV[p], ARGV[p + 1]
  if not spec or not ranking or #ranking % 2 ~= 0 then return bad('malformed order #' .. o) end
  p = p + 2
  local f = {}
  for field in gmatch(spec, FIELD) do f[#f + 1] = field end
  local oid, home, pickup = f[1], tonumber(f[2]), tonumber(f[3])
  if not oid or not home or not pickup or home < 1 or home > nskus or pickup < 0
     or pickup > nlocs or #f < 5 or #f % 2 ~= 1 then
    return bad('malformed order #' .. o)
  end
  local lines = {}
  for i = 4, #f, 2 do
    local s, q = tonumber(f[i]), tonumber(f[i + 1])
    if not s or not q or s < 1 or s > nskus or q < 1 or q ~= math.floor(q) then
      return bad('malformed line of order #' .. o)
    end
    lines[#lines + 1] = { s, q }
  end
  orders[o] = { oid, home, pickup, ranking, lines }
end
if p - 1 ~= #ARGV then return bad('trailing arguments') end

-- Read each SKU's stock once; decide in Lua tables; write back only what changed.
-- total[s] (units over all locations) answers a sold-out order without scanning locations.
local stock, exists, dirty, total = {}, {}, {}, {}
for s = 1, nskus do
  local flat = call('HGETALL', KEYS[2 * s - 1])
  local t, sum = {}, 0
  for i = 1, #flat, 2 do
    local q = tonumber(flat[i + 1])
    t[flat[i]] = q
    if flat[i] ~= MARKER and q > 0 then sum = sum + q end
  end
  stock[s], exists[s], dirty[s], total[s] = t, t[MARKER] ~= nil, {}, sum
end

local function take(allocs)
  local parts, n = { 'A' }, 1
  for i = 1, #allocs do
    local a = allocs[i]
    local s, loc, q = a[1], a[2], a[3]
    stock[s][loc] = stock[s][loc] - q
    total[s] = total[s] - q
    dirty[s][loc] = true
    parts[n + 1], parts[n + 2], parts[n + 3] = loc, skus[s], q
    n = n + 3
  end
  return concat(parts, SEP)
end

local function holds_all(loc, lines)
  for i = 1, #lines do
    local ln = lines[i]
    if (stock[ln[1]][loc] or 0) < ln[2] then return false end
  end
  return true
end

local function whole(loc, lines)
  local allocs = {}
  for i, ln in ipairs(lines) do allocs[i] = { ln[1], loc, ln[2] } end
  return take(allocs)
end

local function decide_one(od)
  local pickup, ranking, lines = od[3], od[4], od[5]
  for i = 1, #lines do
    if not exists[lines[i][1]] then return UNKNOWN end
  end
  if pickup > 0 then
    local loc = locs[pickup]
    if holds_all(loc, lines) then return whole(loc, lines) end
    return NO_PICKUP
  end
  for i = 1, #lines do
    if total[lines[i][1]] < lines[i][2] then return SOLD_OUT end
  end
  local ncand = #ranking / 2
  local cands = {}
  for i = 1, ncand do
    local lo, hi = byte(ranking, 2 * i - 1, 2 * i)
    local loc = locs[lo + 256 * hi + 1]
    if loc then
      if holds_all(loc, lines) then return whole(loc, lines) end
      cands[#cands + 1] = loc
    end
  end
  -- No single location holds every line: split, each line nearest first.
  local allocs, seq = {}, 0
  for _, ln in ipairs(lines) do
    local s, need = ln[1], ln[2]
    for r, loc in ipairs(cands) do
      local have = stock[s][loc] or 0
      if have > 0 then
        local q = math.min(have, need)
        seq = seq + 1
        allocs[#allocs + 1] = { s, loc, q, r, seq }
        need = need - q
        if need == 0 then break end
      end
    end
    if need > 0 then return SOLD_OUT end
  end
  table.sort(allocs, function(a, b)
    if a[4] ~= b[4] then return a[4] < b[4] end
    return a[5] < b[5]
  end)
  return take(allocs)
end

-- One HMGET per decision hash for the whole batch (a replayed order keeps its outcome).
local CHUNK = 4000
local ids_by_home = {}
for o = 1, norders do
  local h = orders[o][2]
  ids_by_home[h] = ids_by_home[h] or {}
  local ids = ids_by_home[h]
  ids[#ids + 1] = orders[o][1]
end
local stored = {}
for h, ids in pairs(ids_by_home) do
  for i = 1, #ids, CHUNK do
    local got = call('HMGET', KEYS[2 * h], unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #got do
      if got[j] then stored[ids[i + j - 1]] = got[j] end
    end
  end
end

local records, out = {}, {}
for s = 1, nskus do records[s] = {} end
for o = 1, norders do
  local od = orders[o]
  local oid, home = od[1], od[2]
  local prev = stored[oid]
  if prev then
    out[o] = prev
  else
    local res = decide_one(od)
    stored[oid] = res
    local rec = records[home]
    rec[#rec + 1] = oid
    rec[#rec + 1] = res
    out[o] = res
  end
end

for s = 1, nskus do
  local args = {}
  for loc in pairs(dirty[s]) do
    args[#args + 1] = loc
    args[#args + 1] = stock[s][loc]
  end
  if #args > 0 then call('HSET', KEYS[2 * s - 1], unpack(args)) end
  local rec = records[s]
  for i = 1, #rec, CHUNK do
    call('HSET', KEYS[2 * s], unpack(rec, i, math.min(i + CHUNK - 1, #rec)))
  end
end
return out
