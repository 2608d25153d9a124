-- settled_ack.lua: acknowledge settled ranks whose records are released (one campaign SKU).
--
-- KEYS: KEYS[1] the SKU's campaign progress hash, KEYS[2] its settled LIST, KEYS[3] its
--       ranks STREAM (what `onestock gifts` reads).
-- ARGV: n, then per entry: the settled LIST entry, and the gift: a location, "" (no gift:
--       the rank is past first_n or the campaign had ended), or "-" (the gift stock ran
--       out at this rank: the campaign ends here).
-- Each entry leaves the LIST and lands in the ranks STREAM once (idempotent: an entry no
-- longer in the LIST is skipped). Returns how many were acknowledged now.
local n = tonumber(ARGV[1])
if not n or #ARGV ~= 1 + 2 * n then return redis.error_reply('ERR settled_ack.lua: bad arguments') end
local done = 0
for i = 1, n do
  local entry, gift = ARGV[2 * i], ARGV[2 * i + 1]
  if redis.call('LREM', KEYS[2], 1, entry) == 1 then
    local camp, oid, rank, late, paid = string.match(entry, '^(.-)\31(.*)\31(%d+)\31([01])\31(%d+)$')
    redis.call('XADD', KEYS[3], '*', 'c', camp, 'o', oid, 'r', rank, 'g', gift, 'l', late, 'p', paid)
    if gift == '-' then redis.call('HSETNX', KEYS[1], camp .. ':ended', rank) end
    done = done + 1
  end
end
return done
