-- lease.lua: take, renew or give back a lease held by a random token (the availability
-- feed's publisher, state/feed.py; its webhook deliverer, onestock/ops/deliver.py).
--
-- KEYS[1] the lease. ARGV: the token held ('' none), a fresh token, ms. Taken when nobody
-- holds it (the fresh token), renewed when the token holds it (PEXPIRE), given back with ms
-- 0 (only by its holder). Returns the token that holds it after the call for the caller,
-- or false (another holds it, or it was given back).
local held = redis.call('GET', KEYS[1])
if tonumber(ARGV[3]) == 0 then
  if held == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return false
end
if held and held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return held end
if not held then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return ARGV[2] end
return false
