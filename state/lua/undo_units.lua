-- undo_units.lua: give a cancelled order's units back, this slot's part (idempotent), never
-- more than is still out.
--
-- KEYS: per SKU i of this call, the decide.lua layout (lib_stock.lua sku_key): K_STOCK stock
--       hash, K_RECORDS decision hash (it keeps the marker "\0u:<order id>" once the units are
--       back, and the count "\0rq:<order id>" of units of the SKU returned for the order, see
--       return_units.lua), K_BOUGHT units sold per customer, K_ALERTS alerts,
--       K_CANDIDATES campaign candidates, K_PROGRESS campaign progress.
-- ARGV: nskus, sku names (nskus), norders, then per order: order id, n, then n quadruples
--       (sku index, location, qty >= 0, returned): the order's allocations in this slot, in
--       the order of its outcome. `returned` (read on a SKU's first quadruple) = units of the
--       SKU returned for the order as counted in another slot: for a hot-SKU bucket b > 0,
--       the '\0rq' of the SKU's own keys (bucket 0), where its returns land; else 0. A
--       quadruple with qty 0 gives nothing back and only marks: the order's units of that
--       SKU lie in another bucket (dataflows/aftersale.py `_undo`, its first phase).
-- Per SKU and order at most once, and atomically with return_units.lua (which refuses a
-- return once "\0u:<order id>" is set): the units still out go back to the locations they came
-- from, i.e. the allocations minus the units returned ('\0rq' + returned), those taken off the
-- LAST allocations first (the outcome's order); so over any sequence of returns and cancels
-- an order never gives back more than it shipped. An unsettled first-N candidacy of the order
-- ends (its slot passes to the next in rank). What the customer bought still counts toward a
-- per-customer limit, and a channel lock's drawn count stays: the units go back to the pool.
-- Returns per order {candidacies removed (0: none, or already settled), then per SKU of the
-- order in this call (in order of first appearance) its units returned before the cancel}.
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
  local oid, n = ARGV[p], tonumber(ARGV[p + 1])
  if not oid or not n then return redis.error_reply('ERR undo_units.lua: bad order #' .. o) end
  local skus, by_sku = {}, {} -- SKU indices in order of first appearance; s -> {allocs, returned}
  for j = 1, n do
    local b = p + 2 + 4 * (j - 1)
    local s, q, r = tonumber(ARGV[b]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    if not s or s < 1 or s > nskus or not q or q < 0 or not r or r < 0 then
      return redis.error_reply('ERR undo_units.lua: bad allocation of order #' .. o)
    end
    local e = by_sku[s]
    if not e then
      e = { {}, r }
      by_sku[s] = e
      skus[#skus + 1] = s
    end
    if q > 0 then e[1][#e[1] + 1] = { ARGV[b + 1], q } end
  end
  orders[o] = { oid, skus, by_sku }
  p = p + 2 + 4 * n
end
if p - 1 ~= #ARGV then return redis.error_reply('ERR undo_units.lua: trailing arguments') end
local out, touched = {}, {}
for o, od in ipairs(orders) do
  local oid, skus, by_sku = od[1], od[2], od[3]
  local res = { 0 }
  for _, s in ipairs(skus) do
    local allocs, returned = by_sku[s][1], by_sku[s][2]
    returned = returned + returned_units(s, oid)
    res[#res + 1] = returned
    if not hget_gens(s, DEC_UNDONE .. oid) then
      redis.call('HSET', sku_key(s, K_RECORDS), DEC_UNDONE .. oid, 1)
      local _, _, _, camps = read_stock(sku_key(s, K_STOCK))
      for id in pairs(camps or {}) do
        res[1] = res[1] + redis.call('ZREM', sku_key(s, K_CANDIDATES), candidate_members(id, oid))
      end
      for j = #allocs, 1, -1 do -- what came back already is taken off the last ones first
        local loc, q = allocs[j][1], allocs[j][2]
        local cut = math.min(returned, q)
        returned = returned - cut
        if q > cut then
          add_units(sku_key(s, K_STOCK), loc, q - cut)
          touched[s] = true
        end
      end
    end
  end
  out[o] = res
end
for s in pairs(touched) do -- units came back: the SKU's alert level may change
  local t, units = read_stock(sku_key(s, K_STOCK))
  settle_alert(s, names[s], units, t)
end
return out
