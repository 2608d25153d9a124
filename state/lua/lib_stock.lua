-- lib_stock.lua: prepended by state/store.py to the scripts that take or return units
-- (decide, reserve_parts, release_parts), so what they share is written once.
--
-- Needs KEYS laid out per SKU i as those scripts do: KEYS[4i-3] stock hash, KEYS[4i] alerts.

-- A SKU's stock hash as a table (fields -> numbers), and its units over all locations
-- (fields that start with a NUL byte are the marker, rules and flags, not locations).
local function read_stock(key)
  local flat = redis.call('HGETALL', key)
  local t, units = {}, 0
  for i = 1, #flat, 2 do
    local q = tonumber(flat[i + 1])
    t[flat[i]] = q
    if string.byte(flat[i], 1) ~= 0 and q > 0 then units = units + q end
  end
  return t, units
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
