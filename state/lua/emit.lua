-- emit.lua: write a shard's decided batch: records and dead letters exactly once, then trim.
--
-- KEYS (one slot), at these indices:
local K_REGISTRY = 1 -- registry hash (order id -> outcome; "\0#<entry id>" for dead letters;
--                      every internal field starts with NUL, which no order id does:
--                      state/keys.py)
local K_OUT = 2 -- fulfilment stream
local K_DEAD_LETTERS = 3 -- dead-letter stream
local K_INPUT = 4 -- input stream
local K_WATERMARK = 5 -- the last input entry id whose outcome is written
local K_COUNTERS = 6 -- counters hash (fields "records", "dead")
local K_HELD = 7 -- held records (order id -> record waiting for its gift settlement)
local K_DECISIONS = 8 -- decisions stream
local K_RETURNS = 9 -- returns stream (records of keys "\0R:<return digest>" go there)
local K_MOVEMENTS = 10 -- movements stream (records of keys "\0M:<movement id>" go there)
local K_REGISTRY_OLD = 11 -- the registry hashes of the generations before and after
local K_REGISTRY_NEXT = 12 -- K_REGISTRY's (read: an order's fields are looked up in the
--                            three, the newest first; state/gens.py)
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
--       id>\31R") joined by \30, as the fast path writes them; last, the first and the
--       last record (1-based, of this call) that the caller read in neither K_REGISTRY
--       nor the generation before since the shard's last emit (0 0: none; the generation
--       after never holds them: state/shards.py, Shards.prelude), distinct order ids: not
--       looked up again here (Shards.emit: the shard's one owner, one batch in flight);
--       then 1 when none of them is held (HELD), else 0.
-- Fast path: when no record is in the registry yet and none is special (below; a rejected
--       campaign order is not), the joined records are written as they came and the counted
--       tags added: no record or tag is split out in Lua (every string Lua makes costs; this
--       script runs once per batch). A call whose records are all known and none held takes
--       it without reading anything: orders, distinct, fresh (the caller's word).
-- Counters (K_COUNTERS): "records", "dead", "trimmed" (input entries trimmed), and per metric
--       tag "m<tag>" how many new records carried it, "sum_r"/"sum_p" the latency sums in ms.
--       Tags count only records written now, so a replay after a crash counts nothing twice;
--       the sums of a batch that is partly a replay are scaled to its new records.
-- Writes: the batch's new records as ONE stream entry (field "v": packed records separated
--       by \30; field "n": how many), one entry per dead letter.
-- A registry value starting with "H" marks an accepted order that waits for a gift
-- settlement: its record is held (K_HELD), not written, and its decision ("A") goes to the
-- decisions stream at once; one starting with "r" is a rejected campaign order: its record
-- is written and its decision ("R") goes to the decisions stream too.
-- Cancellations use registry keys of their own: "\0x:<order id>" for the record that
-- cancels an accepted order (its held record, if any, is dropped: it will never be
-- released), "\0c:<order id>" with an empty record for a cancel that came before its order.
-- Later versions of an order's record (a payment, an expiry: dataflows/payments.py) come
-- under "\0s:<order id>" with the value "<version>\31<outcome>": written when the stored
-- version is older; the order's own field then takes the outcome (HELD: the record is held
-- for its gift like a first one).
-- Returns: {records written, dead letters written, 1 if '\0nc' (below) is in the registry
-- else 0}. A record whose key is already in the
-- registry is skipped: replays after a crash never produce a second record.
local last = ARGV[1]
local nrec = tonumber(ARGV[2])
if not last or not nrec then return redis.error_reply('ERR emit.lua: bad header') end
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
local known_first = nrej and tonumber(ARGV[tb + 9 + 2 * nagg])
local known_last = known_first and tonumber(ARGV[tb + 10 + 2 * nagg])
local none_held = ARGV[tb + 11 + 2 * nagg]
if not known_last or #ARGV ~= tb + 11 + 2 * nagg or (none_held ~= '0' and none_held ~= '1')
   or not ((known_first == 0 and known_last == 0)
           or (known_first >= 1 and known_first <= known_last and known_last <= nrec)) then
  return redis.error_reply('ERR emit.lua: bad shape')
