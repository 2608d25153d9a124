-- settle.lua: settle the first-N gift ranks of one campaign SKU's campaigns (one slot).
--
-- KEYS: KEYS[1] the SKU's stock hash (campaign definitions '\0G:<id>' = first_n,
--       '\0Gl:<id>' = lateness_ms), KEYS[2] its candidates ZSET, KEYS[3] its campaign
--       progress hash, KEYS[4] its settled LIST, KEYS[5] its settling lease.
-- ARGV: lease token, lease ms, force (1: settle every candidate now), the input's event-time
--       watermark in epoch ms ("": not known yet, nothing settles but by force), idle (1:
--       every input shard has read all it has, as its worker reported moments ago).
-- The rule: a candidate settles once the campaign's watermark has passed its paid_at:
-- watermark = the input's watermark - lateness_ms, strictly (an order paid exactly there may
-- still come). The input's watermark (dataflows/gifts.py) is the least paid_at any shard
-- with unread input has read up to (or, with none, the latest read anywhere), so a slow,
-- lagging or restarting shard holds it back and its rightful winners are not passed over.
-- When every shard is idle and no candidate has arrived for lateness_ms of wall time (the
-- burst is over), or when forced, every candidate settles. Settled candidates get the next
-- ranks in (paid_at, order id) order and move to the settled LIST as "<campaign>\31<order
-- id>\31<rank>\31<late 0/1>\31<paid_at ms>"; progress '<campaign>:upto' keeps the watermark
-- settled up to (a candidate paid before it that comes later is "late": lib_stock.lua).
-- The caller releases their records and acknowledges them (settled_ack.lua).
-- At most MAX candidates settle per call and at most MAX entries are returned (a call stays
-- short; the caller comes back for the rest).
-- Returns: false when another worker holds the lease; else {campaigns whose gift stock ran
-- out, the first MAX entries of the settled LIST (older unacknowledged ones first)}.
local MAX = 5000
local token, lease_ms, force = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local input_wm, idle = tonumber(ARGV[4]), ARGV[5] == '1'
local holder = redis.call('GET', KEYS[5])
if holder and holder ~= token then return false end
redis.call('SET', KEYS[5], token, 'PX', lease_ms)
local _, _, _, camps = read_stock(KEYS[1])
local ended = {}
if camps then
  local progress = read_progress(KEYS[3])
  local now = wall_ms()
  local changed = {}
  for id, c in pairs(camps) do
    if progress[id .. ':ended'] then ended[#ended + 1] = id end
    local arrived = progress[id .. ':arrived']
    local upto, bound = nil, nil
    if force or (idle and arrived and now - arrived >= c.l) then
      upto = '+inf'
    elseif input_wm then
      bound = input_wm - c.l
      upto = '(' .. bound
    end
    if upto then
      local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', upto, 'WITHSCORES', 'LIMIT', 0, MAX)
      local prefix = id .. SEP
      local rank = progress[id .. ':ranks'] or 0
      local moved, pushed, upto_n = {}, {}, nil
      for k = 1, #due, 2 do
        local m, paid = due[k], due[k + 1]
        if string.sub(m, 1, #prefix) == prefix then
          local rest = string.sub(m, #prefix + 1)
          local late = '0'
          if string.sub(rest, -#LATE) == LATE then late, rest = '1', string.sub(rest, 1, -#LATE - 1) end
          rank = rank + 1
          pushed[#pushed + 1] = prefix .. rest .. SEP .. rank .. SEP .. late .. SEP .. paid
          moved[#moved + 1] = m
          if not upto_n or tonumber(paid) >= upto_n then upto_n = tonumber(paid) + 1 end
        end
      end
      for j = 1, #pushed, 4000 do
        redis.call('RPUSH', KEYS[4], unpack(pushed, j, math.min(j + 3999, #pushed)))
      end
      if #moved > 0 then
        for j = 1, #moved, 4000 do
          redis.call('ZREM', KEYS[2], unpack(moved, j, math.min(j + 3999, #moved)))
        end
        changed[#changed + 1] = id .. ':ranks'
        changed[#changed + 1] = rank
      end
      -- (settled by force or idleness: up to just past the last paid_at ranked)
      if upto == '+inf' then bound = upto_n end
      if bound and bound > (progress[id .. ':upto'] or -1) then
        changed[#changed + 1] = id .. ':upto'
        changed[#changed + 1] = bound
      end
    end
  end
  if #changed > 0 then redis.call('HSET', KEYS[3], unpack(changed)) end
end
return { ended, redis.call('LRANGE', KEYS[4], 0, MAX - 1) }
