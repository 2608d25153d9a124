-- lib_alerts.lua: prepended to the scripts that take or return units (decide, reserve_parts,
-- release_parts) by state/store.py, so the alert rule is written once.
--
-- Needs KEYS laid out per SKU i as those scripts do: KEYS[4i-3] stock hash, KEYS[4i] alerts.
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
