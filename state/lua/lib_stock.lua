-- lib_stock.lua: prepended (state/conn.py lua(), after lib_protocol.lua) to the scripts that
-- take or return units (decide, reserve_parts, release_parts, undo_units, return_units,
-- set_stock: state/skus.py) and to those of the first-N campaigns (settle, candidates:
-- state/campaigns.py), so what they share is written once.
--
-- KEYS, per SKU i of a call (1-based), as those scripts lay them out: KEYS[SKU_KEYS * i - K]
-- for K one of the K_* below (sku_key(i, K) reads it). All of one SKU share a slot.
local SKU_KEYS = 10 -- keys per SKU
-- Decisions and units sold per customer live in generations (state/gens.py): a script writes
-- in its caller's generation and reads that one, the one before and the one after (read
-- only): a shard behind another writes units per customer a generation before that one's,
-- and a replay after a crash may run a step in a generation before the one its crashed
-- attempt of the same step wrote its marks in.
local K_RECORDS_NEXT = 9 -- the decision hash of the generation after
local K_BOUGHT_NEXT = 8 -- units sold per customer in the generation after
local K_RECORDS_OLD = 7 -- the decision hash of the generation before
local K_BOUGHT_OLD = 6 -- units sold per customer in the generation before
local K_STOCK = 5 -- its stock hash (location -> units, plus NUL-prefixed rules and flags)
local K_RECORDS = 4 -- its decision hash (decide.lua) or parts hash (reserve_parts.lua)
local K_BOUGHT = 3 -- units sold per customer (in this generation)
local K_ALERTS = 2 -- its low-stock alerts stream
local K_CANDIDATES = 1 -- its first-N campaigns' candidates ZSET
local K_PROGRESS = 0 -- its first-N campaigns' progress hash

local function sku_key(i, k) return KEYS[SKU_KEYS * i - k] end

-- HMGET of `fields` (a list) in SKU i's decision (or parts) hash of the generation after,
-- this one and the one before: one reply per field, the newest generation's value.
local function hmget_gens(i, fields)
  local got = redis.call('HMGET', sku_key(i, K_RECORDS_NEXT), unpack(fields))
  for _, k in ipairs({ K_RECORDS, K_RECORDS_OLD }) do
    local missing = false
    for j = 1, #fields do if not got[j] then missing = true; break end end
    if not missing then break end
    local more = redis.call('HMGET', sku_key(i, k), unpack(fields))
    for j = 1, #fields do if not got[j] then got[j] = more[j] end end
  end
  return got
end

-- One field of SKU i's decision state, in the newest of the three generations that has it
-- (nil: none).
local function hget_gens(i, field)
  return redis.call('HGET', sku_key(i, K_RECORDS_NEXT), field)
      or redis.call('HGET', sku_key(i, K_RECORDS), field)
      or redis.call('HGET', sku_key(i, K_RECORDS_OLD), field)
end

