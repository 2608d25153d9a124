-- decide.lua: decide a batch of orders against the stock of one hash slot, each atomically.
--
-- KEYS: for SKU i of this call (1-based): KEYS[6i-5] = its stock hash (location -> units,
--       plus NUL-prefixed fields: the marker, its rules, its alert flag), KEYS[6i-4] = its
--       decision hash (order id -> stored outcome), KEYS[6i-3] = units sold per customer,
--       KEYS[6i-2] = its low-stock alerts stream, KEYS[6i-1] / KEYS[6i] = its gift
--       campaigns' candidates and progress (see lib_stock.lua). All in one slot.
-- ARGV: nskus, nlocs, nchans, fewest (1: split an order over as few locations as possible,
--       else nearest first), sku names (nskus), location ids (nlocs), safety stock per
--       location (nlocs: units that online channels cannot take there), channel ids (nchans:
--       those of this call's orders), norders, then per order three
--       arguments: the order id, a little-endian binary spec, and the customer id (always
--       given: the rules judged are the ones stored here, whatever the caller's catalog
--       said). The spec:
--         u16 home    SKU index whose decision hash keeps the outcome
--         u16 pickup  location index of the pickup store, 0 = ship
--         u16 nlines
--         u16 channel index of the order's channel
--         u8  flags   bit 0: the customer is a VIP; bit 1: it may take safety stock (a
--                     store-kind channel, or a hot-SKU bucket other than 0, which holds
--                     none); bit 2: "short" instead of sold_out (below)
--         u64 paid_at in epoch milliseconds (time-boxed rules are judged at paid_at)
--         then per line: u16 sku index, u32 qty >= 1
--         then the ranking: u16 location indices, nearest first (empty for pickup).
-- Rules, checked in this order before any stock: vip_only (before the SKU's pre-sale end
-- only VIPs buy it), limit_exceeded (units sold to the customer + qty > the SKU's limit),
-- then the channel locks (sold_out when the SKU's units minus the other channels' active
-- unconsumed locks are fewer than qty; see lock_take). An accepted order of a locked channel
-- draws from its own lock first (the fields '\0Lc:<channel>' count what it drew).
-- Last ARGV: the catalog version the caller judged by. When a SKU's rules were written by a
-- newer catalog ('\0v'), every order answers "S" (stale) and nothing changes: the caller
-- refreshes its catalog and asks again, so an order is judged by one catalog, never a mix.
-- Returns: one outcome per order, fields separated by \31:
--       "A" followed by (location, sku, qty) triples, or "R" followed by a reason; an
--       accepted order that became a first-N campaign candidate is "G" followed by its "A..."
--       outcome (stored so too: a replay holds its record the same way).
-- An order flagged bit 2 (a hot SKU's bucket may borrow units from its other buckets) whose
-- stock falls short returns "B" instead, stores nothing and changes nothing: it is decided
-- again once the bucket borrowed (dataflows/buckets.py).
-- A replayed order id returns its stored outcome and changes nothing. Stock never goes
-- below zero. Every write happens after the whole ARGV was parsed and validated (Redis does
-- not roll back a failing script): decisions run on Lua tables, written back at the end.
local SEP = '\31'
local tonumber, byte, concat, call, unpack = tonumber, string.byte, table.concat, redis.call, unpack
local SOLD_OUT = 'R' .. SEP .. 'sold_out'
local UNKNOWN = 'R' .. SEP .. 'unknown_sku'
local VIP_ONLY = 'R' .. SEP .. 'vip_only'
local LIMIT = 'R' .. SEP .. 'limit_exceeded'
local HEAD = 17 -- bytes before the first line
local NO_PICKUP = 'R' .. SEP .. 'pickup_unavailable'
local SHORT = 'B'
local CHUNK = 4000

local function bad(msg) return redis.error_reply('ERR decide.lua: ' .. msg) end


local nskus, nlocs, nchans = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not nskus or not nlocs or not nchans or nskus < 1 or #KEYS ~= 6 * nskus then
  return bad('bad header')
end
local fewest = ARGV[4] == '1'
local skus, locs, chans = {}, {}, {}
for i = 1, nskus do skus[i] = ARGV[4 + i] end
local safety, NONE = {}, {}
for i = 1, nlocs do
  locs[i] = ARGV[4 + nskus + i]
  local units = tonumber(ARGV[4 + nskus + nlocs + i])
  if not units then return bad('bad safety stock') end
  if units > 0 then safety[locs[i]] = units end
end
for i = 1, nchans do chans[i] = ARGV[4 + nskus + 2 * nlocs + i] end
local first = 6 + nskus + 2 * nlocs + nchans -- ARGV index of the first order id
local norders = tonumber(ARGV[first - 1])
if not norders or #ARGV ~= first + 3 * norders then return bad('bad order count') end
local version = tonumber(ARGV[#ARGV])
if not version then return bad('bad catalog version') end

-- Pass 1: validate every spec and collect order ids per decision hash (no writes yet).
local ids_by_home = {}
for o = 1, norders do
  local blob = ARGV[first + 3 * o - 2]
  local h1, h2, p1, p2, n1, n2, c1, c2 = byte(blob, 1, 8)
  if #blob < HEAD then return bad('malformed order #' .. o) end
  local home, pickup, nl, ch = h1 + 256 * h2, p1 + 256 * p2, n1 + 256 * n2, c1 + 256 * c2
  local rest = #blob - HEAD - 6 * nl
  if home < 1 or home > nskus or pickup > nlocs or nl < 1 or rest < 0 or rest % 2 ~= 0
     or ch < 1 or ch > nchans then
    return bad('malformed order #' .. o)
  end
  for pos = HEAD + 1, HEAD - 5 + 6 * nl, 6 do
    local s1, s2, q1, q2, q3, q4 = byte(blob, pos, pos + 5)
    local s = s1 + 256 * s2
    if s < 1 or s > nskus or q1 + q2 + q3 + q4 == 0 then return bad('malformed line of order #' .. o) end
  end
  local ids = ids_by_home[home]
  if not ids then ids = {}; ids_by_home[home] = ids end
  ids[#ids + 1] = ARGV[first + 3 * o - 3]
end

-- A replayed order keeps its stored outcome: one HMGET per decision hash for the batch.
-- (Asked before the staleness check: a stored outcome stands whatever the catalog.)
local stored = {}
for h, ids in pairs(ids_by_home) do
  for i = 1, #ids, CHUNK do
    local got = call('HMGET', KEYS[6 * h - 4], unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #got do
      if got[j] then stored[ids[i + j - 1]] = got[j] end
    end
  end
end

-- Each SKU's stock read once; total[s] answers a sold-out order without scanning locations.
local stock, exists, dirty, total, limit, vip_until, locks = {}, {}, {}, {}, {}, {}, {}
local sold, sold_dirty = {}, {}
local camps, progress, adds, now = {}, {}, {}, nil -- first-N gift campaigns of the SKUs
local any_low = false -- does any SKU of this call have a low-stock threshold
for s = 1, nskus do
  local t, sum, lk, cp = read_stock(KEYS[6 * s - 5])
  stock[s], exists[s], dirty[s], total[s], locks[s] = t, t[STOCK_MARKER] ~= nil, {}, sum, lk
  if cp then
    camps[s], progress[s], adds[s] = cp, read_progress(KEYS[6 * s]), {}
    now = now or wall_ms()
  end
  any_low = any_low or t[RULE_LOW] ~= nil
  limit[s], vip_until[s] = t[RULE_LIMIT], t[RULE_VIP_UNTIL]
  if limit[s] then
    -- units already sold to each customer of this batch
    local custs, seen = {}, {}
    for o = 1, norders do
      local c = ARGV[first + 3 * o - 1]
      if c ~= '' and not seen[c] then seen[c] = true; custs[#custs + 1] = c end
    end
    local counts = {}
    for i = 1, #custs, CHUNK do
      local got = call('HMGET', KEYS[6 * s - 3], unpack(custs, i, math.min(i + CHUNK - 1, #custs)))
      for j = 1, #got do counts[custs[i + j - 1]] = tonumber(got[j] or '0') end
    end
    sold[s], sold_dirty[s] = counts, {}
  end
end

-- Rules newer than the caller's catalog: nothing is decided (see the header).
for s = 1, nskus do
  if (stock[s][RULES_VERSION] or 0) > version then
    local out = {}
    for o = 1, norders do out[o] = stored[ARGV[first + 3 * o - 3]] or 'S' end
    return out
  end
end

local function take(s, loc, q)
  stock[s][loc] = stock[s][loc] - q
  total[s] = total[s] - q
  dirty[s][loc] = true
end

-- floors: units per location this order may not take (safety stock, for online channels)
local function holds_all(loc, lines, floors)
  local floor = floors[loc] or 0
  for i = 1, #lines, 2 do
    if (stock[lines[i]][loc] or 0) - floor < lines[i + 1] then return false end
  end
  return true
end

local function whole(loc, lines)
  local parts = { 'A' }
  for i = 1, #lines, 2 do
    local s, q = lines[i], lines[i + 1]
    take(s, loc, q)
    parts[#parts + 1] = loc
    parts[#parts + 1] = skus[s]
    parts[#parts + 1] = q
  end
  return concat(parts, SEP)
end

-- allocs: {sku index, location, qty, candidate rank, sequence}; shipments in route order.
local function take_all(allocs)
  table.sort(allocs, function(a, b)
    if a[4] ~= b[4] then return a[4] < b[4] end
    return a[5] < b[5]
  end)
  local parts = { 'A' }
  for _, a in ipairs(allocs) do
    take(a[1], a[2], a[3])
    parts[#parts + 1] = a[2]
    parts[#parts + 1] = skus[a[1]]
    parts[#parts + 1] = a[3]
  end
  return concat(parts, SEP)
end

-- Fewest shipments (greedy): again and again the location that can ship the most of what is
-- still missing (ties: the better ranked), all it can, until nothing is missing.
local function split_fewest(lines, cands, floors)
  local need, left, allocs, used = {}, 0, {}, {}
  for i = 1, #lines, 2 do
    need[i] = lines[i + 1]
    left = left + lines[i + 1]
  end
  while left > 0 do
    local best, best_units = nil, 0
    for r = 1, #cands do
      local loc = cands[r]
      if not used[loc] then
        local units = 0
        for i = 1, #lines, 2 do
          local have = (stock[lines[i]][loc] or 0) - (floors[loc] or 0)
          if have > 0 then units = units + math.min(have, need[i]) end
        end
        if units > best_units then best, best_units = r, units end
      end
    end
    if not best then return SOLD_OUT end
    local loc = cands[best]
    used[loc] = true
    for i = 1, #lines, 2 do
      local have = (stock[lines[i]][loc] or 0) - (floors[loc] or 0)
      local q = math.min(math.max(have, 0), need[i])
      if q > 0 then
        allocs[#allocs + 1] = { lines[i], loc, q, best, #allocs }
        need[i] = need[i] - q
        left = left - q
      end
    end
  end
  return take_all(allocs)
end

-- lines: flat {sku index, qty, sku index, qty, ...}; ranking starts at byte `at` of blob.
local function decide_many(blob, pickup, lines, at, floors)
  if pickup > 0 then
    local loc = locs[pickup]
    if holds_all(loc, lines, floors) then return whole(loc, lines) end
    return NO_PICKUP
  end
  local cands = {}
  for pos = at, #blob - 1, 2 do
    local lo, hi = byte(blob, pos, pos + 1)
    local loc = locs[lo + 256 * hi + 1]
    if loc then
      if holds_all(loc, lines, floors) then return whole(loc, lines) end
      cands[#cands + 1] = loc
    end
  end
  if fewest then return split_fewest(lines, cands, floors) end
  -- No single location holds every line: split, each line nearest first.
  local allocs = {}
  for i = 1, #lines, 2 do
    local s, need = lines[i], lines[i + 1]
    for r = 1, #cands do
      local have = (stock[s][cands[r]] or 0) - (floors[cands[r]] or 0)
      if have > 0 then
        local q = math.min(have, need)
        allocs[#allocs + 1] = { s, cands[r], q, r, #allocs }
        need = need - q
        if need == 0 then break end
      end
    end
    if need > 0 then return SOLD_OUT end
  end
  return take_all(allocs)
end

-- Stock only: sold_out, pickup_unavailable, or the allocations.
local function decide_stock(blob, pickup, nl, lines)
  local floors = byte(blob, 9) % 4 >= 2 and NONE or safety
  if pickup == 0 then
    for i = 1, #lines, 2 do
      if total[lines[i]] < lines[i + 1] then return SOLD_OUT end
    end
  end
  local at = HEAD + 1 + 6 * nl
  if nl == 1 and pickup == 0 then -- the common case, without the general machinery
    local s, q = lines[1], lines[2]
    local st = stock[s]
    for pos = at, #blob - 1, 2 do
      local lo, hi = byte(blob, pos, pos + 1)
      local loc = locs[lo + 256 * hi + 1]
      if loc and (st[loc] or 0) - (floors[loc] or 0) >= q then
        take(s, loc, q)
        return 'A' .. SEP .. loc .. SEP .. skus[s] .. SEP .. q
      end
    end
  end
  return decide_many(blob, pickup, lines, at, floors)
end

-- vip_only / limit_exceeded / sold_out (channel locks) / nil: the rules of the order's SKUs,
-- judged at paid_at. `draws` gets, per locked SKU index, the units the order would take out
-- of its channel's own lock.
local function rules(blob, lines, customer, draws)
  local c1, c2, f, t1, t2, t3, t4, t5, t6 = byte(blob, 7, 15)
  local vip = f % 2 == 1
  local paid = t1 + 256 * (t2 + 256 * (t3 + 256 * (t4 + 256 * (t5 + 256 * t6))))
  for i = 1, #lines, 2 do
    local until_ms = vip_until[lines[i]]
    if until_ms and not vip and paid < until_ms then return VIP_ONLY end
  end
  for i = 1, #lines, 2 do
    local s = lines[i]
    if limit[s] and (customer == '' or (sold[s][customer] or 0) + lines[i + 1] > limit[s]) then
      return LIMIT
    end
  end
  for i = 1, #lines, 2 do
    local s = lines[i]
    -- (with fewer units than qty left the locks are not the reason: the stock check refuses
    -- the order, and a refused order draws nothing; a sold-out burst skips the locks' loop)
    if locks[s] and total[s] >= lines[i + 1] then
      local own = lock_take(locks[s], chans[c1 + 256 * c2], paid, lines[i + 1], total[s])
      if not own then return SOLD_OUT end
      draws[s] = own
    end
  end
  return nil
end

local function count_sold(lines, customer)
  for i = 1, #lines, 2 do
    local s = lines[i]
    if limit[s] then
      sold[s][customer] = (sold[s][customer] or 0) + lines[i + 1]
      sold_dirty[s][customer] = true
    end
  end
end

-- The order was accepted: its channel's lock gives the units it drew.
local function draw_locks(blob, draws)
  local c1, c2 = byte(blob, 7, 8)
  local ch = chans[c1 + 256 * c2]
  local field = LOCK_USED .. ch
  for s, units in pairs(draws) do
    if units > 0 then
      local l = locks[s][ch]
      l.c = l.c + units
      stock[s][field] = l.c
      dirty[s][field] = true
    end
  end
end

local function decide_one(oid, blob, customer)
  local _, _, p1, p2, n1, n2 = byte(blob, 1, 6)
  local pickup, nl = p1 + 256 * p2, n1 + 256 * n2
  local lines, ruled, draws = {}, false, nil
  for pos = HEAD + 1, HEAD - 5 + 6 * nl, 6 do
    local s1, s2, q1, q2, q3, q4 = byte(blob, pos, pos + 5)
    local s = s1 + 256 * s2
    if not exists[s] then return UNKNOWN end
    ruled = ruled or limit[s] ~= nil or vip_until[s] ~= nil or locks[s] ~= nil
    lines[#lines + 1] = s
    lines[#lines + 1] = q1 + 256 * (q2 + 256 * (q3 + 256 * q4))
  end
  if ruled then
    draws = {}
    local broken = rules(blob, lines, customer, draws)
    if broken then return broken end
  end
  local res = decide_stock(blob, pickup, nl, lines)
  if (res == SOLD_OUT or res == NO_PICKUP) and byte(blob, 9) >= 4 then return SHORT end
  if byte(res, 1) == 65 then -- 'A'
    if ruled then
      count_sold(lines, customer)
      draw_locks(blob, draws)
    end
    if now then
      local paid, candidate = nil, false
      for i = 1, #lines, 2 do
        local s = lines[i]
        if camps[s] then
          if not paid then
            local t1, t2, t3, t4, t5, t6 = byte(blob, 10, 15)
            paid = t1 + 256 * (t2 + 256 * (t3 + 256 * (t4 + 256 * (t5 + 256 * t6))))
          end
          if add_candidate(camps[s], progress[s], adds[s], oid, paid, now, false) then
            candidate = true
          end
        end
      end
      if candidate then res = 'G' .. res end
    end
    if any_low then
      for i = 1, #lines, 2 do
        local s = lines[i]
        settle_alert(s, skus[s], total[s], stock[s])
      end
    end
  end
  return res
end

-- Pass 2: decide in order, on the Lua tables.
local records, out = {}, {}
for s = 1, nskus do records[s] = {} end
for o = 1, norders do
  local oid, blob, customer = ARGV[first + 3 * o - 3], ARGV[first + 3 * o - 2], ARGV[first + 3 * o - 1]
  local prev = stored[oid]
  if prev then
    out[o] = prev
  else
    local res = decide_one(oid, blob, customer)
    out[o] = res
    if res ~= SHORT then
      stored[oid] = res
      local h1, h2 = byte(blob, 1, 2)
      local rec = records[h1 + 256 * h2]
      rec[#rec + 1] = oid
      rec[#rec + 1] = res
    end
  end
end

-- Write back what changed.
for s = 1, nskus do
  settle_alert(s, skus[s], total[s], stock[s])
  write_changed(KEYS[6 * s - 5], dirty[s], stock[s])
  local rec = records[s]
  for i = 1, #rec, CHUNK do
    call('HSET', KEYS[6 * s - 4], unpack(rec, i, math.min(i + CHUNK - 1, #rec)))
  end
  if sold_dirty[s] then write_changed(KEYS[6 * s - 3], sold_dirty[s], sold[s]) end
  if adds[s] then write_progress(s, progress[s], adds[s]) end
end
return out
