-- emit.lua: write a shard's decided batch: records and dead letters exactly once, then trim.
--
-- KEYS: KEYS[1] registry hash (order id -> outcome; "#<entry id>" for dead letters),
--       KEYS[2] fulfilment stream, KEYS[3] dead-letter stream, KEYS[4] input stream,
--       KEYS[5] watermark (the last input entry id whose outcome is written). One slot.
-- ARGV: last input entry id of the batch, nrecords, then per record:
--       order_id, registry value, the packed record (stored as field "v");
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
local p = 3 + 3 * nrec
local ndl = tonumber(ARGV[p])
if not ndl or p + 3 * ndl ~= #ARGV then return redis.error_reply('ERR emit.lua: bad shape') end

-- One HMGET for the registry, then one HSET and the XADDs for records not yet written.
local CHUNK = 4000
local fresh, written, dead = {}, 0, 0
local seen = {}
for i = 3, 2 + 3 * nrec, 3 * CHUNK do
  local ids = {}
  for j = i, math.min(i + 3 * CHUNK - 1, 2 + 3 * nrec), 3 do ids[#ids + 1] = ARGV[j] end
  local got = redis.call('HMGET', KEYS[1], unpack(ids))
  for k = 1, #got do
    local j = i + 3 * (k - 1)
    if not got[k] and not seen[ARGV[j]] then
      seen[ARGV[j]] = true
      fresh[#fresh + 1] = j
    end
  end
end
local reg = {}
for _, j in ipairs(fresh) do
  redis.call('XADD', KEYS[2], '*', 'v', ARGV[j + 2])
  reg[#reg + 1] = ARGV[j]
  reg[#reg + 1] = ARGV[j + 1]
  written = written + 1
end
for i = 1, #reg, CHUNK do
  redis.call('HSET', KEYS[1], unpack(reg, i, math.min(i + CHUNK - 1, #reg)))
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
