-- lib_stock.lua: prepended by state/store.py to the scripts that take or return units
-- (decide, reserve_parts, release_parts), so what they share is written once.
--
-- Needs KEYS laid out per SKU i as those scripts do: KEYS[6i-5] stock hash, KEYS[6i-2] alerts,
-- KEYS[6i-1] campaign candidates, KEYS[6i] campaign progress.

-- A SKU's stock hash as a table (fields -> numbers), its units over all locations (fields
-- that start with a NUL byte are the marker, rules and flags, not locations), and its channel
-- locks: nil, or channel -> {q = locked units, u = until (epoch ms), c = units the channel
-- already drew from the lock}, from the fields '\0Lq:<channel>', '\0Lu:..' and '\0Lc:..';
-- and its first-N gift campaigns: nil, or campaign id -> {n = first_n, l = lateness_ms},
-- from the fields '\0G:<campaign>' and '\0Gl:<campaign>'.
local function read_stock(key)
  local flat = redis.call('HGETALL', key)
  local t, units, locks, camps = {}, 0, nil, nil
  for i = 1, #flat, 2 do
    local f, q = flat[i], tonumber(flat[i + 1])
    t[f] = q
    if string.byte(f, 1) ~= 0 then
      if q > 0 then units = units + q end
    elseif string.byte(f, 2) == 76 then -- 'L'
      locks = locks or {}
      local ch = string.sub(f, 5)
      local l = locks[ch]
      if not l then l = { q = 0, u = 0, c = 0 }; locks[ch] = l end
      l[string.sub(f, 3, 3)] = q
    elseif string.byte(f, 2) == 71 then -- 'G'
      camps = camps or {}
      local long = string.byte(f, 3) == 108 -- '\0Gl:<campaign>'
      local id = string.sub(f, long and 5 or 4)
      local c = camps[id]
      if not c then c = { n = 0, l = 0 }; camps[id] = c end
      c[long and 'l' or 'n'] = q
    end
  end
  return t, units, locks, camps
end

-- First-N gift campaigns: an accepted order with units of a campaign SKU becomes a candidate
-- in the same call that takes its units (an order across slots: once all its parts are
-- reserved, candidates.lua): a member "<campaign>\31<order id>" (plus "\31L" when it is
-- late: paid before the watermark up to which its campaign's ranks were already settled,
-- progress '<campaign>:upto') of the SKU's candidates ZSET, scored by paid_at ms; ZSET order
-- is then exactly the ranking rule (paid_at, ties by order id). `progress` is the SKU's
-- campaign hash as a table; `adds` collects ZADD arguments (one ZADD per SKU per call).
-- Unless `always`, a campaign whose first_n ranks are all settled (or whose gift stock ran
-- out) takes no more candidates: a settled rank never changes, so no later order can win.
-- Returns whether the order became a candidate of any campaign.
local function add_candidate(camps, progress, adds, oid, paid, now, always)
  local added = false
  for id, c in pairs(camps) do
    if always or ((progress[id .. ':ranks'] or 0) < c.n and not progress[id .. ':ended']) then
      added = true
      local upto = progress[id .. ':upto']
      local late = upto ~= nil and paid < upto
      adds[#adds + 1] = paid
      adds[#adds + 1] = id .. '\31' .. oid .. (late and '\31L' or '')
      progress[id .. ':arrived'] = now
    end
  end
  return added
end

local function read_progress(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = tonumber(flat[i + 1]) end
  return t
end

local function write_progress(i, progress, adds)
  if #adds == 0 then return end
  for j = 1, #adds, 4000 do
    redis.call('ZADD', KEYS[6 * i - 1], unpack(adds, j, math.min(j + 3999, #adds)))
  end
  local args = {}
  for f, v in pairs(progress) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  redis.call('HSET', KEYS[6 * i], unpack(args))
end

local function wall_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Channel locks, judged at the order's paid_at (epoch ms): a lock is active while paid < its
-- until, and holds its unconsumed units (q - c) for its channel. Channel `ch` may take `q`
-- units of a SKU with `units` in stock when q <= units - the other channels' active unconsumed
-- locks. Returns nil when it may not, else how many of the q come out of its own lock. When
-- even all the units could not serve q, the locks are not the reason: the stock check that
-- follows rejects the order (sold_out, or pickup_unavailable at a pickup store).
local function lock_take(locks, ch, paid, q, units)
  local others, own = 0, 0
  for c, l in pairs(locks) do
    local left = l.q - l.c
    if paid < l.u and left > 0 then
      if c == ch then own = left else others = others + left end
    end
  end
  if q > units - others and q <= units then return nil end
  return math.min(q, own)
end

-- One HSET of the fields marked in `changed`, their values taken from `values`.
local function write_changed(key, changed, values)
  local args = {}
  for field in pairs(changed) do
    args[#args + 1] = field
    args[#args + 1] = values[field]
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end

-- Stock alerts of SKU i (rule '\0low' = low_stock_threshold; a SKU without one has none):
-- its alert level, from its units (over all locations) now: 2 sold out (0 units), 1 low
-- (1..threshold), 0 in stock (above it; a threshold of 0 has only levels 0 and 2). The level
-- last alerted is the field '\0alerted' of the stock hash (absent = 0). An alert is raised
-- exactly when the level changes: to 1 'low_stock', to 2 'sold_out', to 0 'back_in_stock';
-- one alert per change, so a fall from in stock straight to 0 is one 'sold_out' (no
-- low_stock before it) and a restock from 0 to 1..threshold is one 'low_stock'. Called after
-- every change of the units (decide, reserve/release parts, undo, return; set_stock.lua
-- does the same at a catalog load), so each transition is raised once and a replay, which
-- changes no units, raises nothing. `remaining` = the units right after the change.
local ALERT_REASON = { [0] = 'back_in_stock', 'low_stock', 'sold_out' }
local function settle_alert(i, name, units, fields)
  local low = fields[RULE_LOW]
  if not low then return end
  local level = 0
  if units <= 0 then level = 2 elseif units <= low then level = 1 end
  if level == (fields[ALERTED] or 0) then return end
  redis.call('XADD', KEYS[6 * i - 2], '*', 'sku', name, 'remaining', units,
    'reason', ALERT_REASON[level], 'at', wall_ms())
  if level == 0 then
    redis.call('HDEL', KEYS[6 * i - 5], ALERTED)
    fields[ALERTED] = nil
  else
    redis.call('HSET', KEYS[6 * i - 5], ALERTED, level)
    fields[ALERTED] = level
  end
end
