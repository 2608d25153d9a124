-- movement.lua: a stock movement's lines of one hash slot (state/movements.py; the rules:
-- docs/movements.md).
--
-- KEYS: per SKU i, the decide.lua layout (lib_stock.lua sku_key): K_STOCK stock hash,
--       K_RECORDS decision hash, K_ALERTS alerts stream (the others unused here). The
--       movement's state in this slot is the field DEC_MOVEMENT .. id of the FIRST SKU's
--       decision hash: MOVE_HELD (+ the units taken per line), MOVE_APPLIED (+ per line: on
--       hand at its location, on hand at `to`, discrepancy), MOVE_REFUSED (+ the reason).
-- ARGV: mode, movement id, reason (abort) or guard (hold, rehold: kept with the hold and
--       answered by every hold after it, '' none), nskus, SKU names (nskus), nlines, then
--       per line: SKU index, op, location, qty, to ('' unless op is 'move').
-- ops: 'in' adds qty at location (a receipt, a positive adjustment); 'out' takes qty
--      (a sale, a negative adjustment: qty is the units taken); 'move' takes qty at location
--      and adds it at `to` (a transfer); 'count' sets location to qty (a count).
-- modes, so that a movement across slots is all-or-nothing (state/movements.py):
--   'hold'   check every line against the stock now; if one would take a location below
--            zero, or names a SKU this Redis does not have, change nothing but the state
--            (MOVE_REFUSED); else take out what the lines take ('out', 'move' at its
--            location, and for a 'count' all the units there) and keep it (MOVE_HELD).
--   'commit' after a hold: add what the lines add ('in', 'move' at `to`, a 'count''s qty);
--            MOVE_APPLIED with the figures of the record.
--   'abort'  after a hold: put back what it took; MOVE_REFUSED with the reason given.
--   'apply'  hold and commit in one call (a movement whose lines all lie in this slot).
--   'rehold' after a hold: put back what it took and hold again at this moment, with the
--            guard given (a hot SKU's count whose other buckets changed since its guard:
--            dataflows/movements.py); refused (MOVE_REFUSED) if the lines no longer fit.
-- A replay answers from the stored state (a hold after a hold: held; anything after an
-- applied or refused state: that state): every step is idempotent.
-- Returns {state, payload}: {MOVE_HELD, guard}, {MOVE_APPLIED, fields joined by SEP} or
-- {MOVE_REFUSED, reason .. SEP .. detail}. A count's units are taken at the hold and set at the commit, so
-- between the two the location holds only what came back meanwhile: the count takes effect
-- at its place in the SKU's sequence of changes (its hold), and what came after it stays.
local mode, id, why = ARGV[1], ARGV[2], ARGV[3]
local nskus = tonumber(ARGV[4])
if not nskus or nskus < 1 or #KEYS ~= SKU_KEYS * nskus then
  return redis.error_reply('ERR movement.lua: bad header')
end
local names = {}
for i = 1, nskus do names[i] = ARGV[4 + i] end
local p = 5 + nskus
local n = tonumber(ARGV[p])
if not n or n < 1 or #ARGV ~= p + 5 * n then return redis.error_reply('ERR movement.lua: bad lines') end
local OPS = { ['in'] = true, out = true, move = true, count = true }
local lines = {}
for i = 1, n do
  local b = p + 5 * i - 4
  local s, q = tonumber(ARGV[b]), tonumber(ARGV[b + 3])
  if not s or s < 1 or s > nskus or not OPS[ARGV[b + 1]] or not q or q < 0 then
    return redis.error_reply('ERR movement.lua: bad line #' .. i)
  end
  lines[i] = { s = s, op = ARGV[b + 1], loc = ARGV[b + 2], q = q, to = ARGV[b + 4] }
end
local state_key, field = sku_key(1, K_RECORDS), DEC_MOVEMENT .. id

local function numbers(s)
  local out = {}
  for v in string.gmatch(s, '[^' .. SEP .. ']+') do out[#out + 1] = tonumber(v) end
  return out
end

-- The units each line takes out at its hold, or nil and why the movement is refused.
local function takes()
  local have, taken = {}, {}
  for i, l in ipairs(lines) do
    local key = sku_key(l.s, K_STOCK)
    if redis.call('HEXISTS', key, STOCK_MARKER) == 0 then
      return nil, 'unknown_sku' .. SEP .. names[l.s] .. ' is not in this Redis'
    end
    local cell = l.s .. SEP .. l.loc
    local units = have[cell] or tonumber(redis.call('HGET', key, l.loc) or '0')
    taken[i] = 0
    if l.op == 'out' or l.op == 'move' then
      if units < l.q then
        return nil, 'below_zero' .. SEP .. string.format(
          '%s at %s has %d units, the movement takes %d', names[l.s], l.loc, units, l.q)
      end
      taken[i] = l.q
    elseif l.op == 'count' then
      taken[i] = math.max(units, 0)
    end
    have[cell] = units - taken[i]
  end
  return taken
end

local function settle_alerts()
  local done = {}
  for _, l in ipairs(lines) do
    if not done[l.s] then
      done[l.s] = true
      local t, units = read_stock(sku_key(l.s, K_STOCK))
      settle_alert(l.s, names[l.s], units, t)
    end
  end
end

local function refuse(reason)
  redis.call('HSET', state_key, field, MOVE_REFUSED .. SEP .. reason)
  return { MOVE_REFUSED, reason }
end

-- (the held state: MOVE_HELD, the units taken per line, and after RS the guard if any)
local function hold()
  local taken, reason = takes()
  if not taken then return nil, refuse(reason) end
  for i, l in ipairs(lines) do
    if taken[i] > 0 then add_units(sku_key(l.s, K_STOCK), l.loc, -taken[i]) end
  end
  local guard = why ~= '' and (RS .. why) or ''
  redis.call('HSET', state_key, field, MOVE_HELD .. SEP .. table.concat(taken, SEP) .. guard)
  return taken
end

local function commit(taken)
  for _, l in ipairs(lines) do
    local key = sku_key(l.s, K_STOCK)
    if l.op == 'in' or l.op == 'count' then
      add_units(key, l.loc, l.q)
    elseif l.op == 'move' then
      add_units(key, l.to, l.q)
    end
  end
  local out = {}
  for i, l in ipairs(lines) do
    local key = sku_key(l.s, K_STOCK)
    out[#out + 1] = tonumber(redis.call('HGET', key, l.loc) or '0')
    out[#out + 1] = l.op == 'move' and tonumber(redis.call('HGET', key, l.to) or '0') or ''
    out[#out + 1] = l.op == 'count' and (l.q - taken[i]) or ''
  end
  local fields = table.concat(out, SEP)
  redis.call('HSET', state_key, field, MOVE_APPLIED .. SEP .. fields)
  settle_alerts()
  return { MOVE_APPLIED, fields }
end

local function give_back(taken)
  for i, l in ipairs(lines) do
    if taken[i] > 0 then add_units(sku_key(l.s, K_STOCK), l.loc, taken[i]) end
  end
end

local function abort(taken)
  give_back(taken)
  settle_alerts()
  return refuse(why)
end

local stored = hget_gens(1, field) -- (this generation's or the one before's)
if stored then
  local code, rest = string.sub(stored, 1, 1), string.sub(stored, 3)
  if code ~= MOVE_HELD then return { code, rest } end
  local cut = string.find(rest, RS, 1, true)
  local taken = numbers(cut and string.sub(rest, 1, cut - 1) or rest)
  if mode == 'hold' then return { MOVE_HELD, cut and string.sub(rest, cut + 1) or '' } end
  if mode == 'abort' then return abort(taken) end
  if mode == 'rehold' then
    give_back(taken)
    local again, refused = hold()
    if not again then
      settle_alerts()
      return refused
    end
    return { MOVE_HELD, why }
  end
  return commit(taken) -- 'commit', or an 'apply' replayed after a crash
end
if mode ~= 'hold' and mode ~= 'apply' then
  return redis.error_reply('ERR movement.lua: ' .. mode .. ' of a movement not held here')
end
local taken, refused = hold()
if not taken then return refused end
if mode == 'hold' then return { MOVE_HELD, why } end
return commit(taken)
