-- lib_clock.lua: the input stream's clock (docs/payments.md "Which clock decides").
--
-- horizon(inbox, after): every entry of the input stream `inbox` older than the answer (epoch
-- ms) has been read by a worker that read up to entry id `after` ("" for none): the time of
-- the first entry after `after` when there is one (the shard is behind: event time), else the
-- server's clock read now (an entry added later is stamped at it or after). A deadline before
-- the horizon has passed for every event that could still count against it.
local function horizon(inbox, after)
  local next_entry = redis.call('XRANGE', inbox, after == '' and '-' or '(' .. after, '+', 'COUNT', 1)
  if #next_entry > 0 then return tonumber(string.match(next_entry[1][1], '^(%d+)-')) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
