-- lib_route.lua: an order's spec, as decide.lua gets it, and its route: the locations its
-- units come from. Prepended to decide.lua after lib_stock.lua (its registration:
-- lua("decide", "lib_stock", "lib_route")). The choice is made here, on the SKUs' stock
-- tables, and changes nothing: decide.lua takes the units it chose. (reserve_parts.lua takes
-- allocations its caller chose: it has no route to choose.)
--
-- The spec: little-endian binary, one per order (decide.lua's ARGV), its fields at these
-- 1-based byte offsets:
local SPEC_HOME = 1 -- u16 SKU index whose decision hash keeps the outcome
local SPEC_PICKUP = 3 -- u16 location index of the pickup store, 0 = ship
local SPEC_NLINES = 5 -- u16 lines
local SPEC_CHANNEL = 7 -- u16 channel index of the order's channel
local SPEC_FLAGS = 9 -- u8 FLAG_* bits
local SPEC_CUSTOMER = 10 -- u16 bytes of the customer id, the spec's last bytes
local SPEC_PAID = 12 -- u64 paid_at in epoch milliseconds (time-boxed rules are judged at paid_at)
local SPEC_HEAD = 19 -- bytes before the first line
local LINE_BYTES = 6 -- then per line: u16 sku index, u32 qty >= 1
local RANK_BYTES = 2 -- then the ranking: u16 location indices, nearest first (empty for pickup)
-- and last the customer id (its bytes as SPEC_CUSTOMER says: a call's ARGV has one string
-- per order fewer; only an order with rules needs it, spec_customer)
-- The flags:
local FLAG_VIP = 1 -- the customer is a VIP
-- it may take safety stock (a store-kind channel, or a hot-SKU bucket other than 0, which
-- holds none)
local FLAG_SAFETY = 2
local FLAG_SHORT = 4 -- "short" (BUCKET_SHORT) instead of sold_out (decide.lua)
local FLAG_PENDING = 8 -- its payment is pending: reserved, not a first-N candidate yet
-- only its stored outcome is asked (decide.lua): UNDECIDED where none, nothing changes;
-- never in a fresh call (the highest flag: decide.lua tests it with >=)
local FLAG_STORED = 16
--
-- Lines, as the route functions take them: flat {sku index, qty, sku index, qty, ...}.
-- `stock`: per SKU index its stock table (read_stock); `floors`: per location the units this
-- order may not take there (safety stock, for online channels); `locs`: location ids by index.
-- A split is a list of allocations {sku = index, loc = location, q = units, rank = the rank
-- of loc among the candidates, seq = the order they were chosen in}, in route order: by rank,
-- then by seq.

local byte = string.byte

-- The customer id (the spec's last bytes).
local function spec_customer(blob)
  local l1, l2 = byte(blob, SPEC_CUSTOMER, SPEC_CUSTOMER + 1)
  return string.sub(blob, #blob - l1 - 256 * l2 + 1)
end

-- The byte before the customer id: where the ranking ends.
local function ranking_end(blob)
  local l1, l2 = byte(blob, SPEC_CUSTOMER, SPEC_CUSTOMER + 1)
  return #blob - l1 - 256 * l2
end

-- paid_at in epoch ms (its low 6 bytes: the next 8,000 years)
local function spec_paid(blob)
  local t1, t2, t3, t4, t5, t6 = byte(blob, SPEC_PAID, SPEC_PAID + 5)
  return t1 + 256 * (t2 + 256 * (t3 + 256 * (t4 + 256 * (t5 + 256 * t6))))
end

-- The spec of an order, read: its lines (nil when one of their SKUs is not in `exists`),
-- whether any of their SKUs is in `ruled`, its pickup location index (0: ship), its channel
-- index, and its flags: VIP, may take safety stock, short instead of sold_out, pending.
-- (One call per order, on the hot path: the header's fields, SPEC_PICKUP to SPEC_FLAGS, are
-- read in one go.)
local function read_spec(blob, exists, ruled)
  local p1, p2, n1, n2, c1, c2, f = byte(blob, SPEC_PICKUP, SPEC_FLAGS)
  local lines, any = {}, false
  for j = 1, n1 + 256 * n2 do
    local at = SPEC_HEAD + LINE_BYTES * (j - 1)
    local s1, s2, q1, q2, q3, q4 = byte(blob, at + 1, at + LINE_BYTES)
    local s = s1 + 256 * s2
    if not exists[s] then return nil end
    any = any or ruled[s]
    lines[2 * j - 1] = s
    lines[2 * j] = q1 + 256 * (q2 + 256 * (q3 + 256 * q4))
  end
  return lines, any, p1 + 256 * p2, c1 + 256 * c2, f % (2 * FLAG_VIP) >= FLAG_VIP,
    f % (2 * FLAG_SAFETY) >= FLAG_SAFETY, f % (2 * FLAG_SHORT) >= FLAG_SHORT,
    f % (2 * FLAG_PENDING) >= FLAG_PENDING
end

-- The byte of the spec where the ranking of an order of nl lines starts.
local function ranking_at(nl) return SPEC_HEAD + 1 + LINE_BYTES * nl end

-- A spec that fits a call of nskus SKUs, nlocs locations, nchans channels: its home SKU
-- index; else nil and what is malformed ('order' or 'line').
local function spec_home(blob, nskus, nlocs, nchans)
  local h1, h2, p1, p2, n1, n2, c1, c2, _, l1, l2 = byte(blob, SPEC_HOME, SPEC_CUSTOMER + 1)
  if #blob < SPEC_HEAD then return nil, 'order' end
  local home, pickup, nl, ch = h1 + 256 * h2, p1 + 256 * p2, n1 + 256 * n2, c1 + 256 * c2
  local rest = #blob - l1 - 256 * l2 - ranking_at(nl) + 1
  if home < 1 or home > nskus or pickup > nlocs or nl < 1 or rest < 0 or rest % RANK_BYTES ~= 0
     or ch < 1 or ch > nchans then
    return nil, 'order'
  end
  for at = SPEC_HEAD + 1, SPEC_HEAD + LINE_BYTES * nl, LINE_BYTES do
    local s1, s2, q1, q2, q3, q4 = byte(blob, at, at + LINE_BYTES - 1)
    local s = s1 + 256 * s2
    if s < 1 or s > nskus or q1 + q2 + q3 + q4 == 0 then return nil, 'line' end
  end
  return home
end

-- Does `loc` hold every line (above its floor)?
local function holds_all(stock, loc, lines, floors)
  local floor = floors[loc] or 0
  for i = 1, #lines, 2 do
    if (stock[lines[i]][loc] or 0) - floor < lines[i + 1] then return false end
  end
  return true
end

-- An order of one line, shipped (the common case, without the general machinery): the
-- nearest location of its ranking (ending at byte `last`) that holds q units of the SKU
-- whose stock table is st.
local function nearest_holding(blob, last, locs, st, floors, q)
  for pos = SPEC_HEAD + 1 + LINE_BYTES, last - 1, RANK_BYTES do -- (ranking_at(1))
    local lo, hi = byte(blob, pos, pos + 1)
    local loc = locs[lo + 256 * hi + 1]
    if loc and (st[loc] or 0) - (floors[loc] or 0) >= q then return loc end
  end
  return nil
end

-- The nearest location of the ranking that holds every line; else nil and the ranking's
-- locations (the candidates of a split), nearest first.
local function nearest_whole(blob, at, locs, stock, lines, floors)
  local cands = {}
  for pos = at, ranking_end(blob) - 1, RANK_BYTES do
    local lo, hi = byte(blob, pos, pos + 1)
    local loc = locs[lo + 256 * hi + 1]
    if loc then
      if holds_all(stock, loc, lines, floors) then return loc end
      cands[#cands + 1] = loc
    end
  end
  return nil, cands
end

local function in_route_order(allocs)
  table.sort(allocs, function(a, b)
    if a.rank ~= b.rank then return a.rank < b.rank end
    return a.seq < b.seq
  end)
  return allocs
end

-- No single location holds every line: split, each line nearest first. Nil when the
-- candidates cannot serve the order.
local function split_nearest(stock, lines, cands, floors)
  local allocs = {}
  for i = 1, #lines, 2 do
    local s, need = lines[i], lines[i + 1]
    for r = 1, #cands do
      local have = (stock[s][cands[r]] or 0) - (floors[cands[r]] or 0)
      if have > 0 then
        local q = math.min(have, need)
        allocs[#allocs + 1] = { sku = s, loc = cands[r], q = q, rank = r, seq = #allocs }
        need = need - q
        if need == 0 then break end
      end
    end
    if need > 0 then return nil end
  end
  return in_route_order(allocs)
end

-- The candidate (its rank) that can ship the most of what is still `need`ed per line (ties:
-- the better ranked), none `used` yet; nil when none can ship any.
local function best_candidate(stock, lines, cands, floors, need, used)
  local best, best_units = nil, 0
  for r = 1, #cands do
    local loc = cands[r]
    if not used[loc] then
      local units = 0
      for i = 1, #lines, 2 do
        local have = (stock[lines[i]][loc] or 0) - (floors[loc] or 0)
        if have > 0 then units = units + math.min(have, need[i]) end
      end
      if units > best_units then best, best_units = r, units end
    end
  end
  return best
end

-- Fewest shipments (greedy): again and again the location that can ship the most of what is
-- still missing (ties: the better ranked), all it can, until nothing is missing. Nil when the
-- candidates cannot serve the order.
local function split_fewest(stock, lines, cands, floors)
  local need, left, allocs, used = {}, 0, {}, {}
  for i = 1, #lines, 2 do
    need[i] = lines[i + 1]
    left = left + lines[i + 1]
  end
  while left > 0 do
    local best = best_candidate(stock, lines, cands, floors, need, used)
    if not best then return nil end
    local loc = cands[best]
    used[loc] = true
    for i = 1, #lines, 2 do
      local have = (stock[lines[i]][loc] or 0) - (floors[loc] or 0)
      local q = math.min(math.max(have, 0), need[i])
      if q > 0 then
        allocs[#allocs + 1] = { sku = lines[i], loc = loc, q = q, rank = best, seq = #allocs }
        need[i] = need[i] - q
        left = left - q
      end
    end
  end
  return in_route_order(allocs)
end

-- The route of an order of `lines`, at the pickup store `pickup` (a location index, 0 = ship)
-- or along the ranking of its spec `blob`: a location that ships every line; else nil and a
-- split (split_fewest when `fewest`, else split_nearest; never for a pickup); nil, nil when
-- the stock falls short. (decide.lua tries nearest_holding first for a shipped order of one
-- line.)
local function route(stock, locs, blob, pickup, lines, floors, fewest)
  if pickup > 0 then
    local loc = locs[pickup]
    if holds_all(stock, loc, lines, floors) then return loc end
    return nil, nil
  end
  local loc, cands = nearest_whole(blob, ranking_at(#lines / 2), locs, stock, lines, floors)
  if loc then return loc end
  if fewest then return nil, split_fewest(stock, lines, cands, floors) end
  return nil, split_nearest(stock, lines, cands, floors)
end