end
-- Every run of this call writes all its known records into K_REGISTRY at once: if the first
-- is there, the call ran before (a retry after a lost reply, a batch written twice), and
-- every record is looked up, so a second run writes nothing twice.
if known_first > 0 and redis.call('HEXISTS', KEYS[K_REGISTRY], ARGV[1 + 2 * known_first]) == 1 then
  known_first, known_last = 0, 0
end

local CHUNK = 4000
local argv, call, unpack, byte, sub = ARGV, redis.call, unpack, string.byte, string.sub
local HELD_BYTE, CAMPAIGN_REJECTED_BYTE = byte(HELD), byte(CAMPAIGN_REJECTED)
local NO_BUCKET = byte('-') -- a metric tag's latency bucket when it has none
local PREFIX = #REG_EARLY_CANCEL -- (as long as REG_CANCEL, REG_RETURN, REG_MOVEMENT, REG_STATE,
--                                    REG_WRITE_OFF)
local VERSIONED = '^(%d+)' .. SEP .. '(.+)$' -- a REG_STATE record's value: version SEP outcome

local function id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

-- s split at every RS: exactly n parts (empty ones kept)
local function split(s, n)
  local out, i = {}, 1
  for k = 1, n - 1 do
    local j = string.find(s, RS, i, true)
    if not j then return nil end
    out[k] = sub(s, i, j - 1)
    i = j + 1
  end
  if n > 0 then out[n] = sub(s, i) end
  if string.find(out[n] or '', RS, 1, true) then return nil end
  return out
end

-- One HMGET for the registry (in chunks), then either path.
-- '\0nc' in the registry: no cancel of this shard waits for its order, so the decider need not
-- look up "\0c:<order id>" for the orders of its next batch. Set by the first write to an empty
-- registry (one written before this flag existed never gets it), dropped for good by the
-- first cancel that comes before its order.
-- (Per generation: the flag of a registry says no such cancel was stored in it; the decider
-- skips the lookups while the three generations read have it, or are empty.)
local no_early = call('HLEN', KEYS[K_REGISTRY]) == 0
local written, dead, wr, wp = 0, 0, 0, 0
local tags = {} -- metric tag -> new records carrying it

