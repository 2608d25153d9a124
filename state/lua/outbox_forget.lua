-- outbox_forget.lua: forget a consumer of a group on a shard's output stream (state/outbox.py)
-- when nothing is pending with it, in one step: deleting a consumer drops its pending
-- entries, which would then never be handed out again, so a consumer that was handed
-- entries since it was judged idle is kept.
--
-- KEYS[1] the output stream (keys.outbox). ARGV: the group, the consumer.
-- Returns 1 when the consumer was deleted, 0 when it was kept (something is pending).
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
