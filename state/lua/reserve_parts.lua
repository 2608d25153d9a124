-- reserve_parts.lua: reserve this slot's part of many orders whose SKUs span hash slots.
-- Prepended: lib_protocol.lua, lib_stock.lua. The route was chosen by the caller
-- (dataflows/cross_slot.py plans each order's allocations): this script checks and takes them.
--
-- KEYS: for SKU i of this call, the lib_stock.lua layout: sku_key(i, K_STOCK) = its stock
--       hash (with its NUL-prefixed rules), K_RECORDS = its parts hash (order id -> what is
--       reserved here for that order), K_BOUGHT = units sold per customer, K_ALERTS = its
--       alerts stream, K_CANDIDATES / K_PROGRESS = its campaigns' candidates and progress
--       (unused: an order becomes a first-N candidate once all its parts are reserved,
--       candidates.lua). All in one slot.
-- ARGV: nskus, sku names (nskus), nsafe, nsafe pairs (location, units online channels may
--       not take there), the caller's catalog version, norders, then per order ORDER_HEAD
--       arguments (O_* below: order_id, home (SKU index whose parts hash keeps this order's
--       part), customer id, channel id, vip (0/1), paid_at (epoch ms), store_channel (1: may
--       take safety stock), nallocs), then nallocs triples (sku index, location, qty).
local O_ID = 0
local O_HOME = 1
local O_CUSTOMER = 2
local O_CHANNEL = 3
local O_VIP = 4
local O_PAID = 5
local O_STORE_CHANNEL = 6
local O_NALLOCS = 7
local ORDER_HEAD = 8
local ALLOC_ARGS = 3
-- Returns: per order one of these codes (Rules, locks last, are judged before stock; each
-- order's part is all or nothing; orders are applied in ARGV order):
local SHORT_OF_STOCK = 0 -- not enough stock
local RESERVED = 1 -- reserved now
local RESERVED_BEFORE = 2 -- already reserved by an earlier call (unchanged)
local NOT_VIP = 3 -- vip_only
local OVER_LIMIT = 4 -- limit_exceeded
-- sold_out for this channel: other channels' locks hold the units (nothing changed for that
-- order)
local LOCKED_OUT = 5
-- for every order when a SKU's rules ('\0v') are newer than the caller's catalog (nothing
-- changed: it refreshes and plans again; dataflows/cross_slot.py STALE)
local STALE_RULES = 6
-- A stored part is customer, channel, then (location, sku, qty, counted, locked) quintuples:
-- counted = 1 where the units were added to the customer's count, locked = the units drawn
-- from the channel's own lock (release_parts gives both back).
local call, unpack, tonumber = redis.call, unpack, tonumber
local function bad(msg) return redis.error_reply('ERR reserve_parts.lua: ' .. msg) end

-- The call (read_call): its SKUs' names, safety stock, catalog version and orders. The
-- orders live in arrays indexed by order number (no table per order: this script runs for
-- every part of every basket): id, home, customer, channel, vip, paid, store channel, and
-- their allocations' range in the allocation arrays (a_sku, a_loc, a_qty).
local nskus, version, norders
local names, safety = {}, {}
local o_id, o_home, o_cust, o_chan, o_vip, o_paid, o_store, o_first, o_n = {}, {}, {}, {}, {}, {}, {}, {}, {}
local a_sku, a_loc, a_qty = {}, {}, {}

-- The order whose arguments start at p (its number o) into the arrays: where the next
-- starts; else nil and the error.
local function read_order(p, o)
  local home, paid, n = tonumber(ARGV[p + O_HOME]), tonumber(ARGV[p + O_PAID]), tonumber(ARGV[p + O_NALLOCS])
  local oid, customer, channel = ARGV[p + O_ID], ARGV[p + O_CUSTOMER], ARGV[p + O_CHANNEL]
  if not oid or not home or not customer or not channel or not paid or not n
     or home < 1 or home > nskus or n < 1 then
    return nil, bad('malformed order #' .. o)
  end
  o_id[o], o_home[o], o_cust[o], o_chan[o], o_paid[o] = oid, home, customer, channel, paid
  o_vip[o], o_store[o] = ARGV[p + O_VIP] == '1', ARGV[p + O_STORE_CHANNEL] == '1'
  local k = #a_sku
  o_first[o], o_n[o] = k + 1, n
  p = p + ORDER_HEAD
  for i = 1, n do
    local s, loc, q = tonumber(ARGV[p]), ARGV[p + 1], tonumber(ARGV[p + 2])
    if not s or s < 1 or s > nskus or not loc or not q or q < 1 then
      return nil, bad('malformed allocation ' .. i .. ' of order #' .. o)
    end
    a_sku[k + i], a_loc[k + i], a_qty[k + i] = s, loc, q
    p = p + ALLOC_ARGS
  end
  return p
end

local function read_call()
  nskus = tonumber(ARGV[1])
  if not nskus or #KEYS ~= SKU_KEYS * nskus then return bad('bad header') end
  for i = 1, nskus do names[i] = ARGV[1 + i] end
  local p = 2 + nskus
  local nsafe = tonumber(ARGV[p]); p = p + 1
  if not nsafe then return bad('bad safety stock') end
  for _ = 1, nsafe do
    safety[ARGV[p]] = tonumber(ARGV[p + 1])
    if not safety[ARGV[p]] then return bad('bad safety stock') end
    p = p + 2
  end
  version = tonumber(ARGV[p]); p = p + 1
  if not version then return bad('bad catalog version') end
  norders = tonumber(ARGV[p]); p = p + 1
  if not norders then return bad('bad order count') end
  for o = 1, norders do
    local next_p, err = read_order(p, o)
    if not next_p then return err end
    p = next_p
  end
  if p - 1 ~= #ARGV then return bad('trailing arguments') end
  return nil
end

-- Batch the Redis work: one HMGET per parts hash, one HGETALL per SKU, decisions on Lua
-- tables, then one HSET per stock hash, per parts hash and per counters hash.
local stock, dirty, limit, vip_until, sold, sold_dirty, total = {}, {}, {}, {}, {}, {}, {}
local sold_old = {} -- units sold per customer in the generation before (lib_stock.lua read_bought)
local locks = {}

-- The orders reserved by an earlier call (order id -> true).
local function read_done()
  local done, by_home = {}, {}
  for o = 1, norders do
    local ids = by_home[o_home[o]]
    if not ids then ids = {}; by_home[o_home[o]] = ids end
    ids[#ids + 1] = o_id[o]
  end
  for h, ids in pairs(by_home) do
    local got = hmget_gens(h, ids)
    for k = 1, #ids do
      if got[k] then done[ids[k]] = true end
    end
  end
  return done
end

-- units already sold to each customer of this call, of SKU s
local function read_sold(s)
  local custs, seen = {}, {}
  for o = 1, norders do
    local c = o_cust[o]
    if not seen[c] then seen[c] = true; custs[#custs + 1] = c end
  end
  return read_bought(s, custs)
end

local function read_skus()
  for s = 1, nskus do
    local t, sum, lk = read_stock(sku_key(s, K_STOCK))
    total[s], locks[s] = sum, lk
    stock[s], dirty[s], limit[s], vip_until[s] = t, {}, t[RULE_LIMIT], t[RULE_VIP_UNTIL]
    if limit[s] then sold[s], sold_old[s] = read_sold(s); sold_dirty[s] = {} end
  end
end

-- An order of one allocation (a basket's part in a slot usually is): check() without its
-- tables. RESERVED and the units drawn from the channel's own lock, or the refusal.
local function check_one(o, k)
  local s, q = a_sku[k], a_qty[k]
  if vip_until[s] and not o_vip[o] and o_paid[o] < vip_until[s] then return NOT_VIP end
  local customer = o_cust[o]
  if limit[s] and (customer == '' or (sold[s][customer] or 0) + q > limit[s]) then
    return OVER_LIMIT
  end
  local own = 0
  if locks[s] then
    own = lock_take(locks[s], o_chan[o], o_paid[o], q, total[s])
    if not own then return LOCKED_OUT end
  end
  local loc = a_loc[k]
  local floor = o_store[o] and 0 or (safety[loc] or 0)
  if (stock[s][loc] or 0) - floor < q then return SHORT_OF_STOCK end
  return RESERVED, own
end

-- RESERVED (reservable), SHORT_OF_STOCK, NOT_VIP, OVER_LIMIT or LOCKED_OUT as above;
-- `draws` gets, per locked SKU, the units that would come out of the channel's own lock.
local function check(o, draws)
  local need, per_sku = {}, {}
  local first, last = o_first[o], o_first[o] + o_n[o] - 1
  for k = first, last do
    local s = a_sku[k]
    if vip_until[s] and not o_vip[o] and o_paid[o] < vip_until[s] then return NOT_VIP end
    per_sku[s] = (per_sku[s] or 0) + a_qty[k]
  end
  local customer = o_cust[o]
  for s, q in pairs(per_sku) do
    if limit[s] and (customer == '' or (sold[s][customer] or 0) + q > limit[s]) then
      return OVER_LIMIT
    end
  end
  for s, q in pairs(per_sku) do
    if locks[s] then
      local own = lock_take(locks[s], o_chan[o], o_paid[o], q, total[s])
      if not own then return LOCKED_OUT end
      draws[s] = own
    end
  end
  for k = first, last do
    local s, loc = a_sku[k], a_loc[k]
    local key = s .. SEP .. loc
    need[key] = (need[key] or 0) + a_qty[k]
    local floor = o_store[o] and 0 or (safety[loc] or 0)
    if (stock[s][loc] or 0) - floor < need[key] then return SHORT_OF_STOCK end
  end
  return RESERVED
end

-- Take allocation k of an order of `customer` and `channel` with `own` units of it from the
-- channel's lock: its stored quintuple (location, sku, qty, counted, locked).
local function take(k, customer, channel, own)
  local s, loc, q = a_sku[k], a_loc[k], a_qty[k]
  stock[s][loc] = stock[s][loc] - q
  total[s] = total[s] - q
  dirty[s][loc] = true
  local counted = 0
  if limit[s] then
    sold[s][customer] = (sold[s][customer] or 0) + q
    sold_dirty[s][customer] = true
    counted = 1
  end
  if own > 0 then
    local l, field = locks[s][channel], LOCK_USED .. channel
    l.c = l.c + own
    stock[s][field] = l.c
    dirty[s][field] = true
  end
  return loc .. SEP .. names[s] .. SEP .. q .. SEP .. counted .. SEP .. own
end

-- Take the checked order's units; its stored part (see the header). `draws`: per SKU the
-- units from the channel's own lock (they go on the SKU's first allocation).
local function reserve(o, draws)
  local customer, channel = o_cust[o], o_chan[o]
  local stored = { customer, channel }
  for k = o_first[o], o_first[o] + o_n[o] - 1 do
    local s = a_sku[k]
    stored[#stored + 1] = take(k, customer, channel, draws[s] or 0)
    draws[s] = 0
  end
  return table.concat(stored, SEP)
end

-- Every order in turn (`done`: read_done): its code, and per SKU index the (order id, part) pairs to store.
local function reserve_all(done)
  local out, parts = {}, {}
  for s = 1, nskus do parts[s] = {} end
  for o = 1, norders do
    local oid = o_id[o]
    if done[oid] then
      out[o] = RESERVED_BEFORE
    else
      local k, status, own, rec = o_first[o], nil, nil, nil
      if o_n[o] == 1 then
        status, own = check_one(o, k)
        if status == RESERVED then
          rec = o_cust[o] .. SEP .. o_chan[o] .. SEP .. take(k, o_cust[o], o_chan[o], own)
        end
      else
        local draws = {}
        status = check(o, draws)
        if status == RESERVED then rec = reserve(o, draws) end
      end
      if status == RESERVED then
        local home = parts[o_home[o]]
        home[#home + 1] = oid
        home[#home + 1] = rec
        done[oid] = true
        for j = k, k + o_n[o] - 1 do
          local s = a_sku[j]
          settle_alert(s, names[s], total[s], stock[s])
        end
      end
      out[o] = status
    end
  end
  return out, parts
end

local function write_back(parts)
  for s = 1, nskus do
    settle_alert(s, names[s], total[s], stock[s])
    write_changed(sku_key(s, K_STOCK), dirty[s], stock[s])
    if #parts[s] > 0 then call('HSET', sku_key(s, K_RECORDS), unpack(parts[s])) end
    if sold_dirty[s] then write_bought(s, sold_dirty[s], sold[s], sold_old[s]) end
  end
end

local failed = read_call()
if failed then return failed end
local done = read_done()
read_skus()
if rules_newer(stock, nskus, version) then
  local out = {}
  for o = 1, norders do out[o] = STALE_RULES end
  return out
end
local out, parts = reserve_all(done)
write_back(parts)
return out
