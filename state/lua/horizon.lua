-- horizon.lua: the earliest stream time a shard may still act at (state/gens.py: no later
-- batch, timer or replay of the shard reads or writes an order of an older generation than
-- the one before this time's).
--
-- KEYS (one slot): 1 input stream, 2 watermark (the last entry whose outcome is written: an
--       entry after it may be replayed or read yet), 3 deadlines ZSET, 4 claims ZSET.
-- Returns: the least of lib_clock.lua's horizon after the watermark (the first entry not
--       yet written, or the server's clock when there is none) and the earliest payment
--       deadline and claim timeout still waiting (their orders' state is read when they
--       pass). Prepended: lib_protocol.lua, lib_clock.lua.
local wm = redis.call('GET', KEYS[2]) or ''
local at = horizon(KEYS[1], wm)
for k = 3, 4 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if #first > 0 and tonumber(first[2]) < at then at = tonumber(first[2]) end
end
return at
