-- cancelling.lua: say in a shard's registry that these orders are being cancelled, and
-- answer each one's registry value as it is at that moment (dataflows/aftersale.py).
--
-- KEYS: 1 the shard's registry hash of this generation (written), 2 and 3 those of the
--       generations before and after (read: state/gens.py). ARGV: order ids.
-- From this moment release_held.lua releases no held record of these orders, so an order
-- whose value is still HELD here never has that record written: its cancellation takes the
-- held record's version instead of the next one. Atomic, so no release slips in between.
local out = {}
for i = 1, #ARGV do
  redis.call('HSET', KEYS[1], REG_CANCELLING .. ARGV[i], 1)
  out[i] = redis.call('HGET', KEYS[3], ARGV[i]) or redis.call('HGET', KEYS[1], ARGV[i])
    or redis.call('HGET', KEYS[2], ARGV[i]) or false
end
return out
