-- ledger_fold.lua: one chunk of a shard's output stream folded into the audit's state
-- (state/ledger.py), once: the chunk was read after the mark the caller saw; a caller
-- that lost a race with another folder changes nothing.
--
-- KEYS (one slot): 1 the shard's tally HASH, 2.. the kept-orders HASHes written.
-- ARGV: 1 the mark the caller read ("" for none), 2 the chunk's last entry id, 3 records
--       counted, 4 of them copies, 5 first and 6 last decision ms of the counted ("" for
--       none), 7 the oldest and 8 the newest generation written, then per order written:
--       the KEYS index of its generation's hash, of the hash it moves from (0: none), its
--       id and its folded versions.
-- Returns: 1 folded, 0 the mark had moved (nothing written).
local mark = redis.call('HGET', KEYS[1], 'mark') or ''
if mark ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'mark', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'n', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'dup', ARGV[4])
local function keep(field, value, less)
  if value == '' then
    return
  end
  local old = tonumber(redis.call('HGET', KEYS[1], field))
  local v = tonumber(value)
  if old == nil or (less and v < old) or (not less and v > old) then
    redis.call('HSET', KEYS[1], field, value)
  end
end
keep('first', ARGV[5], true)
keep('last', ARGV[6], false)
keep('lo', ARGV[7], true)
keep('hi', ARGV[8], false)
for i = 9, #ARGV, 4 do
  local from = tonumber(ARGV[i + 1])
  if from > 0 then
    redis.call('HDEL', KEYS[from], ARGV[i + 2])
  end
  redis.call('HSET', KEYS[tonumber(ARGV[i])], ARGV[i + 2], ARGV[i + 3])
end
return 1
