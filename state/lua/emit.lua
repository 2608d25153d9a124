-- emit.lua: write a shard's decided batch: records and dead letters exactly once, then trim.
--
-- KEYS: KEYS[1] registry hash (order id -> outcome; "\0#<entry id>" for dead letters;
--       every internal field starts with NUL, which no order id does: state/keys.py),
--       KEYS[2] fulfilment stream, KEYS[3] dead-letter stream, KEYS[4] input stream,
--       KEYS[5] watermark (the last input entry id whose outcome is written),
--       KEYS[6] counters hash (fields "records", "dead"), KEYS[7] held records (order id ->
--       record waiting for its gift settlement), KEYS[8] decisions stream, KEYS[9] returns
--       stream (records of keys "\0R:<return digest>" go there). One slot.
-- ARGV: last input entry id of the batch ("-": a part of a batch whose last part moves the
--       watermark), nrecords, then per record: order_id, registry
--       value; then the packed records joined by \30 (one per record, in that order; ""
--       for a registry-only entry); then ndead, then per dead letter: input entry id, raw
--       text, reason; then the metrics tail: sum received->decided ms, its n, sum
--       paid->decided ms, its n, the metric tags joined by \30 (one per record: "" (not
--       counted) or <received bucket><paid bucket ("-": none)><status> ("A" accepted,
--       "R<reason>", "C" arrived cancelled, "X" a cancellation, "T" a return)), then
--       ntags and (tag, how many records carry it) pairs: the same tags counted; then the
--       number of rejected campaign orders ("r", below) and their decisions ("<order
--       id>\31R") joined by \30, as the fast path writes them.
-- Fast path: when no record is in the registry yet and none is special (below; a rejected
--       campaign order is not), the joined records are written as they came and the counted
--       tags added: no record or tag is split out in Lua (every string Lua makes costs; this
--       script runs once per batch).
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
-- Cancellations use registry keys of their own: "\0x:<order id>" for the record that
-- cancels an accepted order (its held record, if any, is dropped: it will never be
-- released), "\0c:<order id>" with an empty record for a cancel that came before its order.
-- Returns: {records written, dead letters written, 1 if '\0nc' (below) is in the registry
-- else 0}. A record whose key is already in the
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
if last ~= '-' and not string.match(last, '^%d+%-%d+$') then
  return redis.error_reply('ERR emit.lua: bad id')
end

-- validate the shape before the first write
local blob = ARGV[3 + 2 * nrec]
local p = 4 + 2 * nrec
local ndl = tonumber(ARGV[p])
if not blob or not ndl then return redis.error_reply('ERR emit.lua: bad shape') end
local tb = p + 3 * ndl -- the metrics tail
local nagg = tonumber(ARGV[tb + 6])
local nrej = nagg and tonumber(ARGV[tb + 7 + 2 * nagg])
if not nrej or #ARGV ~= tb + 8 + 2 * nagg then return redis.error_reply('ERR emit.lua: bad shape') end

local CHUNK = 4000
local argv, call, unpack, byte = ARGV, redis.call, unpack, string.byte

-- s split at every \30: exactly n parts (empty ones kept)
local function split(s, n)
  local out, i = {}, 1
  for k = 1, n - 1 do
    local j = string.find(s, '\30', i, true)
    if not j then return nil end
    out[k] = string.sub(s, i, j - 1)
    i = j + 1
  end
  if n > 0 then out[n] = string.sub(s, i) end
  if string.find(out[n] or '', '\30', 1, true) then return nil end
  return out
end

-- One HMGET for the registry (in chunks), then either path.
-- '\0nc' in the registry: no cancel of this shard waits for its order, so the decider need not
-- look up "\0c:<order id>" for the orders of its next batch. Set by the first write to an empty
-- registry (one written before this flag existed never gets it), dropped for good by the
-- first cancel that comes before its order.
local no_early = call('HLEN', KEYS[1]) == 0
local fresh, plain, seen = {}, true, {}
for i = 1, nrec, CHUNK do
  local last_k = math.min(i + CHUNK - 1, nrec)
  local ids = {}
  for k = i, last_k do ids[k - i + 1] = argv[1 + 2 * k] end
  local got = call('HMGET', KEYS[1], unpack(ids))
  for k = i, last_k do
    local oid = ids[k - i + 1]
    if got[k - i + 1] or seen[oid] then
      plain = false
    else
      fresh[k] = true
      local kind = byte(argv[2 + 2 * k], 1)
      if kind == 72 or byte(oid, 1) == 0 then plain = false end -- H, or an internal field
    end
    seen[oid] = true
  end
end

local written, dead, wr, wp = 0, 0, 0, 0
local tags = {} -- metric tag -> new records carrying it
if plain then
  written = nrec
  if nrec > 0 then
    call('XADD', KEYS[2], '*', 'n', nrec, 'v', blob)
    for i = 3, 2 + 2 * nrec, 2 * CHUNK do
      call('HSET', KEYS[1], unpack(argv, i, math.min(i + 2 * CHUNK - 1, 2 + 2 * nrec)))
    end
  end
  for i = tb + 7, tb + 6 + 2 * nagg, 2 do
    local t, n = argv[i], tonumber(argv[i + 1])
    tags[t] = n
    if byte(t, 1) ~= 45 then wr = wr + n end -- '-'
    if byte(t, 2) ~= 45 then wp = wp + n end
  end
  if nrej > 0 then call('XADD', KEYS[8], '*', 'n', nrej, 'v', argv[tb + 8 + 2 * nagg]) end
else
  local recs_in, tags_in = split(blob, nrec), split(argv[tb + 5], nrec)
  if not recs_in or not tags_in then return redis.error_reply('ERR emit.lua: bad shape') end
  local reg, recs, held, decided, returned, nreg = {}, {}, {}, {}, {}, 0
  for k = 1, nrec do
    if fresh[k] then
      local oid, value, rec = argv[1 + 2 * k], argv[2 + 2 * k], recs_in[k]
      local kind = byte(value, 1)
      local t = tags_in[k]
      if t ~= '' then
        tags[t] = (tags[t] or 0) + 1
        if byte(t, 1) ~= 45 then wr = wr + 1 end -- '-'
        if byte(t, 2) ~= 45 then wp = wp + 1 end
      end
      nreg = nreg + 1
      reg[2 * nreg - 1] = oid
      reg[2 * nreg] = value
      if kind == 72 then -- 'H'
        held[#held + 1] = oid
        held[#held + 1] = rec
        decided[#decided + 1] = oid .. '\31A'
      elseif rec == '' then -- a pending cancel: registry only
        if string.sub(oid, 1, 3) == REG_EARLY_CANCEL then no_early = false; call('HDEL', KEYS[1], REG_NO_EARLY) end
      elseif string.sub(oid, 1, 3) == REG_RETURN then
        returned[#returned + 1] = rec
      else
        if string.sub(oid, 1, 3) == REG_CANCEL then call('HDEL', KEYS[7], string.sub(oid, 4)) end
        written = written + 1
        recs[written] = rec
        if kind == 114 then decided[#decided + 1] = oid .. '\31R' end -- 'r'
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
end
for i = 1, ndl do
  local q = p + 3 * (i - 1) + 1
  if redis.call('HSETNX', KEYS[1], REG_DEAD .. ARGV[q], 'D') == 1 then
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
add_sum('sum_r', tb + 1, tb + 2, wr)
add_sum('sum_p', tb + 3, tb + 4, wp)
if last ~= '-' then
  local wm = redis.call('GET', KEYS[5])
  if not wm or id_lt(wm, last) then
    redis.call('SET', KEYS[5], last)
    -- Everything before `last` has its outcome stored: it is never needed again, even by a
    -- resume from an older snapshot (replays of it are skipped by the registry).
    local trimmed = redis.call('XTRIM', KEYS[4], 'MINID', '~', last)
    if trimmed > 0 then redis.call('HINCRBY', KEYS[6], 'trimmed', trimmed) end
  end
end
if no_early then call('HSET', KEYS[1], REG_NO_EARLY, 1) end
return { written, dead, call('HEXISTS', KEYS[1], REG_NO_EARLY) }
