-- feed_publish.lua: publish the availability of (SKU, channel)s as the publisher judged it;
-- a change of status is one transition on the feed (onestock/ops/feed.py, docs/availability.md).
--
-- KEYS (one slot, keys.FEED_*): status hash, seq counter, feed stream, publisher lease, and
-- (optional) the counts hash: status -> transitions published to it (/metrics).
local K_STATUS, K_SEQ, K_FEED, K_LEASE, K_COUNTS = 1, 2, 3, 4, 5
-- ARGV: the caller's lease token, the time judged (epoch ms), n, then n times: SKU, channel,
--       status, available.
-- Fenced: a caller whose token is not the lease's changes nothing (answers -1): a publisher
-- that lost its lease (a stall) can never write behind the one that took over. For each
-- (SKU, channel) whose status differs from the one last published (none yet: any status),
-- the next seq (INCR) and one feed entry "<seq>-0" {sku, channel, status, available, at};
-- the status hash keeps "<status>\31<available>" of the last transition. A status equal to
-- the last published one writes nothing: each transition is published once, in order.
-- Returns the number of transitions published.
local token, at, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not n or #ARGV ~= 3 + 4 * n then return redis.error_reply('ERR feed_publish.lua: bad shape') end
if redis.call('GET', KEYS[K_LEASE]) ~= token then return -1 end
local published = 0
for i = 0, n - 1 do
  local b = 4 + 4 * i
  local sku, channel, status, available = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local field = sku .. SEP .. channel
  local last = redis.call('HGET', KEYS[K_STATUS], field)
  local was = last and string.sub(last, 1, (string.find(last, SEP, 1, true) or 0) - 1)
  if was ~= status then
    local seq = redis.call('INCR', KEYS[K_SEQ])
    redis.call('XADD', KEYS[K_FEED], seq .. '-0', 'sku', sku, 'channel', channel,
      'status', status, 'available', available, 'at', at)
    redis.call('HSET', KEYS[K_STATUS], field, status .. SEP .. available)
    if KEYS[K_COUNTS] then redis.call('HINCRBY', KEYS[K_COUNTS], status, 1) end
    published = published + 1
  end
end
return published
