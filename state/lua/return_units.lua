-- return_units.lua: put returned units back at the named location (this slot's SKUs).
--
-- KEYS: per SKU i, the decide.lua layout (lib_stock.lua sku_key): K_STOCK stock hash,
--       K_RECORDS decision hash (it keeps "\0r:<digest>" per applied return and
--       "\0rq:<order id>" = units of the SKU returned for the order so far; a cancel's
--       "\0u:<order id>", see undo_units.lua; read in both generations, written in this one),
--       K_ALERTS alerts stream (the others unused here).
-- ARGV: nskus, sku names (nskus), n, then per line: sku index, order id, return digest,
--       location, qty, shipped (units of the SKU the order shipped, over all its shipments;
--       a hot SKU's buckets count as the SKU, whose own keys take its returns).
-- The lines of one return (one digest) in this call are applied together or not at all:
-- - applied before ("\0r:<digest>" set): nothing changes, each line answers 0;
-- - refused, nothing changes: 2 on a line whose SKU's units the order gave back by a cancel
--   ("\0u:<order id>"), 3 on a line whose SKU would get back more than shipped
--   ('\0rq' + this return's units of the SKU > shipped), 4 on the return's other lines;
-- - else applied: the units back at the location, '\0rq' counts them, each line answers 1.
-- So, with undo_units.lua, the units given back for an order never exceed those it shipped;
-- the caller checks first (for the human reason), this is the atomic check.
local APPLIED_BEFORE = 0 -- the codes of each line, as above
local APPLIED = 1
local CANCELLED_ORDER = 2
local MORE_THAN_SHIPPED = 3
local WITH_A_REFUSED_LINE = 4
local nskus = tonumber(ARGV[1])
if not nskus or #KEYS ~= SKU_KEYS * nskus then return redis.error_reply('ERR return_units.lua: bad header') end
local names = {}
for i = 1, nskus do names[i] = ARGV[1 + i] end
local p = 2 + nskus
local n = tonumber(ARGV[p])
if not n or #ARGV ~= p + 6 * n then return redis.error_reply('ERR return_units.lua: bad lines') end
local lines, groups, digests = {}, {}, {}
for i = 1, n do
  local b = p + 6 * i - 5
  local s, q, shipped = tonumber(ARGV[b]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if not s or s < 1 or s > nskus or not q or q < 1 or not shipped then
    return redis.error_reply('ERR return_units.lua: bad line #' .. i)
  end
  local digest = ARGV[b + 2]
  lines[i] = { s = s, oid = ARGV[b + 1], loc = ARGV[b + 3], q = q, shipped = shipped }
  if not groups[digest] then
    groups[digest] = {}
    digests[#digests + 1] = digest
  end
  table.insert(groups[digest], i)
end
local out, touched = {}, {}
for _, digest in ipairs(digests) do
  local g = groups[digest]
  local oid = lines[g[1]].oid
  local code, bad = APPLIED, nil
  if hget_gens(lines[g[1]].s, DEC_RETURN .. digest) then
    code = APPLIED_BEFORE -- a return's lines in one slot are applied together: one marker tells
  else
    local want = {}
    for _, i in ipairs(g) do
      local l = lines[i]
      want[l.s] = (want[l.s] or 0) + l.q
      if hget_gens(l.s, DEC_UNDONE .. oid) then
        code, bad = CANCELLED_ORDER, i
        break
      end
      if returned_units(l.s, oid) + want[l.s] > l.shipped then
        code, bad = MORE_THAN_SHIPPED, i
        break
      end
    end
  end
  if code == APPLIED then
    local counted = {}
    for _, i in ipairs(g) do
      local l = lines[i]
      local dec = sku_key(l.s, K_RECORDS)
      if not counted[l.s] then
        counted[l.s] = true
        redis.call('HSET', dec, DEC_RETURN .. digest, 1)
      end
      add_units(sku_key(l.s, K_STOCK), l.loc, l.q)
      redis.call('HINCRBY', dec, DEC_RETURNED .. l.oid, l.q)
      touched[l.s] = true
    end
  end
  for _, i in ipairs(g) do
    out[i] = (bad and i ~= bad) and WITH_A_REFUSED_LINE or code
  end
end
for s in pairs(touched) do -- units came back: the SKU's alert level may change
  local t, units = read_stock(sku_key(s, K_STOCK))
  settle_alert(s, names[s], units, t)
end
return out
