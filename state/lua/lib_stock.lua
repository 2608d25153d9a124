-- lib_stock.lua: prepended by state/store.py to the scripts that take or return units
-- (decide, reserve_parts, release_parts), so what they share is written once.
--
-- Needs KEYS laid out per SKU i as those scripts do: KEYS[4i-3] stock hash, KEYS[4i] alerts.

-- A SKU's stock hash as a table (fields -> numbers), its units over all locations (fields
-- that start with a NUL byte are the marker, rules and flags, not locations), and its channel
-- locks: nil, or channel -> {q = locked units, u = until (epoch ms), c = units the channel
-- already drew from the lock}, from the fields '\0Lq:<channel>', '\0Lu:..' and '\0Lc:..'.
local function read_stock(key)
  local flat = redis.call('HGETALL', key)
  local t, units, locks = {}, 0, nil
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
    end
  end
  return t, units, locks
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

-- Low-stock alert (rule '\0low' of SKU i), settled after every order that took its units:
-- one alert when they fall to or below the threshold (remaining = units right after that
-- order; sold_out at 0), flagged '\0alerted' in the stock hash; the flag clears once a
-- restock lifts the units above the threshold, and only then can the next alert fire.
local function settle_alert(i, name, units, fields)
  local low = fields['\0low']
  if not low then return end
  if units <= low then
    if not fields['\0alerted'] then
      local now = redis.call('TIME')
      local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
      redis.call('XADD', KEYS[4 * i], '*', 'sku', name, 'remaining', units,
        'reason', units == 0 and 'sold_out' or 'low_stock', 'at', at)
      redis.call('HSET', KEYS[4 * i - 3], '\0alerted', 1)
      fields['\0alerted'] = 1
    end
  elseif fields['\0alerted'] then
    redis.call('HDEL', KEYS[4 * i - 3], '\0alerted')
    fields['\0alerted'] = nil
  end
end
