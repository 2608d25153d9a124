-- delivery_commit.lua: one subscriber's webhook deliveries written (onestock/ops/deliver.py).
--
-- KEYS: lease, progress hash, counts hash, retrying hash, last-error hash, undelivered stream
-- (keys.FEED_DELIVERY_LEASE, FEED_DELIVERED, FEED_DELIVERY_COUNTS, FEED_RETRYING,
-- FEED_DELIVERY_ERROR, FEED_UNDELIVERED).
-- ARGV: token, subscriber, progress (seq), retrying now, delivered, retried and given-up
-- counts to add, last error ('' unchanged), n, then n given-up entries (JSON) to keep.
-- Fenced by the lease (not the token's: 0, nothing written). Progress and the given-up
-- entries it passes are written together: none is ever passed unkept. Returns 1.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local sub = ARGV[2]
redis.call('HSET', KEYS[2], sub, ARGV[3])
redis.call('HSET', KEYS[4], sub, ARGV[4])
local outcomes = {'delivered', 'retried', 'given_up'}
for i = 1, 3 do
  local n = tonumber(ARGV[4 + i])
  if n > 0 then redis.call('HINCRBY', KEYS[3], sub .. ':' .. outcomes[i], n) end
end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[5], sub, ARGV[8]) end
for i = 10, 9 + tonumber(ARGV[9]) do
  redis.call('XADD', KEYS[6], '*', 'subscriber', sub, 'entry', ARGV[i])
end
return 1