-- Units of SKU i returned for an order so far ('\0rq:<order id>', counted in the three
-- generations: return_units.lua adds to its caller's).
local function returned_units(i, oid)
  local field, n = DEC_RETURNED .. oid, 0
  for _, k in ipairs({ K_RECORDS_NEXT, K_RECORDS, K_RECORDS_OLD }) do
    n = n + tonumber(redis.call('HGET', sku_key(i, k), field) or '0')
  end
  return n
end

-- Units sold to each customer of `custs` (a list) of SKU i over the three generations, and
-- those of the other two alone (write_bought keeps this generation's share).
local function read_bought(i, custs)
  local counts, others = {}, {}
  for a = 1, #custs, 4000 do
    local b = math.min(a + 3999, #custs)
    local now = redis.call('HMGET', sku_key(i, K_BOUGHT), unpack(custs, a, b))
    local old = redis.call('HMGET', sku_key(i, K_BOUGHT_OLD), unpack(custs, a, b))
    local nxt = redis.call('HMGET', sku_key(i, K_BOUGHT_NEXT), unpack(custs, a, b))
    for j = a, b do
      local o = tonumber(old[j - a + 1] or '0') + tonumber(nxt[j - a + 1] or '0')
      others[custs[j]] = o
      counts[custs[j]] = tonumber(now[j - a + 1] or '0') + o
    end
  end
  return counts, others
end

-- Units sold per customer written back: this generation holds the total less what the other
-- two hold (`changed`: customer -> true; `totals`, `olds`: as read_bought gave them).
local function write_bought(i, changed, totals, olds)
  local args = {}
  for c in pairs(changed) do
    args[#args + 1] = c
    args[#args + 1] = totals[c] - (olds[c] or 0)
  end
  if #args > 0 then redis.call('HSET', sku_key(i, K_BOUGHT), unpack(args)) end
end

-- Which internal field of a stock hash read_stock is reading: its second byte ('\0Lq:', '\0Lu:',
-- '\0Lc:' are a channel lock's; '\0G:' and '\0Gl:' a campaign's, '\0Gl:' with this third byte).
local LOCK_TAG = string.byte(LOCK_QTY, 2)
local CAMPAIGN_TAG = string.byte(CAMPAIGN, 2)
local LATENESS_TAG = string.byte(CAMPAIGN_LATENESS, 3)

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
    elseif string.byte(f, 2) == LOCK_TAG then
      locks = locks or {}
      local ch = string.sub(f, #LOCK_QTY + 1)
      local l = locks[ch]
      if not l then l = { q = 0, u = 0, c = 0 }; locks[ch] = l end
      l[string.sub(f, 3, 3)] = q
    elseif string.byte(f, 2) == CAMPAIGN_TAG then
      camps = camps or {}
      local long = string.byte(f, 3) == LATENESS_TAG -- '\0Gl:<campaign>'
      local id = string.sub(f, long and #CAMPAIGN_LATENESS + 1 or #CAMPAIGN + 1)
      local c = camps[id]
      if not c then c = { n = 0, l = 0 }; camps[id] = c end
      c[long and 'l' or 'n'] = q
    end
  end
  return t, units, locks, camps
end

-- Whether any of the first n SKUs' rules were written by a catalog newer than the caller's
-- (RULES_VERSION): then the script changes nothing and answers STALE (decide.lua,
-- reserve_parts.lua).
local function rules_newer(stock, n, version)
  for s = 1, n do
    if (stock[s][RULES_VERSION] or 0) > version then return true end
  end
  return false
end

local LATE = SEP .. 'L' -- the suffix of a late candidate's member (settle.lua reads it)

-- The two members an order `oid` may have in campaign `id`'s candidates (on time, late).
local function candidate_members(id, oid)
  local m = id .. SEP .. oid
  return m, m .. LATE
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
      adds[#adds + 1] = id .. SEP .. oid .. (late and LATE or '')
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
    redis.call('ZADD', sku_key(i, K_CANDIDATES), unpack(adds, j, math.min(j + 3999, #adds)))
  end
  local args = {}
  for f, v in pairs(progress) do
    args[#args + 1] = f
    args[#args + 1] = v
  end
  redis.call('HSET', sku_key(i, K_PROGRESS), unpack(args))
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

-- A change of a stock hash's units that may raise what an order can take (units back, in,
-- moved, a reload), and a lend (units in flight), counts in its field '\0up' (STOCK_UP),
-- which only grows (set_stock.lua carries it over): a reader of several hashes on different
-- slots (a hot SKU's buckets, state/buckets.py `snapshot`) that finds each one's count the
-- same after its read as before knows no unit came in meanwhile, so what it read is at
-- least what there was at one moment. Scripts change units through add_units (a decrease
-- counts too: harmless); decide.lua and reserve_parts.lua only take units (and draw locks,
-- which a bucketed SKU has none of) through write_changed, which does not count, so a
-- burst's sales never spoil a read. Those without this library (lend, receive, gift,
-- gift_return) count themselves.
local function add_units(key, field, n)
  redis.call('HINCRBY', key, field, n)
  redis.call('HINCRBY', key, STOCK_UP, 1)
end

-- One HSET of the fields marked in `changed`, their values taken from `values` (units
-- taken, locks drawn: see add_units).
local function write_changed(key, changed, values)
  local args = {}
  for field in pairs(changed) do
    args[#args + 1] = field
    args[#args + 1] = values[field]
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end

-- Stock alerts (rule '\0low' = low_stock_threshold; a SKU without one has none): the alert
-- level of a SKU (alert_level), from its units (over all locations) now: 2 sold out (0
-- units), 1 low (1..threshold), 0 in stock (above it; a threshold of 0 has only levels 0 and
-- 2). The level last alerted is the field '\0alerted' of the stock hash (absent = 0). An
-- alert is raised exactly when the level changes: to 1 'low_stock', to 2 'sold_out', to 0
-- 'back_in_stock'; one alert per change, so a fall from in stock straight to 0 is one
-- 'sold_out' (no low_stock before it) and a restock from 0 to 1..threshold is one
-- 'low_stock'. Settled after every change of the units (settle_alert: decide, reserve/release
-- parts, undo, return; set_stock.lua at a catalog load, with alert_level and raise_alert), so
-- each transition is raised once and a replay, which changes no units, raises nothing. The
-- read path judges the same level in Python (state/stock.py read_alone).
local ALERT_REASON = { [0] = 'back_in_stock', 'low_stock', 'sold_out' }

local function alert_level(units, low)
  if units <= 0 then return 2 elseif units <= low then return 1 end
  return 0
end

-- The alert of SKU `name` whose level changed to `level` at `units` left: to its alerts
-- stream, and its new level to the stock hash and to `fields` (its stock table).
local function raise_alert(stock_key, alerts_key, name, units, level, fields)
  redis.call('XADD', alerts_key, '*', 'sku', name, 'remaining', units,
    'reason', ALERT_REASON[level], 'at', wall_ms())
  if level == 0 then
    redis.call('HDEL', stock_key, ALERTED)
    fields[ALERTED] = nil
  else
    redis.call('HSET', stock_key, ALERTED, level)
    fields[ALERTED] = level
  end
end

-- SKU i's alert (the KEYS layout above) after a change of its units: `units` = its units
-- right after the change, `fields` = its stock table (read_stock).
local function settle_alert(i, name, units, fields)
  local low = fields[RULE_LOW]
  if not low then return end
  local level = alert_level(units, low)
  if level ~= (fields[ALERTED] or 0) then
    raise_alert(sku_key(i, K_STOCK), sku_key(i, K_ALERTS), name, units, level, fields)
  end
end
