-- ledger_settle.lua: kept orders of one generation settled into their shard's totals, each once
-- (state/ledger.py: no version of them can come any more).
--
-- KEYS (one slot): 1 the shard's tally HASH, 2 its settled totals HASH, 3 the generation's
--       kept-orders HASH.
-- ARGV: 1 the generation, 2 "1" when these are its last orders, then per order: its id,
--       the number m of totals it adds to, m pairs (totals field, increment).
-- Returns: the orders settled by this call (one another caller settled is skipped). Each
-- call that settles any moves the tally's 'sv' on, so a reader of the totals and the kept
-- orders (ledger.py snapshot) sees that they moved between its reads.
local n = 0
local i = 3
while i <= #ARGV do
  local m = tonumber(ARGV[i + 1])
  if redis.call('HDEL', KEYS[3], ARGV[i]) == 1 then
    n = n + 1
    for j = i + 2, i + 2 * m, 2 do
      redis.call('HINCRBY', KEYS[2], ARGV[j], ARGV[j + 1])
    end
  end
  i = i + 2 + 2 * m
end
if n > 0 then
  redis.call('HINCRBY', KEYS[1], 'sv', 1)
end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'settled'))
  if old == nil or tonumber(ARGV[1]) > old then
    redis.call('HSET', KEYS[1], 'settled', ARGV[1])
  end
end
return n
