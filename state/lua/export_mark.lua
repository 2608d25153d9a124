-- export_mark.lua: a shard's records exported up to an entry id (`onestock fulfilments
-- --mark-exported`), never moved back.
--
-- KEYS: 1 the exported HASH (shard -> entry id). ARGV: 1 the shard, 2 the entry id.
-- Returns: 1 marked, 0 an entry at or after it was marked before.
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local oms, oseq = parts(old)
  local nms, nseq = parts(ARGV[2])
  if oms > nms or (oms == nms and oseq >= nseq) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
