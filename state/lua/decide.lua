-- decide.lua: decide a batch of orders against the stock of one hash slot, each atomically.
-- Prepended: lib_protocol.lua, lib_stock.lua, lib_route.lua (the spec and the route).
--
-- KEYS: for SKU i of this call (1-based), the lib_stock.lua layout: sku_key(i, K_STOCK) = its
--       stock hash (location -> units, plus NUL-prefixed fields: the marker, its rules, its
--       alert flag), K_RECORDS its decision hash (order id -> stored outcome), K_BOUGHT units
--       sold per customer (each also of the generation before: read, not written), K_ALERTS
--       its low-stock alerts stream, K_CANDIDATES / K_PROGRESS its gift campaigns'
--       candidates and progress (see lib_stock.lua). All in one slot. On a single server
--       one more key, last: the journal of the batch's shard (keys.journal), which a fresh
--       call writes its outcomes to (one field, not one per order) and any call reads.
-- ARGV: nskus, nlocs, nchans, fewest (1: split an order over as few locations as possible,
--       else nearest first), fresh (1: no order of this call was ever decided, so no
--       stored outcome is read, and its outcomes go to the journal, which it needs:
--       dataflows/decider.py, Decider._prelude), sku names (nskus),
--       location ids (nlocs), safety stock per location (nlocs: units that online channels
--       cannot take there), channel ids (nchans: those of this call's orders), norders, then
--       per order ORDER_ARGS = 2
--       arguments: the order id and a little-endian binary spec (its layout: lib_route.lua),
--       which ends with the customer id (always given: the rules judged are the ones stored
--       here, whatever the caller's catalog said); last, the catalog version (below).
local A_NSKUS = 1
local A_NLOCS = 2
local A_NCHANS = 3
local A_FEWEST = 4
local A_FRESH = 5
local A_LISTS = 6 -- the first of the lists: sku names, locations, safety stock, channels
local ORDER_ARGS = 2 -- per order, at these offsets from its first argument:
local O_ID = 0
local O_SPEC = 1
-- Rules, checked in this order before any stock: vip_only (before the SKU's pre-sale end
-- only VIPs buy it), limit_exceeded (units sold to the customer + qty > the SKU's limit),
-- then the channel locks (sold_out when the SKU's units minus the other channels' active
-- unconsumed locks are fewer than qty; see lock_take). An accepted order of a locked channel
-- draws from its own lock first (the fields '\0Lc:<channel>' count what it drew).
-- Last ARGV: the catalog version the caller judged by. When a SKU's rules were written by a
-- newer catalog ('\0v'), every order answers STALE and nothing changes: the caller
-- refreshes its catalog and asks again, so an order is judged by one catalog, never a mix.
-- Returns: one outcome per order, fields separated by SEP:
--       ACCEPTED followed by (location, sku, qty) triples, or REJECTED followed by a reason;
--       an accepted order that became a first-N campaign candidate is CANDIDATE followed by
--       its ACCEPTED outcome (stored so too: a replay holds its record the same way).
-- An order flagged FLAG_SHORT (a hot SKU's bucket may borrow units from its other buckets)
-- whose stock falls short returns BUCKET_SHORT instead, stores nothing and changes nothing:
-- it is decided again once the bucket borrowed (dataflows/buckets.py).
-- An order flagged FLAG_STORED (one that may have been decided, which the caller's catalog
-- now refuses) returns its stored outcome too, else UNDECIDED: it is never decided here.
-- A replayed order id returns its stored outcome and changes nothing: stored in its home
-- SKU's decision hash or, by a fresh call, in the journal (the MessagePack list [order id,
-- outcome, ...] under the call's first order id). Stock never goes
-- below zero. Every write happens after the whole ARGV was parsed and validated (Redis does
-- not roll back a failing script): decisions run on Lua tables, written back at the end.
local tonumber, concat, call, unpack = tonumber, table.concat, redis.call, unpack
local SOLD_OUT = REJECTED .. SEP .. 'sold_out'
local UNKNOWN = REJECTED .. SEP .. 'unknown_sku'
local VIP_ONLY = REJECTED .. SEP .. 'vip_only'
local LIMIT = REJECTED .. SEP .. 'limit_exceeded'
local NO_PICKUP = REJECTED .. SEP .. 'pickup_unavailable'
local CHUNK = 4000

local function bad(msg) return redis.error_reply('ERR decide.lua: ' .. msg) end

-- The call (read_call): its counts, lists and catalog version.
local nskus, nlocs, nchans, norders, version, fewest, fresh, journal
local first -- ARGV index of the first order's first argument
local skus, locs, chans, safety, NONE = {}, {}, {}, {}, {}

-- Each SKU's stock read once (read_skus); total[s] answers a sold-out order without
-- scanning locations.
local stock, exists, dirty, total, limit, vip_until, locks = {}, {}, {}, {}, {}, {}, {}
local ruled = {} -- a SKU with rules: a limit, a VIP pre-sale or channel locks
local sold, sold_dirty, sold_old = {}, {}, {} -- (sold_old: the generation before's share)
local camps, progress, adds, now = {}, {}, {}, nil -- first-N gift campaigns of the SKUs
local any_low = false -- does any SKU of this call have a low-stock threshold

local function read_call()
  nskus, nlocs = tonumber(ARGV[A_NSKUS]), tonumber(ARGV[A_NLOCS])
  nchans = tonumber(ARGV[A_NCHANS])
  if not nskus or not nlocs or not nchans or nskus < 1
     or (#KEYS ~= SKU_KEYS * nskus and #KEYS ~= SKU_KEYS * nskus + 1) then
    return bad('bad header')
  end
  if #KEYS > SKU_KEYS * nskus then journal = KEYS[#KEYS] end
  fewest = ARGV[A_FEWEST] == '1'
  fresh = ARGV[A_FRESH] == '1'
  if not fresh and ARGV[A_FRESH] ~= '0' or fresh and not journal then
    return bad('bad header')
  end
  local at_loc = A_LISTS + nskus -- the first location; then safety stock, channels
  local at_safety, at_chan = at_loc + nlocs, at_loc + 2 * nlocs
  for i = 1, nskus do skus[i] = ARGV[A_LISTS + i - 1] end
  for i = 1, nlocs do
    locs[i] = ARGV[at_loc + i - 1]
    local units = tonumber(ARGV[at_safety + i - 1])
    if not units then return bad('bad safety stock') end
    if units > 0 then safety[locs[i]] = units end
  end
  for i = 1, nchans do chans[i] = ARGV[at_chan + i - 1] end
  norders = tonumber(ARGV[at_chan + nchans])
  first = at_chan + nchans + 1
  if not norders or #ARGV ~= first + ORDER_ARGS * norders then return bad('bad order count') end
  version = tonumber(ARGV[#ARGV])
  if not version then return bad('bad catalog version') end
  return nil
end

-- Pass 1: validate every spec and collect order ids per decision hash (no writes yet).
local function ids_by_home()
  local by_home = {}
  for o = 1, norders do
    local a = first + ORDER_ARGS * (o - 1)
    local oid, blob = ARGV[a + O_ID], ARGV[a + O_SPEC]
    local home, what = spec_home(blob, nskus, nlocs, nchans)
    if what == 'line' then return nil, bad('malformed line of order #' .. o) end
    if not home then return nil, bad('malformed order #' .. o) end
    local ids = by_home[home]
    if not ids then ids = {}; by_home[home] = ids end
    ids[#ids + 1] = oid
  end
  return by_home
end

-- A replayed order keeps its stored outcome: every entry of the journal, and one HMGET per
-- decision hash for the batch. (Asked before the staleness check: a stored outcome stands
-- whatever the catalog.) A fresh call has none to read, unless it ran before: its journal
-- entry (`prior`) says it was sent again (a reply lost, the call retried), and it reads
-- them like any call. Returns the stored outcomes and `prior`.
local function read_stored(by_home)
  local stored, prior = {}, false
  if fresh then
    prior = norders > 0 and call('HGET', journal, ARGV[first + O_ID])
    if not prior then return stored, prior end
  end
  if journal then
    for _, packed in ipairs(call('HVALS', journal)) do
      local list = cmsgpack.unpack(packed)
      for i = 1, #list, 2 do stored[list[i]] = list[i + 1] end
    end
  end
  for h, ids in pairs(by_home) do
    for i = 1, #ids, CHUNK do
      local got = hmget_gens(h, { unpack(ids, i, math.min(i + CHUNK - 1, #ids)) })
      for j = 1, #got do
        if got[j] then stored[ids[i + j - 1]] = got[j] end
      end
    end
  end
  return stored, prior
end

-- units already sold to each customer of this batch, of SKU s
local function read_sold(s)
  local custs, seen = {}, {}
  for a = first + O_SPEC, first + ORDER_ARGS * norders - 1, ORDER_ARGS do
    local c = spec_customer(ARGV[a])
    if c ~= '' and not seen[c] then seen[c] = true; custs[#custs + 1] = c end
  end
  return read_bought(s, custs)
end

local function read_skus()
  for s = 1, nskus do
    local t, sum, lk, cp = read_stock(sku_key(s, K_STOCK))
    stock[s], exists[s], dirty[s], total[s], locks[s] = t, t[STOCK_MARKER] ~= nil, {}, sum, lk
    if cp then
      camps[s], progress[s], adds[s] = cp, read_progress(sku_key(s, K_PROGRESS)), {}
      now = now or wall_ms()
    end
    any_low = any_low or t[RULE_LOW] ~= nil
    limit[s], vip_until[s] = t[RULE_LIMIT], t[RULE_VIP_UNTIL]
    ruled[s] = limit[s] ~= nil or vip_until[s] ~= nil or lk ~= nil
    if limit[s] then sold[s], sold_old[s] = read_sold(s); sold_dirty[s] = {} end
  end
end


local function stale_outcomes(stored)
  local out = {}
  for o = 1, norders do out[o] = stored[ARGV[first + ORDER_ARGS * (o - 1) + O_ID]] or STALE end
  return out
end

local function take(s, loc, q)
  stock[s][loc] = stock[s][loc] - q
  total[s] = total[s] - q
  dirty[s][loc] = true
end

-- The order ships every line from loc: its ACCEPTED outcome.
local function take_whole(loc, lines)
  local parts = { ACCEPTED }
  for i = 1, #lines, 2 do
    local s, q = lines[i], lines[i + 1]
    take(s, loc, q)
    parts[#parts + 1] = loc
    parts[#parts + 1] = skus[s]
    parts[#parts + 1] = q
  end
  return concat(parts, SEP)
end

-- The order ships as the split `allocs` (lib_route.lua) says: its ACCEPTED outcome.
local function take_split(allocs)
  local parts = { ACCEPTED }
  for _, a in ipairs(allocs) do
    take(a.sku, a.loc, a.q)
    parts[#parts + 1] = a.loc
    parts[#parts + 1] = skus[a.sku]
    parts[#parts + 1] = a.q
  end
  return concat(parts, SEP)
end

-- Stock only: sold_out, pickup_unavailable, or the allocations (taken). `floors`: per
-- location the units the order may not take (safety stock, for online channels).
local function decide_stock(blob, lines, pickup, floors)
  if pickup == 0 then
    for i = 1, #lines, 2 do
      if total[lines[i]] < lines[i + 1] then return SOLD_OUT end
    end
    if #lines == 2 then -- the common case: one line, shipped
      local s, q = lines[1], lines[2]
      local loc = nearest_holding(blob, ranking_end(blob), locs, stock[s], floors, q)
      if loc then
        take(s, loc, q)
        return ACCEPTED .. SEP .. loc .. SEP .. skus[s] .. SEP .. q
      end
    end
  end
  local loc, allocs = route(stock, locs, blob, pickup, lines, floors, fewest)
  if loc then return take_whole(loc, lines) end
  if allocs then return take_split(allocs) end
  return pickup > 0 and NO_PICKUP or SOLD_OUT
end

-- vip_only / limit_exceeded / sold_out (channel locks) / nil: the rules of the order's SKUs,
-- judged at paid_at, for a customer (`vip` or not) of the channel `ch`. `draws` gets, per
-- locked SKU index, the units the order would take out of its channel's own lock.
local function rules(blob, lines, customer, vip, ch, draws)
  local paid = spec_paid(blob)
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
      local own = lock_take(locks[s], ch, paid, lines[i + 1], total[s])
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

-- The order of channel `ch` was accepted: its channel's lock gives the units it drew.
local function draw_locks(ch, draws)
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

-- Does the accepted order become a candidate of a first-N campaign of its SKUs?
local function becomes_candidate(oid, blob, lines)
  local paid, candidate = nil, false
  for i = 1, #lines, 2 do
    local s = lines[i]
    if camps[s] then
      paid = paid or spec_paid(blob)
      if add_candidate(camps[s], progress[s], adds[s], oid, paid, now, false) then
        candidate = true
      end
    end
  end
  return candidate
end

-- The decision hashes' new fields: per SKU index, (field, value) pairs (decide_all); and
-- a fresh call's outcomes, the journal's: order id, outcome, ...
local records, journaled = {}, {}

-- An accepted order's effects on the rules of its SKUs, kept per SKU in the SKU's decision
-- hash under DEC_RULED .. oid (keys.py): the customer, the channel, the units counted against
-- the customer's limit and those drawn from the channel's own lock, where either is above
-- 0 (a rejection after the decision gives them back: undo_units.lua).
local function keep_ruled(oid, lines, customer, ch, draws)
  local counted = {}
  for i = 1, #lines, 2 do
    local s = lines[i]
    if limit[s] then counted[s] = (counted[s] or 0) + lines[i + 1] end
  end
  for s = 1, nskus do
    local c, d = counted[s] or 0, draws[s] or 0
    if c > 0 or d > 0 then
      local rec = records[s]
      rec[#rec + 1] = DEC_RULED .. oid
      rec[#rec + 1] = concat({ customer, ch, c, d }, SEP)
    end
  end
end

-- What follows from an accepted outcome `res` of an order of channel `ch`: the customer's
-- counts and the lock's draws (`draws` nil: no rules; kept: keep_ruled), the candidacy (then
-- CANDIDATE .. res; not while its payment is `pending`: a payment makes it a candidate,
-- dataflows/payments.py), the alerts.
local function accepted(oid, blob, lines, customer, ch, draws, res, pending)
  if draws then
    count_sold(lines, customer)
    draw_locks(ch, draws)
    keep_ruled(oid, lines, customer, ch, draws)
  end
  if now and not pending and becomes_candidate(oid, blob, lines) then res = CANDIDATE .. res end
  if any_low then
    for i = 1, #lines, 2 do
      local s = lines[i]
      settle_alert(s, skus[s], total[s], stock[s])
    end
  end
  return res
end

-- The usual order, shipped, of one line of a SKU without rules, in a call with no campaign
-- and no low-stock threshold, that a single location can take: its ACCEPTED outcome, taken,
-- as decide_one would decide it (without its tables); else nil: decide_one decides it.
local function decide_plain(blob)
  local p1, p2, n1, n2, _, _, f, l1, l2 = byte(blob, SPEC_PICKUP, SPEC_CUSTOMER + 1)
  if n1 ~= 1 or n2 ~= 0 or p1 ~= 0 or p2 ~= 0 then return nil end
  local s1, s2, q1, q2, q3, q4 = byte(blob, SPEC_HEAD + 1, SPEC_HEAD + LINE_BYTES)
  local s = s1 + 256 * s2
  if not exists[s] or ruled[s] then return nil end
  local q = q1 + 256 * (q2 + 256 * (q3 + 256 * q4))
  if total[s] < q then return nil end
  local floors = f % (2 * FLAG_SAFETY) >= FLAG_SAFETY and NONE or safety
  local loc = nearest_holding(blob, #blob - l1 - 256 * l2, locs, stock[s], floors, q)
  if not loc then return nil end
  take(s, loc, q)
  return ACCEPTED .. SEP .. loc .. SEP .. skus[s] .. SEP .. q
end

local function decide_one(oid, blob)
  if not (now or any_low) then
    local res = decide_plain(blob)
    if res then return res end
  end
  local lines, has_rules, pickup, c, vip, all_stock, short, pending = read_spec(blob, exists, ruled)
  if not lines then return UNKNOWN end
  local draws, ch, customer = nil, chans[c], nil
  if has_rules then -- (the customer counts only for rules)
    customer = spec_customer(blob)
    draws = {}
    local broken = rules(blob, lines, customer, vip, ch, draws)
    if broken then return broken end
  end
  local res = decide_stock(blob, lines, pickup, all_stock and NONE or safety)
  if res == SOLD_OUT or res == NO_PICKUP then
    if short then return BUCKET_SHORT end
    return res
  end
  if draws or now or any_low then
    res = accepted(oid, blob, lines, customer, ch, draws, res, pending)
  end
  return res
end

-- Pass 2: decide in order, on the Lua tables. Returns the outcomes; `records` gets, per SKU
-- index, the (order id, outcome) pairs its decision hash stores (and keep_ruled's); in a
-- fresh call `journaled` gets them instead.
local function decide_all(stored)
  local out = {}
  for s = 1, nskus do records[s] = {} end
  for o = 1, norders do
    local a = first + ORDER_ARGS * (o - 1)
    local oid = ARGV[a + O_ID]
    local prev = stored[oid]
    local blob = ARGV[a + O_SPEC]
    if prev then
      out[o] = prev
    elseif not fresh and byte(blob, SPEC_FLAGS) >= FLAG_STORED then -- (the highest flag)
      out[o] = UNDECIDED
    else
      local res = decide_one(oid, blob)
      out[o] = res
      if res ~= BUCKET_SHORT then
        stored[oid] = res
        local rec = journaled
        if not fresh then
          local h1, h2 = byte(blob, SPEC_HOME, SPEC_HOME + 1)
          rec = records[h1 + 256 * h2]
        end
        rec[#rec + 1] = oid
        rec[#rec + 1] = res
      end
    end
  end
  return out
end

-- Write back what changed. A fresh call's journal entry keeps what an earlier call of the
-- same first order id wrote there (`prior`: the same call sent again, or a borrowing round
-- of the batch that began with the order it left short).
local function write_back(records, prior)
  if fresh and norders > 0 then
    local entry = journaled
    if prior then
      entry = cmsgpack.unpack(prior)
      for i = 1, #journaled do entry[#entry + 1] = journaled[i] end
    end
    call('HSET', journal, ARGV[first + O_ID], cmsgpack.pack(entry))
  end
  for s = 1, nskus do
    settle_alert(s, skus[s], total[s], stock[s])
    write_changed(sku_key(s, K_STOCK), dirty[s], stock[s])
    local rec = records[s]
    for i = 1, #rec, CHUNK do
      call('HSET', sku_key(s, K_RECORDS), unpack(rec, i, math.min(i + CHUNK - 1, #rec)))
    end
    if sold_dirty[s] then write_bought(s, sold_dirty[s], sold[s], sold_old[s]) end
    if adds[s] then write_progress(s, progress[s], adds[s]) end
  end
end

local failed = read_call()
if failed then return failed end
local by_home
by_home, failed = ids_by_home()
if failed then return failed end
local stored, prior = read_stored(by_home)
read_skus()
if rules_newer(stock, nskus, version) then return stale_outcomes(stored) end
local out = decide_all(stored)
write_back(records, prior)
return out
