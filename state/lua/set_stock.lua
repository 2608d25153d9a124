-- set_stock.lua: replace one SKU's stock levels and rules atomically (catalog load).
--
-- KEYS: KEYS[1] = the SKU's stock hash; KEYS[2] (optional) = its alerts stream, else the key
--       beside KEYS[1] ("os:{k:<sku>}:stock" -> "os:{k:<sku>}:alerts": the same slot).
-- ARGV: pairs of (location id, units >= 0), and of (NUL-prefixed rule, value); a channel lock
--       is the pair of rules '\0Lq:<channel>' (units) and '\0Lu:<channel>' (until, epoch ms).
-- Returns: the number of pairs written. The SKU exists afterwards even with no locations.
-- Prepended: lib_protocol.lua, lib_stock.lua (alert_level and raise_alert: the alert rule).
-- Kept from before: the alert level last raised ('\0alerted', see settle_alert in
-- lib_stock.lua), settled against the new units like any other change of them: a load that
-- changes the level raises its one alert (back_in_stock above the threshold, low_stock,
-- sold_out), one that keeps it raises none; a SKU loaded without a threshold has no level.
-- Also kept: what each channel already drew from its lock ('\0Lc:<channel>') while the SKU
-- keeps a lock for that channel, and its count of changes ('\0up', one more). Everything
-- else is replaced.
if #ARGV % 2 ~= 0 then return redis.error_reply('ERR set_stock.lua: odd arguments') end
for i = 2, #ARGV, 2 do
  local q = tonumber(ARGV[i])
  if not q or q < 0 or q ~= math.floor(q) then
    return redis.error_reply('ERR set_stock.lua: bad units for ' .. ARGV[i - 1])
  end
end
local old = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #old, 2 do
  if string.sub(old[i], 1, #LOCK_USED) == LOCK_USED then
    kept[string.sub(old[i], #LOCK_USED + 1)] = old[i + 1]
  end
end
local units, low, extra = 0, nil, {}
for i = 1, #ARGV, 2 do
  local f, q = ARGV[i], tonumber(ARGV[i + 1])
  local channel = string.sub(f, #LOCK_QTY + 1)
  if f == RULE_LOW then low = q
  elseif string.byte(f, 1) ~= 0 then units = units + q
  elseif string.sub(f, 1, #LOCK_QTY) == LOCK_QTY and kept[channel] then
    extra[#extra + 1] = LOCK_USED .. channel
    extra[#extra + 1] = kept[channel]
  end
end
local was = tonumber(redis.call('HGET', KEYS[1], ALERTED) or '0')
if low and was > 0 then -- kept, then settled like after any other change of the units
  extra[#extra + 1] = ALERTED
  extra[#extra + 1] = was
end
local up = tonumber(redis.call('HGET', KEYS[1], STOCK_UP) or '0') + 1 -- (only grows: lib_stock)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], STOCK_MARKER, '1', STOCK_UP, up, unpack(ARGV))
if #extra > 0 then redis.call('HSET', KEYS[1], unpack(extra)) end
local level = low and alert_level(units, low)
if level and level ~= was then
  local name = string.match(KEYS[1], '{k:(.*)}:stock$') or KEYS[1]
  local stream = KEYS[2] or (string.sub(KEYS[1], 1, -6) .. 'alerts')
  raise_alert(KEYS[1], stream, name, units, level, {})
end
return #ARGV / 2
