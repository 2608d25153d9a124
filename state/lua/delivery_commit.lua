-- delivery_commit.lua: one subscriber's webhook deliveries written (onestock/ops/deliver.py),
-- for either source: the availability feed or the fulfilment records.
--
-- KEYS (one slot, keys.FEED_TAG): lease, progress hash, counts hash, retrying hash,
-- last-error hash, undelivered stream (the feed's: keys.FEED_DELIVERY_LEASE, FEED_DELIVERED,
-- FEED_DELIVERY_COUNTS, FEED_RETRYING, FEED_DELIVERY_ERROR, FEED_UNDELIVERED; the records':
-- the same lease, RECORD_DELIVERED, ...).
-- ARGV: token, subscriber, retrying now, delivered, retried and given-up counts to add, last
-- error ('' unchanged), np, then np (progress field, progress) pairs (one per stream the
-- subscriber reads: the feed's field is the subscriber id, a seq; the records' "<subscriber>
-- \31<shard>", "<entry id>:<index>"), then n, then n given-up entries (JSON) to keep.
-- Fenced by the lease (not the token's: 0, nothing written). Progress and the given-up
-- entries it passes are written together: none is ever passed unkept. Returns 1.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local sub = ARGV[2]
redis.call('HSET', KEYS[4], sub, ARGV[3])
local outcomes = {'delivered', 'retried', 'given_up'}
for i = 1, 3 do
  local n = tonumber(ARGV[3 + i])
  if n > 0 then redis.call('HINCRBY', KEYS[3], sub .. ':' .. outcomes[i], n) end
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[5], sub, ARGV[7]) end
local np = tonumber(ARGV[8])
for i = 9, 8 + 2 * np, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local at = 9 + 2 * np
for i = at + 1, at + tonumber(ARGV[at]) do
  redis.call('XADD', KEYS[6], '*', 'subscriber', sub, 'entry', ARGV[i])
end
return 1
