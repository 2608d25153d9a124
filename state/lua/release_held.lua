-- release_held.lua: write the held records of settled campaign orders (one shard's slot).
--
-- KEYS: KEYS[1] registry hash, KEYS[2] fulfilment stream, KEYS[3] held hash, KEYS[4]
--       counters hash, KEYS[5] the registry hash of the generation before KEYS[1]'s
--       (state/gens.py): an order's value is read in either and rewritten where it is.
-- ARGV: n, then per order: order id, gift field ("" or campaign\29sku\29rank\29location),
--       late ("" or "1").
-- Returns per order: 1 released now, 2 released before (nothing to do), 0 not emitted yet
-- (its batch is still on its way: ask again later), 3 the order was cancelled (its record
-- says so; a gift taken for it must go back). Released records go out as one stream
-- entry; the registry value turns from HELD ("H...") to CANDIDATE ("G...") so a replay knows.
local NOT_EMITTED, RELEASED, RELEASED_BEFORE, WAS_CANCELLED = 0, 1, 2, 3 -- the answers above
local HELD_RECORD = '^(.-)' .. GS .. '(.*)$' -- a held record: its head, GS, its outcome
local n = tonumber(ARGV[1])
if not n or #ARGV ~= 1 + 3 * n then return redis.error_reply('ERR release_held.lua: bad arguments') end
local out, recs, reg = {}, {}, { [1] = {}, [5] = {} } -- (registry writes per generation)
for i = 1, n do
  local oid, gift, late = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local at = 1 -- the generation the order's value is in
  local value = redis.call('HGET', KEYS[1], oid)
  if not value then at = 5; value = redis.call('HGET', KEYS[5], oid) end
  local code = value and string.sub(value, 1, 1)
  if code == CANCELLED -- cancelled in its own batch
     or redis.call('HEXISTS', KEYS[1], REG_CANCELLING .. oid) == 1 -- a cancel is under way
     or redis.call('HEXISTS', KEYS[5], REG_CANCELLING .. oid) == 1 then
    redis.call('HDEL', KEYS[3], oid)
    out[i] = WAS_CANCELLED
  elseif not value then
    out[i] = NOT_EMITTED
  elseif code ~= HELD then -- released before
    out[i] = RELEASED_BEFORE
  else
    local h = redis.call('HGET', KEYS[3], oid) or ''
    local head, outcome = string.match(h, HELD_RECORD)
    if not head then return redis.error_reply('ERR release_held.lua: no held record for ' .. oid) end
    recs[#recs + 1] = head .. SEP .. gift .. SEP .. late .. SEP .. outcome
    local r = reg[at]
    r[#r + 1] = oid
    r[#r + 1] = CANDIDATE .. string.sub(value, 2)
    redis.call('HDEL', KEYS[3], oid)
    out[i] = RELEASED
  end
end
if #recs > 0 then
  redis.call('XADD', KEYS[2], '*', 'n', #recs, 'v', table.concat(recs, RS))
  for k, r in pairs(reg) do
    for j = 1, #r, 4000 do redis.call('HSET', KEYS[k], unpack(r, j, math.min(j + 3999, #r))) end
  end
  redis.call('HINCRBY', KEYS[4], 'records', #recs)
end
return out