-- The registry values of the records outside the known ones (record k -> its value), in
-- the three generations, the newest first.
local function read_stored()
  local ask, at, stored = {}, {}, {}
  for k = 1, nrec do
    if k < known_first or k > known_last then
      ask[#ask + 1] = argv[1 + 2 * k]
      at[#ask] = k
    end
  end
  for i = 1, #ask, CHUNK do
    local ids = { unpack(ask, i, math.min(i + CHUNK - 1, #ask)) }
    local got = call('HMGET', KEYS[K_REGISTRY_NEXT], unpack(ids))
    for _, k in ipairs({ K_REGISTRY, K_REGISTRY_OLD }) do
      local more = call('HMGET', KEYS[k], unpack(ids))
      for j = 1, #ids do if not got[j] then got[j] = more[j] end end
    end
    for j = 1, #ids do if got[j] then stored[at[i + j - 1]] = got[j] end end
  end
  return stored
end

-- The records not in the registry yet (fresh[k] for record k), and whether the batch takes
-- the fast path (plain: all are fresh, and none is special).
local function read_fresh()
  local fresh, plain, seen = {}, true, {}
  local stored = read_stored()
  for k = 1, nrec do
    local oid = argv[1 + 2 * k]
    local was = stored[k]
    if was and not seen[oid] and sub(oid, 1, PREFIX) == REG_STATE then
      -- a later version of an order's record: fresh while the stored version is older
      local v = tonumber(string.match(argv[2 + 2 * k], '^(%d+)'))
      if v and tonumber(was) < v then was = nil end
    end
    if was or seen[oid] then
      plain = false
    else
      fresh[k] = true
      local kind = byte(argv[2 + 2 * k], 1)
      if kind == HELD_BYTE or byte(oid, 1) == 0 then plain = false end -- or an internal field
    end
    seen[oid] = true
  end
  return fresh, plain
end

-- The fast path: the batch as it came.
local function write_plain()
  written = nrec
  if nrec > 0 then
    call('XADD', KEYS[K_OUT], '*', 'n', nrec, 'v', blob)
    for i = 3, 2 + 2 * nrec, 2 * CHUNK do
      call('HSET', KEYS[K_REGISTRY], unpack(argv, i, math.min(i + 2 * CHUNK - 1, 2 + 2 * nrec)))
    end
  end
  for i = tb + 7, tb + 6 + 2 * nagg, 2 do
    local t, n = argv[i], tonumber(argv[i + 1])
    tags[t] = n
    if byte(t, 1) ~= NO_BUCKET then wr = wr + n end
    if byte(t, 2) ~= NO_BUCKET then wp = wp + n end
  end
  if nrej > 0 then call('XADD', KEYS[K_DECISIONS], '*', 'n', nrej, 'v', argv[tb + 8 + 2 * nagg]) end
end

-- The fresh records sorted out: {registry pairs, records to write, held pairs, decisions,
-- returns}; tags counted. A pending cancel's HDEL of '\0nc' and a cancellation's HDEL of its
-- held record happen here.
local function sort_fresh(fresh, recs_in, tags_in)
  local w = { reg = {}, recs = {}, held = {}, decided = {}, returned = {}, moved = {} }
  local reg, held, decided = w.reg, w.held, w.decided
  for k = 1, nrec do
    if fresh[k] then
      local oid, value, rec = argv[1 + 2 * k], argv[2 + 2 * k], recs_in[k]
      local kind = byte(value, 1)
      local t = tags_in[k]
      if t ~= '' then
        tags[t] = (tags[t] or 0) + 1
        if byte(t, 1) ~= NO_BUCKET then wr = wr + 1 end
        if byte(t, 2) ~= NO_BUCKET then wp = wp + 1 end
      end
      reg[#reg + 1] = oid
      reg[#reg + 1] = value
      local prefix = sub(oid, 1, PREFIX)
      if prefix == REG_STATE then -- version n: the order's field takes its new outcome
        local v, current = string.match(value, VERSIONED)
        local real = sub(oid, PREFIX + 1)
        reg[#reg] = v
        reg[#reg + 1] = real
        reg[#reg + 1] = current
        if byte(current, 1) == HELD_BYTE then -- paid, a first-N candidate: held as at first
          held[#held + 1] = real
          held[#held + 1] = rec
          decided[#decided + 1] = real .. SEP .. ACCEPTED
        else
          written = written + 1
          w.recs[written] = rec
        end
      elseif kind == HELD_BYTE then
        held[#held + 1] = oid
        held[#held + 1] = rec
        decided[#decided + 1] = oid .. SEP .. ACCEPTED
      elseif rec == '' then -- a pending cancel: registry only
        if prefix == REG_EARLY_CANCEL then no_early = false; call('HDEL', KEYS[K_REGISTRY], REG_NO_EARLY) end
      elseif prefix == REG_RETURN then
        w.returned[#w.returned + 1] = rec
      elseif prefix == REG_MOVEMENT or prefix == REG_WRITE_OFF then -- (a write-off: dataflows/fulfilment.py)
        w.moved[#w.moved + 1] = rec
      else
        if prefix == REG_CANCEL then call('HDEL', KEYS[K_HELD], sub(oid, PREFIX + 1)) end
        written = written + 1
        w.recs[written] = rec
        if kind == CAMPAIGN_REJECTED_BYTE then decided[#decided + 1] = oid .. SEP .. REJECTED end
      end
    end
  end
  return w
end

-- The slow path: record by record (a replay, a held record, an internal field).
local function write_sorted(fresh)
  local recs_in, tags_in = split(blob, nrec), split(argv[tb + 5], nrec)
  if not recs_in or not tags_in then return redis.error_reply('ERR emit.lua: bad shape') end
  local w = sort_fresh(fresh, recs_in, tags_in)
  local reg, held = w.reg, w.held
  if written > 0 then
    -- One entry per batch: a redis.call costs far more than the bytes it writes.
    call('XADD', KEYS[K_OUT], '*', 'n', written, 'v', table.concat(w.recs, RS))
  end
  for i = 1, #held, CHUNK do call('HSET', KEYS[K_HELD], unpack(held, i, math.min(i + CHUNK - 1, #held))) end
  if #w.returned > 0 then
    call('XADD', KEYS[K_RETURNS], '*', 'n', #w.returned, 'v', table.concat(w.returned, RS))
  end
  if #w.moved > 0 then
    call('XADD', KEYS[K_MOVEMENTS], '*', 'n', #w.moved, 'v', table.concat(w.moved, RS))
  end
  if #w.decided > 0 then
    call('XADD', KEYS[K_DECISIONS], '*', 'n', #w.decided, 'v', table.concat(w.decided, RS))
  end
  for i = 1, #reg, CHUNK do
    call('HSET', KEYS[K_REGISTRY], unpack(reg, i, math.min(i + CHUNK - 1, #reg)))
  end
  return nil
end

local function write_dead()
  for i = 1, ndl do
    local q = p + 3 * (i - 1) + 1
    if call('HEXISTS', KEYS[K_REGISTRY_OLD], REG_DEAD .. argv[q]) == 0
       and call('HEXISTS', KEYS[K_REGISTRY_NEXT], REG_DEAD .. argv[q]) == 0
       and call('HSETNX', KEYS[K_REGISTRY], REG_DEAD .. argv[q], DEAD) == 1 then
      call('XADD', KEYS[K_DEAD_LETTERS], '*', 'id', argv[q], 'raw', argv[q + 1], 'reason', argv[q + 2])
      dead = dead + 1
    end
  end
end

local function add_sum(field, sum, n, new)
  sum, n = tonumber(argv[sum]), tonumber(argv[n])
  if new > 0 and sum and n and n > 0 then
    call('HINCRBY', KEYS[K_COUNTERS], field, math.floor(sum * new / n + 0.5))
  end
end

local function count()
  if written > 0 then call('HINCRBY', KEYS[K_COUNTERS], 'records', written) end
  if dead > 0 then call('HINCRBY', KEYS[K_COUNTERS], 'dead', dead) end
  for t, n in pairs(tags) do call('HINCRBY', KEYS[K_COUNTERS], 'm' .. t, n) end
  add_sum('sum_r', tb + 1, tb + 2, wr)
  add_sum('sum_p', tb + 3, tb + 4, wp)
end

local function advance_watermark()
  if last == '-' then return end
  local wm = call('GET', KEYS[K_WATERMARK])
  if not wm or id_lt(wm, last) then
    call('SET', KEYS[K_WATERMARK], last)
    -- Everything before `last` has its outcome stored: it is never needed again, even by a
    -- resume from an older snapshot (replays of it are skipped by the registry).
    local trimmed = call('XTRIM', KEYS[K_INPUT], 'MINID', '~', last)
    if trimmed > 0 then call('HINCRBY', KEYS[K_COUNTERS], 'trimmed', trimmed) end
  end
end

local fresh, plain = nil, true
if none_held == '0' or known_first ~= 1 or known_last ~= nrec then
  fresh, plain = read_fresh()
end
if plain then
  write_plain()
else
  local failed = write_sorted(fresh)
  if failed then return failed end
end
write_dead()
count()
advance_watermark()
if no_early then call('HSET', KEYS[K_REGISTRY], REG_NO_EARLY, 1) end
local function flagged(k) -- no early cancel waits in generation k (or it has nothing)
  return call('EXISTS', KEYS[k]) == 0 or call('HEXISTS', KEYS[k], REG_NO_EARLY) == 1
end
local none_waits = call('HEXISTS', KEYS[K_REGISTRY], REG_NO_EARLY) == 1
  and flagged(K_REGISTRY_OLD) and flagged(K_REGISTRY_NEXT)
return { written, dead, none_waits and 1 or 0 }
