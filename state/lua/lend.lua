-- lend.lua: a bucket of a hot SKU lends units to another bucket of the same SKU (the first
-- half of a transfer between two hash slots; receive.lua is the second).
--
-- KEYS: KEYS[1] = the lending bucket's stock hash, KEYS[2] = its hash of units in flight.
-- ARGV: transfer id, recipient bucket number, mode ("all": every unit it may lend; "half":
--       half of them at each location, rounded up), the catalog version the caller's plan
--       of buckets comes from, then pairs (location, units it keeps there: the safety stock
--       for bucket 0, which alone holds it, else 0).
-- Returns: flat {location, units, ...} taken out of this bucket, in the order given; the same
--       list is kept under the transfer id in KEYS[2] until the recipient has it, so a crash
--       between the two halves loses nothing (Buckets.reconcile finishes the transfer).
--       STALE, lending nothing, when the bucket's rules come from a newer catalog than the
--       caller's: a reload may have changed the SKU's buckets (the recipient may be gone).
-- Alerts: none. A bucket's units are not the SKU's, so no bucket may judge an alert level;
-- the catalog refuses a low_stock_threshold on a bucketed SKU, no bucket hash has a level,
-- and settle_alert (lib_stock.lua) raises nothing for it: a bucketed SKU has no alerts.
local version = tonumber(ARGV[4])
if not version or #ARGV % 2 ~= 0 then return redis.error_reply('ERR lend.lua: bad arguments') end
if tonumber(redis.call('HGET', KEYS[1], RULES_VERSION) or '0') > version then return STALE end
local all = ARGV[3] == 'all'
local out = {}
for i = 5, #ARGV, 2 do
  local loc, keep = ARGV[i], tonumber(ARGV[i + 1])
  if not keep then return redis.error_reply('ERR lend.lua: bad floor for ' .. loc) end
  local have = tonumber(redis.call('HGET', KEYS[1], loc) or '0') - keep
  if have > 0 then
    local give = all and have or math.ceil(have / 2)
    redis.call('HINCRBY', KEYS[1], loc, -give)
    redis.call('HINCRBY', KEYS[1], STOCK_UP, 1) -- (lib_stock.lua add_units)
    out[#out + 1] = loc
    out[#out + 1] = give
  end
end
if #out > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. SEP .. table.concat(out, SEP))
end
return out
