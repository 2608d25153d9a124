-- undo_units.lua: give a cancelled order's units back, this slot's part (idempotent).
--
-- KEYS: per SKU i of this call, the decide.lua layout: KEYS[6i-5] stock hash, KEYS[6i-4]
--       decision hash (it keeps the marker "~u:<order id>" once the units are back),
--       KEYS[6i-3] units sold per customer, KEYS[6i-2] alerts, KEYS[6i-1] campaign
--       candidates, KEYS[6i] campaign progress.
-- ARGV: nskus, sku names (nskus), norders, then per order: order id, nallocs, nallocs
--       triples (sku index, location, qty): the order's allocations in this slot.
-- Per SKU and order at most once: the units go back to the locations they came from, and an
-- unsettled first-N candidacy of the order ends (its slot passes to the next in rank).
-- What the customer bought still counts toward a per-customer limit, and a channel lock's
-- drawn count stays: the units go back to the shared pool.
-- Returns per order the number of candidacies removed (0: none, or already settled).
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= 6 * nskus then return redis.error_reply('ERR undo_units.lua: bad header') end
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
  local allocs = {}
  for j = 1, n do
    local s, q = tonumber(ARGV[p + 2 + 3 * (j - 1)]), tonumber(ARGV[p + 4 + 3 * (j - 1)])
    if not s or s < 1 or s > nskus or not q or q < 1 then
      return redis.error_reply('ERR undo_units.lua: bad allocation of order #' .. o)
    end
    allocs[j] = { s, ARGV[p + 3 + 3 * (j - 1)], q }
  end
  orders[o] = { oid, allocs }
  p = p + 2 + 3 * n
end
if p - 1 ~= #ARGV then return redis.error_reply('ERR undo_units.lua: trailing arguments') end
local out, touched = {}, {}
for o, od in ipairs(orders) do
  local oid, allocs = od[1], od[2]
  local fresh = {}
  out[o] = 0
  for _, a in ipairs(allocs) do
    local s = a[1]
    if fresh[s] == nil then
      fresh[s] = redis.call('HSETNX', KEYS[6 * s - 4], '~u:' .. oid, 1) == 1
      if fresh[s] then
        touched[s] = true
        local _, _, _, camps = read_stock(KEYS[6 * s - 5])
        for id in pairs(camps or {}) do
          local m = id .. '\31' .. oid
          out[o] = out[o] + redis.call('ZREM', KEYS[6 * s - 1], m, m .. '\31L')
        end
      end
    end
    if fresh[s] then redis.call('HINCRBY', KEYS[6 * s - 5], a[2], a[3]) end
  end
end
for s in pairs(touched) do -- units came back: an alert flag may clear
  local t, units = read_stock(KEYS[6 * s - 5])
  settle_alert(s, names[s], units, t)
end
return out
