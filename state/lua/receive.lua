-- receive.lua: a bucket of a hot SKU takes in units other buckets lent it (lend.lua), each
-- transfer once.
--
-- KEYS: KEYS[1] = the receiving bucket's stock hash, KEYS[1 + i] = the mark of transfer i
--       (in this slot; kept 30 days: a transfer a lender still holds is finished by the next
--       move of the SKU or the next worker start, long before its mark goes, and a mover
--       whose lease ran out mid-move finds the mark of the one that finished it).
-- ARGV: n, then per transfer: npairs, then (location, units) pairs.
-- Returns: how many of the n transfers were applied now (the others had been before).
-- Alerts: none. A bucket's units are not the SKU's, so no bucket may judge an alert level;
-- the catalog refuses a low_stock_threshold on a bucketed SKU, no bucket hash has a level,
-- and settle_alert (lib_stock.lua) raises nothing for it: a bucketed SKU has no alerts.
local n = tonumber(ARGV[1])
if not n or #KEYS ~= 1 + n then return redis.error_reply('ERR receive.lua: bad header') end
local p = 2
for i = 1, n do -- validate every transfer before the first write
  local pairs_ = tonumber(ARGV[p])
  if not pairs_ or p + 2 * pairs_ > #ARGV then return redis.error_reply('ERR receive.lua: bad transfer') end
  for j = p + 2, p + 2 * pairs_, 2 do
    if not tonumber(ARGV[j]) then return redis.error_reply('ERR receive.lua: bad units') end
  end
  p = p + 1 + 2 * pairs_
end
local applied = 0
p = 2
for i = 1, n do
  local pairs_ = tonumber(ARGV[p])
  if redis.call('SET', KEYS[1 + i], 1, 'NX', 'EX', 2592000) then
    applied = applied + 1
    for j = p + 1, p + 2 * pairs_, 2 do
      redis.call('HINCRBY', KEYS[1], ARGV[j], tonumber(ARGV[j + 1]))
      redis.call('HINCRBY', KEYS[1], STOCK_UP, 1) -- (lib_stock.lua add_units)
    end
  end
  p = p + 1 + 2 * pairs_
end
return applied
