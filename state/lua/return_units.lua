-- return_units.lua: put returned units back at the named location (this slot's SKUs).
--
-- KEYS: per SKU i, the decide.lua layout: KEYS[6i-5] stock hash, KEYS[6i-4] decision hash
--       (it keeps "~r:<digest>" per applied return and "~rq:<order id>" = units of the SKU
--       returned for the order so far), KEYS[6i-2] alerts stream (the others unused here).
-- ARGV: nskus, sku names (nskus), n, then per line: sku index, order id, return digest,
--       location, qty. The caller has checked the lines against what was shipped.
-- Per (SKU, return) at most once: a replayed or duplicated return changes nothing.
-- Returns per line 1 (units back now) or 0 (this return was applied before).
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= 6 * nskus then return redis.error_reply('ERR return_units.lua: bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[1 + i] end
local p = 2 + nskus
local n = tonumber(ARGV[p])
if not n or #ARGV ~= p + 5 * n then return redis.error_reply('ERR return_units.lua: bad lines') end
for i = 1, n do
  local s, q = tonumber(ARGV[p + 5 * i - 4]), tonumber(ARGV[p + 5 * i])
  if not s or s < 1 or s > nskus or not q or q < 1 then
    return redis.error_reply('ERR return_units.lua: bad line #' .. i)
  end
end
local out, touched = {}, {}
for i = 1, n do
  local b = p + 5 * i - 4
  local s, oid, digest, loc, q = tonumber(ARGV[b]), ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4])
  if redis.call('HSETNX', KEYS[6 * s - 4], '~r:' .. digest, 1) == 1 then
    redis.call('HINCRBY', KEYS[6 * s - 5], loc, q)
    redis.call('HINCRBY', KEYS[6 * s - 4], '~rq:' .. oid, q)
    touched[s] = true
    out[i] = 1
  else
    out[i] = 0
  end
end
for s in pairs(touched) do
  local t, units = read_stock(KEYS[6 * s - 5])
  settle_alert(s, names[s], units, t)
end
return out
