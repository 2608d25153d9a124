-- candidates.lua: orders across slots, accepted whole, become first-N candidates (one slot).
--
-- KEYS: the decide.lua layout of the campaign SKU (lib_stock.lua; its stock hash with the
--       campaign definitions, its candidates ZSET and campaign progress hash are used), then
--       CANDIDACIES: the SET of orders that ever became candidates here.
-- ARGV: n, then per order: order id, paid_at (epoch ms).
-- An order across slots becomes a candidate only once every part of it is reserved (so no
-- rank can go to an order a crashed attempt left half reserved and then released), and only
-- once however often that attempt is replayed (CANDIDACIES): one order, one rank.
-- Returns the number of orders that became candidates now.
local CANDIDACIES = SKU_KEYS + 1
local n = tonumber(ARGV[1])
if not n or #ARGV ~= 1 + 2 * n or #KEYS ~= CANDIDACIES then
  return redis.error_reply('ERR candidates.lua: bad arguments')
end
local _, _, _, camps = read_stock(sku_key(1, K_STOCK))
if not camps then return 0 end
local progress, adds, now, added = read_progress(sku_key(1, K_PROGRESS)), {}, wall_ms(), 0
for i = 1, n do
  local oid, paid = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  if not paid then return redis.error_reply('ERR candidates.lua: bad paid_at') end
  if redis.call('SADD', KEYS[CANDIDACIES], oid) == 1 then
    add_candidate(camps, progress, adds, oid, paid, now, true)
    added = added + 1
  end
end
write_progress(1, progress, adds)
return added
