-- undo_units.lua: give a cancelled order's units back, this slot's part (idempotent), never
-- more than is still out.
--
-- KEYS: per SKU i of this call, the decide.lua layout (lib_stock.lua sku_key): K_STOCK stock
--       hash, K_RECORDS decision hash (it keeps the marker "\0u:<order id>" once the units are
--       back, and the count "\0rq:<order id>" of units of the SKU returned for the order, see
--       return_units.lua), K_BOUGHT units sold per customer, K_ALERTS alerts,
--       K_CANDIDATES campaign candidates, K_PROGRESS campaign progress.
-- ARGV: nskus, sku names (nskus), norders, then per order: order id, void (1: the order was
--       rejected after its decision, which is void: below; else 0), n, then n quadruples
--       (sku index, location, qty >= 0, returned): the order's allocations in this slot, in
--       the order of its record (records.allocations). `returned` (read on a SKU's first
--       quadruple) = units of the SKU returned for the order as counted in another slot: for
--       a hot-SKU bucket b > 0, its share of the '\0rq' of the SKU's own keys (bucket 0),
--       where its returns land; else 0. `returned` -1 marks another bucket's allocation of
--       the SKU (dataflows/aftersale.py `undo`, its first phase, in bucket 0): it gives
--       nothing back here, and takes its place in the order the returned units are taken
--       off; the answer says how many fell on it.
-- Per SKU and order at most once, and atomically with return_units.lua (which refuses a
-- return once "\0u:<order id>" is set): the units still out go back to the locations they came
-- from, i.e. the allocations minus the units returned ('\0rq' + returned), those taken off the
-- LAST allocations first (the outcome's order); so over any sequence of returns and cancels
-- an order never gives back more than it shipped. An unsettled first-N candidacy of the order
-- ends (its slot passes to the next in rank). What the customer bought still counts toward a
-- per-customer limit, and a channel lock's drawn count stays: the units go back to the pool;
-- unless the order is `void` (rejected after its decision, the order never happened: a
-- location's day was full, dataflows/fulfilment.py): then its count against the customer's
-- limit and its draw from its channel's lock go back too, as decide.lua kept them (DEC_RULED;
-- a cross-slot order's are in its parts: release_parts.lua 'rules').
-- Returns per order {candidacies removed (0: none, or already settled), then per SKU of the
-- order in this call (in order of first appearance) its units returned before the cancel,
-- then per other bucket's allocation (in the same order) the returned units taken off it}.
-- (Those cuts are answered alike on a replay: they follow from the count and the order.)
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= SKU_KEYS * nskus then return redis.error_reply('ERR undo_units.lua: bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[1 + i] end
local p = 2 + nskus
local norders = tonumber(ARGV[p])
if not norders then return redis.error_reply('ERR undo_units.lua: bad order count') end
p = p + 1
local orders = {}
for o = 1, norders do
  local oid, void, n = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2])
  if not oid or (void ~= '0' and void ~= '1') or not n then
    return redis.error_reply('ERR undo_units.lua: bad order #' .. o)
  end
  local skus, by_sku = {}, {} -- SKU indices in order of first appearance; s -> {allocs, returned}
  for j = 1, n do
    local b = p + 3 + 4 * (j - 1)
    local s, q, r = tonumber(ARGV[b]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    if not s or s < 1 or s > nskus or not q or q < 0 or not r or r < -1 then
      return redis.error_reply('ERR undo_units.lua: bad allocation of order #' .. o)
    end
    local foreign = r == -1
    local e = by_sku[s]
    if not e then
      e = { {}, foreign and 0 or r }
      by_sku[s] = e
      skus[#skus + 1] = s
    end
    if q > 0 or foreign then e[1][#e[1] + 1] = { ARGV[b + 1], q, foreign } end
  end
  orders[o] = { oid, skus, by_sku, void == '1' }
  p = p + 3 + 4 * n
end
if p - 1 ~= #ARGV then return redis.error_reply('ERR undo_units.lua: trailing arguments') end

-- A void decision gives back what it took of SKU s's rules (decide.lua keep_ruled's record):
-- the units counted against the customer's limit (in the caller's generation: the three
-- generations' sum is what counts) and those drawn from the channel's lock, if it has one.
local VOID_RECORD = '^(.-)' .. SEP .. '(.-)' .. SEP .. '(%d+)' .. SEP .. '(%d+)$'
local function unrule(s, oid)
  local rec = hget_gens(s, DEC_RULED .. oid)
  if not rec then return end
  local customer, ch, counted, drawn = string.match(rec, VOID_RECORD)
  counted, drawn = tonumber(counted), tonumber(drawn)
  if counted > 0 then redis.call('HINCRBY', sku_key(s, K_BOUGHT), customer, -counted) end
  if drawn > 0 and redis.call('HEXISTS', sku_key(s, K_STOCK), LOCK_QTY .. ch) == 1 then
    add_units(sku_key(s, K_STOCK), LOCK_USED .. ch, -drawn)
  end
end

local out, touched = {}, {}
for o, od in ipairs(orders) do
  local oid, skus, by_sku, void = od[1], od[2], od[3], od[4]
  local res, foreign = { 0 }, {}
  for _, s in ipairs(skus) do
    local allocs, returned = by_sku[s][1], by_sku[s][2]
    returned = returned + returned_units(s, oid)
    res[#res + 1] = returned
    local cuts = {}
    for j = #allocs, 1, -1 do -- what came back already is taken off the last ones first
      cuts[j] = math.min(returned, allocs[j][2])
      returned = returned - cuts[j]
    end
    if not hget_gens(s, DEC_UNDONE .. oid) then
      redis.call('HSET', sku_key(s, K_RECORDS), DEC_UNDONE .. oid, 1)
      if void then unrule(s, oid) end
      local _, _, _, camps = read_stock(sku_key(s, K_STOCK))
      for id in pairs(camps or {}) do
        res[1] = res[1] + redis.call('ZREM', sku_key(s, K_CANDIDATES), candidate_members(id, oid))
      end
      for j, a in ipairs(allocs) do
        if not a[3] and a[2] > cuts[j] then
          add_units(sku_key(s, K_STOCK), a[1], a[2] - cuts[j])
          touched[s] = true
        end
      end
    end
    for j, a in ipairs(allocs) do
      if a[3] then foreign[#foreign + 1] = cuts[j] end
    end
  end
  for _, cut in ipairs(foreign) do res[#res + 1] = cut end
  out[o] = res
end
for s in pairs(touched) do -- units came back: the SKU's alert level may change
  local t, units = read_stock(sku_key(s, K_STOCK))
  settle_alert(s, names[s], units, t)
end
return out
