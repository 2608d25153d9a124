-- emit.lua: write a shard's decided batch: records and dead letters exactly once, then trim.
--
-- KEYS: KEYS[1] registry hash (order id -> outcome; "#<entry id>" for dead letters),
--       KEYS[2] fulfilment stream, KEYS[3] dead-letter stream, KEYS[4] input stream,
--       KEYS[5] watermark (the last input entry id whose outcome is written),
--       KEYS[6] counters hash (fields "records", "dead"), KEYS[7] held records (order id ->
--       record waiting for its gift settlement), KEYS[8] decisions stream, KEYS[9] returns
--       stream (records of keys "~R:<return digest>" go there). One slot.
-- ARGV: last input entry id of the batch, nrecords, then per record:
--       order_id, registry value, the packed record;
--       then ndead, then per dead letter: input entry id, raw text, reason;
--       then (optional, the metrics tail) the batch's latency sums and observation counts:
--       sum received->decided ms, its n, sum paid->decided ms, its n; then one metric tag
--       per record: "" (not counted) or <received bucket><paid bucket ("-": none)><status>
--       ("A" accepted, "R<reason>", "C" arrived cancelled, "X" a cancellation, "T" a return).
-- Counters (KEYS[6]): "records", "dead", "trimmed" (input entries trimmed), and per metric
--       tag "m<tag>" how many new records carried it, "sum_r"/"sum_p" the latency sums in ms.
--       Tags count only records written now, so a replay after a crash counts nothing twice;
--       the sums of a batch that is partly a replay are scaled to its new records.
-- Writes: the batch's new records as ONE stream entry (field "v": packed records separated
--       by \30; field "n": how many), one entry per dead letter.
-- A registry value starting with "H" marks an accepted order that waits for a gift
-- settlement: its record is held (KEYS[7]), not written, and its decision ("A") goes to the
-- decisions stream at once; one starting with "r" is a rejected campaign order: its record
-- is written and its decision ("R") goes to the decisions stream too.
-- Cancellations use registry keys of their own: "~x:<order id>" for the record that
-- cancels an accepted order (its held record, if any, is dropped: it will never be
-- released), "~c:<order id>" with an empty record for a cancel that came before its order.
-- Returns: {records written, dead letters written}. A record whose key is already in the
-- registry is skipped: replays after a crash never produce a second record.
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
if not ndl then return redis.error_reply('ERR emit.lua: bad shape') end
local tb = p + 3 * ndl -- the metrics tail: tags at ARGV[tb + 4 + record number]
local metered = #ARGV == tb + 4 + nrec
if not metered and #ARGV ~= tb then return redis.error_reply('ERR emit.lua: bad shape') end

-- One HMGET for the registry, one HSET for the new ids, one XADD for the new records.
local CHUNK = 4000
local argv, call, unpack = ARGV, redis.call, unpack
local reg, recs, seen, held, decided, returned = {}, {}, {}, {}, {}, {}
local written, dead, nreg = 0, 0, 0
local tags, wr, wp = {}, 0, 0 -- metric tags of new records; new observations of each latency
for i = 3, 2 + 3 * nrec, 3 * CHUNK do
  local last_j = math.min(i + 3 * CHUNK - 1, 2 + 3 * nrec)
  local ids, n = {}, 0
  for j = i, last_j, 3 do
    n = n + 1
    ids[n] = argv[j]
  end
  local got = call('HMGET', KEYS[1], unpack(ids))
  for k = 1, n do
    local oid = ids[k]
    if not got[k] and not seen[oid] then
      local j = i + 3 * (k - 1)
      local value = argv[j + 1]
      local kind = string.byte(value, 1)
      seen[oid] = true
      if metered then
        local t = argv[tb + 4 + j / 3] -- record number j / 3
        if t ~= '' then
          tags[t] = (tags[t] or 0) + 1
          if string.byte(t, 1) ~= 45 then wr = wr + 1 end -- '-'
          if string.byte(t, 2) ~= 45 then wp = wp + 1 end
        end
      end
      nreg = nreg + 1
      reg[2 * nreg - 1] = oid
      reg[2 * nreg] = value
      if kind == 72 then -- 'H'
        held[#held + 1] = oid
        held[#held + 1] = argv[j + 2]
        decided[#decided + 1] = oid .. '\31A'
      elseif argv[j + 2] == '' then -- a pending cancel: registry only
      elseif string.sub(oid, 1, 3) == '~R:' then
        returned[#returned + 1] = argv[j + 2]
      else
        if string.sub(oid, 1, 3) == '~x:' then call('HDEL', KEYS[7], string.sub(oid, 4)) end
        written = written + 1
        recs[written] = argv[j + 2]
        if kind == 114 then decided[#decided + 1] = oid .. '\31R' end -- 'r'
      end
    end
  end
end
if written > 0 then
  -- One entry per batch: a redis.call costs far more than the bytes it writes.
  call('XADD', KEYS[2], '*', 'n', written, 'v', table.concat(recs, '\30'))
end
for i = 1, #held, CHUNK do call('HSET', KEYS[7], unpack(held, i, math.min(i + CHUNK - 1, #held))) end
if #returned > 0 then
  call('XADD', KEYS[9], '*', 'n', #returned, 'v', table.concat(returned, '\30'))
end
if #decided > 0 then
  call('XADD', KEYS[8], '*', 'n', #decided, 'v', table.concat(decided, '\30'))
end
for i = 1, #reg, CHUNK do
  call('HSET', KEYS[1], unpack(reg, i, math.min(i + CHUNK - 1, #reg)))
end
for i = 1, ndl do
  local q = p + 3 * (i - 1) + 1
  if redis.call('HSETNX', KEYS[1], '#' .. ARGV[q], 'D') == 1 then
    redis.call('XADD', KEYS[3], '*', 'id', ARGV[q], 'raw', ARGV[q + 1], 'reason', ARGV[q + 2])
    dead = dead + 1
  end
end
if written > 0 then redis.call('HINCRBY', KEYS[6], 'records', written) end
if dead > 0 then redis.call('HINCRBY', KEYS[6], 'dead', dead) end
for t, n in pairs(tags) do redis.call('HINCRBY', KEYS[6], 'm' .. t, n) end
local function add_sum(field, sum, n, new)
  sum, n = tonumber(argv[sum]), tonumber(argv[n])
  if new > 0 and sum and n and n > 0 then
    redis.call('HINCRBY', KEYS[6], field, math.floor(sum * new / n + 0.5))
  end
end
if metered then
  add_sum('sum_r', tb + 1, tb + 2, wr)
  add_sum('sum_p', tb + 3, tb + 4, wp)
end
local wm = redis.call('GET', KEYS[5])
if not wm or id_lt(wm, last) then
  redis.call('SET', KEYS[5], last)
  -- Everything before `last` has its outcome stored: it is never needed again, even by a
  -- resume from an older snapshot (replays of it are skipped by the registry).
  local trimmed = redis.call('XTRIM', KEYS[4], 'MINID', '~', last)
  if trimmed > 0 then redis.call('HINCRBY', KEYS[6], 'trimmed', trimmed) end
end
return { written, dead }
