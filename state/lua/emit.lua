-- emit.lua: write a shard's decided batch: records and dead letters exactly once, then trim.
--
-- KEYS: KEYS[1] registry hash (order id -> outcome; "#<entry id>" for dead letters),
--       KEYS[2] fulfilment stream, KEYS[3] dead-letter stream, KEYS[4] input stream,
--       KEYS[5] watermark (the last input entry id whose outcome is written). One slot.
-- ARGV: last input entry id of the batch, nrecords, then per record:
--       order_id, registry value, nfields, nfields (name, value) pairs;
--       then ndead, then per dead letter: input entry id, raw text, reason.
-- Returns: {records written, dead letters written}. A record whose order id is already in
-- the registry is skipped: replays after a crash never produce a second record.
local last = ARGV[1]
local nrec = tonumber(ARGV[2])
if not last or not nrec then return redis.error_reply('ERR emit.lua: bad header') end

local function id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end
if not string.match(last, '^%d+%-%d+$') then return redis.error_reply('ERR emit.lua: bad id') end

-- validate the shape before the first write
local p, recs = 3, {}
for r = 1, nrec do
  local oid, val, nf = ARGV[p], ARGV[p + 1], tonumber(ARGV[p + 2])
  if not oid or not val or not nf then return redis.error_reply('ERR emit.lua: bad record ' .. r) end
  recs[r] = { oid, val, p + 3, nf }
  p = p + 3 + 2 * nf
end
local ndl = tonumber(ARGV[p])
if not ndl or p + 3 * ndl ~= #ARGV then return redis.error_reply('ERR emit.lua: bad tail') end

local written, dead = 0, 0
for _, r in ipairs(recs) do
  if redis.call('HSETNX', KEYS[1], r[1], r[2]) == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, r[3], r[3] + 2 * r[4] - 1))
    written = written + 1
  end
end
for i = 1, ndl do
  local q = p + 3 * (i - 1) + 1
  if redis.call('HSETNX', KEYS[1], '#' .. ARGV[q], 'D') == 1 then
    redis.call('XADD', KEYS[3], '*', 'id', ARGV[q], 'raw', ARGV[q + 1], 'reason', ARGV[q + 2])
    dead = dead + 1
  end
end
local wm = redis.call('GET', KEYS[5])
if not wm or id_lt(wm, last) then
  redis.call('SET', KEYS[5], last)
  -- Everything before `last` has its outcome stored: it is never needed again, even by a
  -- resume from an older snapshot (replays of it are skipped by the registry).
  redis.call('XTRIM', KEYS[4], 'MINID', '~', last)
end
return { written, dead }
