-- sweep_mark.lua: the newest generation swept, with each shard's newest output entry id read
-- after the sweep (state/gens.py): a kept generation up to it may be settled once a shard's
-- fold has reached its id (state/ledger.py). Only moves forward; the pair is one hash, so a
-- reader never sees one sweep's generation with another's ids.
--
-- KEYS: 1 the swept-outbox HASH ('gen', and shard -> entry id).
-- ARGV: 1 the generation, then each shard's entry id ("0-0": an empty stream), in order.
-- Returns: 1 written, 0 a sweep at least as new was marked before.
local old = tonumber(redis.call('HGET', KEYS[1], 'gen'))
if old ~= nil and old >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[1])
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], tostring(i - 2), ARGV[i])
end
return 1
