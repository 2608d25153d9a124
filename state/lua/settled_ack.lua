-- settled_ack.lua: acknowledge settled ranks whose records are released (one campaign SKU).
--
-- KEYS: KEYS[1] the SKU's campaign progress hash, KEYS[2] its settled LIST, KEYS[3] its
--       ranks STREAM (what `onestock gifts` reads).
-- ARGV: head (1: the entries are exactly the first n of the LIST, in order), n, then per
--       entry: the settled LIST entry, and the gift: a location, "" (no gift: the rank is
--       past first_n or the campaign had ended), "\0-" (the gift stock ran out at this rank:
--       the campaign ends here), or "\0x" (the order was cancelled: the rank stays used).
-- Each entry leaves the LIST and lands in the ranks STREAM once (idempotent: an entry no
-- longer in the LIST is skipped); one stream entry per call, field "v": per rank
-- "<campaign>\31<order id>\31<rank>\31<gift>\31<late>\31<paid_at ms>", separated by \30.
-- Counts (progress hash): "<campaign>:awarded" ranks that got a gift unit, "<campaign>:late"
-- ranks of orders later than the lateness bound.
-- Returns how many were acknowledged now.
-- a settled LIST entry: campaign, order id, rank, late, paid_at
local SETTLED = '^(.-)' .. SEP .. '(.*)' .. SEP .. '(%d+)' .. SEP .. '([01])' .. SEP .. '(%d+)$'
local whole, n = ARGV[1] == '1', tonumber(ARGV[2])
if not n or #ARGV ~= 2 + 2 * n then return redis.error_reply('ERR settled_ack.lua: bad arguments') end
if whole and n > 0 then -- the common case: check the LIST still starts with them, then trim
  local first = redis.call('LRANGE', KEYS[2], 0, n - 1)
  for i = 1, n do
    if first[i] ~= ARGV[1 + 2 * i] then whole = false; break end
  end
end
local out, ended, counts = {}, {}, {}
for i = 1, n do
  local entry, gift = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if whole or redis.call('LREM', KEYS[2], 1, entry) == 1 then
    local camp, oid, rank, late, paid = string.match(entry, SETTLED)
    out[#out + 1] = camp .. SEP .. oid .. SEP .. rank .. SEP .. gift .. SEP .. late .. SEP .. paid
    if gift ~= '' and string.byte(gift, 1) ~= 0 then -- a location, not a marker
      counts[camp .. ':awarded'] = (counts[camp .. ':awarded'] or 0) + 1
    end
    if late == '1' then counts[camp .. ':late'] = (counts[camp .. ':late'] or 0) + 1 end
    if gift == GIFT_NONE and not ended[camp] then
      ended[camp] = true
      redis.call('HSETNX', KEYS[1], camp .. ':ended', rank)
    end
  end
end
if whole and n > 0 then redis.call('LTRIM', KEYS[2], n, -1) end
for field, k in pairs(counts) do redis.call('HINCRBY', KEYS[1], field, k) end
if #out > 0 then redis.call('XADD', KEYS[3], '*', 'n', #out, 'v', table.concat(out, RS)) end
return #out
