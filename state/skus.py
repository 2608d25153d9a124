"""The SKU keys (a part of ``state.store.Store``): per SKU, in its own hash slot
(``keys.sku_tag``), its stock hash with its rules, its decision hash, its parts of orders
that span slots, its counters of units sold per customer, its alerts stream and its
campaigns' candidates and progress.

Reads of stock, locks and counts for planning, and the scripts that change them: each
script's call takes domain values (orders, rankings, allocations) and packs its KEYS and
ARGV itself, right beside the call; the layout is documented once, in the header comment of
``state/lua/<script>.lua``. Every script touches the SKUs of one slot: a batch's calls, one
per slot, go in one round trip (``state.wire``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, NamedTuple

from redis.commands.core import Script

from onestock.domain.routing import Allocation
from onestock.domain.types import Campaign, Order, Sku
from state import keys, wire
from state.buckets import Buckets
from state.conn import Redis, lua
from state.gens import Gen, newer_first
from state.stock import Lock, bought_counts, bought_reads, fields, stock_of

Stock = dict[str, tuple[dict[str, int], list[Lock]]]  # per SKU: units per location, locks


class DecideArgs(NamedTuple):
    """What a batch's decide.lua calls take besides their orders: the catalog's side of
    every call, and per order its ranking, paid_at and flags (decide.lua's header)."""

    locations: list[str]  # every location id, in the router's order (a ranking's indices)
    loc_index: dict[str, int]  # location id -> its 1-based index (a pickup's store)
    safety: list[int]  # per location: units online channels cannot take there
    fewest: int  # 1: split an order over as few locations as possible, else nearest first
    store_channels: set[str]  # channels of kind "store" (they may take safety stock)
    version: int  # the catalog version the orders are judged by
    ranked: dict[str, bytes]  # order id -> its ranking (u16 location indices, nearest first)
    paid: dict[str, int]  # order id -> paid_at, epoch ms
    spread: set[str]  # orders decided in a hot SKU's bucket other than 0 (it holds no safety
    # stock: they may take any unit there)
    retry: set[str]  # orders whose hot-SKU bucket may borrow: BUCKET_SHORT, not sold_out
    pending: Collection[str] = frozenset()  # orders whose payment is pending
    # no order of the calls was ever decided (decide.lua reads no stored outcome): only the
    # decider says so, of a batch wholly after its shard's decide mark (Decider._prelude)
    fresh: bool = False
    # on a single server, the journal of the batch's shard (keys.journal): fresh calls write
    # their outcomes there, every call reads it (a fresh one needs it)
    journal: str | None = None
    # orders that may have been decided, which the caller's catalog now refuses: only their
    # stored outcome is asked (FLAG_STORED; UNDECIDED where none); never in a fresh call
    stored: Collection[str] = frozenset()


class Part(NamedTuple):
    """An order's part in one slot (reserve_parts.lua, release_parts.lua; a release needs
    only the order and its SKUs)."""

    order: Order
    skus: list[str]  # the order's SKUs in the slot, smallest first: the first keeps the part
    paid_ms: int = 0  # paid_at, epoch ms
    store_channel: bool = False  # a store-kind channel's order: it may take safety stock
    allocs: Sequence[Allocation] = ()  # its allocations in the slot (to reserve)


# An order's allocations to give back (undo_units.lua): (order id, its (SKU, location, qty,
# units of the SKU returned as counted in another slot) quadruples, in its outcome's order)
Undo = tuple[str, list[tuple[str, str, int, int]]]
# A line of a return (return_units.lua): SKU, order id, return digest, location, qty, units
# of the SKU the order shipped
ReturnLine = tuple[str, str, str, str, int, int]

# decide.lua's binary spec of an order (its layout: lib_route.lua): home SKU index, pickup
# location index (0 = ship), lines, channel index, flags, paid_at ms; then per line SKU
# index, qty; then the ranking
_HEAD = struct.Struct("<HHHHBHQ")
_LINE = struct.Struct("<HI")
_HEAD_LINE = struct.Struct("<HHHHBHQHI")  # a one-line order's head and line
# the flags beside bit 0 (FLAG_VIP: a VIP, the customer's bool): FLAG_SAFETY may take safety
# stock, FLAG_SHORT answers BUCKET_SHORT instead of sold_out, FLAG_PENDING: not a first-N
# candidate (yet), FLAG_STORED: only its stored outcome is asked
_SAFETY, _SHORT, _PENDING, _STORED = 2, 4, 8, 16


class Skus:
    def __init__(
        self,
        client: Redis,
        buckets: Buckets,
        touched: set[str] | None = None,
        gen: Gen | None = None,
        slot: Callable[[str], int] = keys.sku_slot,
    ) -> None:
        self.slot = slot  # the group of script calls a SKU belongs to (``Store.slot``)
        self.gen = gen or Gen()  # the generation this process writes decisions in now
        # the catalog SKUs whose stock a script of this process may have changed, for the
        # availability feed (``Store.touched``)
        self.touched: set[str] = touched if touched is not None else set()
        self.r = client
        self.buckets = buckets
        self._decide = client.register_script(lua("decide", "lib_stock", "lib_route"))
        self._reserve_parts = client.register_script(lua("reserve_parts", "lib_stock"))
        self._release_parts = client.register_script(lua("release_parts", "lib_stock"))
        self._set_stock = client.register_script(lua("set_stock", "lib_stock"))
        self._undo_units = client.register_script(lua("undo_units", "lib_stock"))
        self._return_units = client.register_script(lua("return_units", "lib_stock"))

    # -- reads -----------------------------------------------------------------------------

    def stock_levels(
        self, skus: Iterable[str], buckets: dict[str, int] | None = None
    ) -> dict[str, dict[str, int]]:
        """Units per location for each SKU that exists in Redis (``buckets``: see
        ``stock_state``)."""
        return {sku: levels for sku, (levels, _) in self.stock_state(skus, buckets).items()}

    def stock_state(self, skus: Iterable[str], buckets: dict[str, int] | None = None) -> Stock:
        """Per SKU that exists in Redis: units per location, and its channel locks. A SKU
        split into ``buckets[sku]`` buckets counts them all and the units in flight between
        them (the one-inventory view); without ``buckets``, the SKU's own hash (bucket 0)."""
        names = list(skus)
        pooled = {sku: n for sku, n in (buckets or {}).items() if n > 1 and sku in names}
        extra = [keys.bucket(sku, b) for sku, n in pooled.items() for b in range(1, n)]
        state = self.plan_state(names + extra, [])[0]
        for sku, n in pooled.items():
            if sku in state:
                state[sku] = (self.buckets.pool(sku, n, state), state[sku][1])
        return state

    def bought(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Units of each (SKU, customer) sold so far (per-customer limits)."""
        return self.plan_state([], pairs)[1]

    def plan_state(self, skus: list[str], pairs: list[tuple[str, str]]) -> tuple[Stock, list[int]]:
        """What planning an order needs, in one round trip: ``stock_state`` of the SKUs and
        ``bought`` of the (SKU, customer) pairs."""
        reads, groups = bought_reads(pairs, self.gen)
        replies = wire.reads(self.r, [("HGETALL", keys.stock(sku)) for sku in skus] + reads)
        state: Stock = {}
        for sku, got in zip(skus, replies, strict=False):
            if got:
                state[sku] = stock_of(fields(got))
        counts = bought_counts(groups, replies[len(skus) :], len(pairs))
        return state, counts

    def read_parts(self, wanted: list[tuple[str, str]]) -> list[bytes | None]:
        """The stored part of each (order id, home SKU), None where nothing is reserved."""
        by_home: dict[str, list[int]] = {}
        for i, (_, home) in enumerate(wanted):
            by_home.setdefault(home, []).append(i)
        reads = [
            ("HMGET", keys.parts(home, g), *(wanted[i][0] for i in idx))
            for home, idx in by_home.items()
            for g in self.gen.read()
        ]
        replies = wire.reads(self.r, reads)
        out: list[bytes | None] = [None] * len(wanted)
        for k, idx in enumerate(by_home.values()):
            got = newer_first(*replies[3 * k : 3 * k + 3])
            for i, value in zip(idx, got, strict=True):
                out[i] = value
        return out

    def decided_in(self, wanted: list[tuple[str, list[str]]]) -> list[int | None]:
        """Per (order id, SKU names): the index of the first SKU whose decision hash (in the
        three generations) stores an outcome of the order, None where none does; one round
        trip."""
        reads = [("HMGET", keys.decisions(name, g), oid)
                 for oid, names in wanted for name in names for g in self.gen.read()]  # fmt: skip
        got = [r[0] is not None for r in wire.reads(self.r, reads)]
        out: list[int | None] = []
        at = 0
        for _, names in wanted:
            held = [any(got[at + 3 * i : at + 3 * i + 3]) for i in range(len(names))]
            at += 3 * len(names)
            out.append(held.index(True) if True in held else None)
        return out

    def returned(self, wanted: list[tuple[str, str, str]]) -> list[list[bytes | None]]:
        """Per (SKU, order id, return digest), one round trip: the units of the SKU returned
        for the order so far (``keys.DEC_RETURNED``) and whether that return was applied to
        the SKU (``keys.DEC_RETURN``), as stored in the SKU's decision hash (None: not set)."""
        pipe = self.r.pipeline(transaction=False)
        for sku, oid, digest in wanted:
            for g in self.gen.read():
                fields = [keys.DEC_RETURNED + oid, keys.DEC_RETURN + digest]
                pipe.hmget(keys.decisions(sku, g), fields)
        got = pipe.execute()
        out: list[list[bytes | None]] = []
        for k in range(len(wanted)):
            trio = got[3 * k : 3 * k + 3]  # (counted in the three generations)
            units = [n for n, _ in trio if n is not None]
            applied = next((d for _, d in trio if d is not None), None)
            out.append([str(sum(int(n) for n in units)).encode() if units else None, applied])
        return out

    # -- decisions -------------------------------------------------------------------------

    def decide(self, calls: list[list[Order]], args: DecideArgs) -> list[list[bytes]]:
        """One atomic decide.lua call per list of orders (the SKUs of each list lie in one
        slot), all in one round trip: per call, per order its outcome."""
        if args.fresh and (args.journal is None or args.stored):
            raise ValueError("a fresh decide.lua call needs its shard's journal, no FLAG_STORED")
        calls_args = [_decide_args(o, args) for o in calls]
        return self._per_slot(self._decide, keys.decisions, calls_args, args.journal)

    def reserve_parts(
        self, slots: list[list[Part]], floors: dict[str, int], version: int
    ) -> list[list[int]]:
        """Each slot's parts of many cross-slot orders (one call per slot, one round trip),
        planned with ``floors`` (safety stock per location) under catalog ``version``: per
        order 1 reserved now, 2 reserved before, 0 not enough stock (reserve_parts.lua)."""
        if not slots:
            return []
        calls = [_parts_args(parts, (floors, version)) for parts in slots]
        return self._per_slot(self._reserve_parts, _parts_key, calls)

    def release_parts(self, slots: list[list[Part]]) -> list[int]:
        """Undo each slot's parts of orders (idempotent; release_parts.lua)."""
        calls = [_parts_args(parts, None) for parts in slots]
        for _, args in calls:
            args.append("all")
        return self._per_slot(self._release_parts, _parts_key, calls)

    def unrule_parts(self, oid: str, skus: set[str]) -> None:
        """An order of ``skus`` reserved whole across slots, rejected after its decision: what
        its parts took of the rules (counts against the customer's limits, channel lock
        draws) goes back, and its candidacy; its units go back through ``undo_units``
        (release_parts.lua 'rules'; idempotent). Nothing for an order of one slot."""
        slots: dict[int, list[str]] = {}
        for sku in sorted(skus):
            slots.setdefault(self.slot(sku), []).append(sku)
        if len(slots) < 2:
            return
        calls = [(names, [len(names), *names, 1, oid, 1, "rules"]) for names in slots.values()]
        self._per_slot(self._release_parts, _parts_key, calls)

    # -- cancellations and returns ---------------------------------------------------------

    def undo_units(
        self, orders: list[Undo], void: frozenset[str] = frozenset()
    ) -> list[tuple[str, list[str], list[Any]]]:
        """Give cancelled orders' units back: undo_units.lua, one call per slot, all in one
        round trip; the orders in ``void`` were rejected after their decision: what it took
        of the rules goes back too. Per order and slot: (order id, its SKUs there in order of
        first appearance, the script's answer)."""
        by_slot: dict[int, list[Undo]] = {}
        for oid, part in orders:
            per_slot: dict[int, list[tuple[str, str, int, int]]] = {}
            for q in part:
                per_slot.setdefault(self.slot(q[0]), []).append(q)
            for slot, quads in per_slot.items():
                by_slot.setdefault(slot, []).append((oid, quads))
        if not by_slot:
            return []
        calls = [_undo_args(batch, void) for batch in by_slot.values()]
        got = self._per_slot(self._undo_units, keys.decisions, calls)
        out = []
        for batch, res in zip(by_slot.values(), got, strict=True):
            for (oid, quads), r in zip(batch, res, strict=True):
                out.append((oid, list(dict.fromkeys(q[0] for q in quads)), r))
        return out

    def return_units(self, slots: list[list[ReturnLine]]) -> list[list[int]]:
        """Restock returned lines, one return_units.lua call per slot (the lines of each list
        lie in one slot): per line 0 applied before, 1 applied now, 2/3/4 refused."""
        if not slots:
            return []
        calls = [_return_args(lines) for lines in slots]
        return self._per_slot(self._return_units, keys.decisions, calls)

    # -- catalog loads ---------------------------------------------------------------------

    def set_stock(self, name: str, levels: dict[str, int], rules: list[Any]) -> None:
        """Replace one SKU's (or bucket's) stock and rules atomically (set_stock.lua);
        ``rules``: ``rule_fields``, and the campaigns' ``campaign_fields``."""
        flat: list[Any] = [f for loc, qty in levels.items() for f in (loc, qty)]
        self._set_stock(keys=[keys.stock(name)], args=flat + rules)

    def set_campaigns(self, sku: str, campaigns: list[Any], version: int) -> None:
        """Write a SKU's campaign definitions (``campaign_fields``) beside its stock, leaving
        the stock as it is; ``version``: the catalog's (``keys.RULES_VERSION``)."""
        mapping = dict(zip(campaigns[::2], campaigns[1::2], strict=True))
        self.r.hset(keys.stock(sku), mapping={**mapping, keys.RULES_VERSION: version})

    # -- helpers ---------------------------------------------------------------------------

    def _per_slot(
        self,
        script: Script,
        second: Callable[[str, int], str],
        calls: list[tuple[list[str], list[Any]]],
        last: str | None = None,
    ) -> list[Any]:
        """Independent one-slot script calls (SKUs, ARGV), pipelined on a single server (each
        stays atomic; a Redis Cluster client runs them one by one, each routed to its slot's
        node). ``last``: a key every call takes after its SKUs' (single server only)."""
        self.touched.update(keys.public(sku) for s, _ in calls for sku in s)
        more = [] if last is None else [last]
        jobs = [(script, sku_keys(s, second, self.gen) + more, a) for s, a in calls]
        return wire.scripts(self.r, jobs)


def sku_keys(skus: list[str], second: Callable[[str, int], str], gen: Gen) -> list[str]:
    """KEYS of decide.lua's layout (lib_stock.lua): per SKU, in order: ``second`` (its
    decisions, or parts) and its units sold per customer of the generation after ``gen``'s,
    the same of the generation before, its stock hash, ``second`` and units sold per
    customer of ``gen``'s, its alerts stream, its campaigns' candidates and progress."""
    now, before = gen.pair()
    ks: list[str] = []
    for sku in skus:
        ks += [second(sku, now + 1), keys.bought(sku, now + 1), second(sku, before),
               keys.bought(sku, before),
               keys.stock(sku), second(sku, now),
               keys.bought(sku, now), keys.alerts(sku), keys.candidates(sku),
               keys.campaigns(sku)]  # fmt: skip
    return ks


def _parts_key(sku: str, gen: int) -> str:
    """A SKU's parts hash in sku_keys' ``second`` place."""
    return keys.parts(sku, gen)


def _decide_args(orders: list[Order], args: DecideArgs) -> tuple[list[str], list[Any]]:
    """(SKUs, ARGV) of one decide.lua call: each order is its id and a binary spec ending
    with its customer id (the layout: decide.lua's header; the spec's: lib_route.lua's)."""
    sku_index: dict[str, int] = {}
    chan_index: dict[str, int] = {}
    body: list[Any] = [len(orders)]
    ranked, paid_of, loc_index = args.ranked, args.paid, args.loc_index
    store_channels, spread, retry = args.store_channels, args.spread, args.retry
    pending, stored = args.pending, args.stored
    for o in orders:
        lines = o.lines
        one = len(lines) == 1
        if one:
            home = sku_index.get(lines[0].sku)
            if home is None:
                home = sku_index[lines[0].sku] = len(sku_index) + 1
        else:
            for ln in lines:
                if ln.sku not in sku_index:
                    sku_index[ln.sku] = len(sku_index) + 1
            # The outcome lives with the order's smallest SKU name: the same key on every
            # replay.
            home = sku_index[min(ln.sku for ln in lines)]
        chan = chan_index.get(o.channel)
        if chan is None:
            chan = chan_index[o.channel] = len(chan_index) + 1
        flags = o.customer.vip | (_SAFETY if o.channel in store_channels else 0)
        if spread and o.order_id in spread:
            flags |= _SAFETY
        if retry and o.order_id in retry:  # a hot SKU's bucket may borrow
            flags |= _SHORT
        if pending and o.order_id in pending:
            flags |= _PENDING
        if stored and o.order_id in stored:  # (its store may be gone from the catalog)
            flags |= _STORED
            pickup, ranking = 0, b""
        elif o.delivery.mode == "pickup":
            pickup = loc_index[o.delivery.store]  # type: ignore[index]
            ranking = b""
        else:
            pickup = 0
            ranking = ranked[o.order_id]
        paid = paid_of[o.order_id]
        # (the customer id always goes, last: the script judges the rules Redis holds, which
        # a catalog loaded since the caller's view may have given a per-customer limit)
        cust = o.customer.id.encode()
        if one:  # (the usual order: its head and line in one pack)
            head = _HEAD_LINE.pack(
                home, pickup, 1, chan, flags, len(cust), paid, home, lines[0].qty
            )
            spec = head + ranking + cust
        else:
            head = _HEAD.pack(home, pickup, len(lines), chan, flags, len(cust), paid)
            spec = b"".join(
                [head, *(_LINE.pack(sku_index[ln.sku], ln.qty) for ln in lines), ranking, cust]
            )
        body += [o.order_id, spec]
    skus = list(sku_index)
    locs, chans = args.locations, list(chan_index)
    header = [len(skus), len(locs), len(chans), args.fewest, int(args.fresh), *skus, *locs,
              *args.safety, *chans]  # fmt: skip
    return skus, [*header, *body, args.version]  # (the version last: decide.lua)


def _parts_args(
    parts: list[Part], reserve: tuple[dict[str, int], int] | None
) -> tuple[list[str], list[Any]]:
    """(SKUs, ARGV) of one slot's reserve_parts.lua call (``reserve``: the safety stock per
    location and the catalog version planned with) or release_parts.lua call (None): the
    SKU table, then per order its id and home SKU, and to reserve the rules' inputs and its
    allocations (the layout: the scripts' headers)."""
    names: dict[str, int] = {}
    for part in parts:
        for sku in part.skus:
            names.setdefault(sku, len(names) + 1)
    args: list[Any] = [len(names), *names]
    if reserve is not None:
        floors, version = reserve
        args.append(len(floors))
        for loc, units in floors.items():
            args += [loc, units]
        args.append(version)
    args.append(len(parts))
    for part in parts:
        o = part.order
        args += [o.order_id, names[part.skus[0]]]
        if reserve is not None:
            args += [o.customer.id, o.channel, int(o.customer.vip), part.paid_ms]
            args += [int(part.store_channel), len(part.allocs)]
            for loc, sku, qty in part.allocs:
                args += [names[sku], loc, qty]
    return list(names), args


def _undo_args(batch: list[Undo], void: frozenset[str]) -> tuple[list[str], list[Any]]:
    """(SKUs, ARGV) of one slot's undo_units.lua call (the layout: its header)."""
    names: dict[str, int] = {}
    for _, quads in batch:
        for sku, *_ in quads:
            names.setdefault(sku, len(names) + 1)
    args: list[Any] = [len(names), *names, len(batch)]
    for oid, quads in batch:
        args += [oid, int(oid in void), len(quads)]
        for sku, loc, qty, returned in quads:
            args += [names[sku], loc, qty, returned]
    return list(names), args


def _return_args(lines: list[ReturnLine]) -> tuple[list[str], list[Any]]:
    """(SKUs, ARGV) of one slot's return_units.lua call (the layout: its header)."""
    names: dict[str, int] = {}
    for sku, *_ in lines:
        names.setdefault(sku, len(names) + 1)
    args: list[Any] = [len(names), *names, len(lines)]
    for sku, oid, digest, loc, qty, shipped in lines:
        args += [names[sku], oid, digest, loc, qty, shipped]
    return list(names), args


def rule_fields(sku: Sku, version: int) -> list[Any]:
    """The SKU's rules as the NUL-prefixed fields beside its stock, for ``set_stock``
    (``version``: the catalog's, ``keys.RULES_VERSION``)."""
    flat: list[Any] = [keys.RULES_VERSION, version]
    if sku.per_customer_limit is not None:
        flat += [keys.RULE_LIMIT, sku.per_customer_limit]
    if sku.low_stock_threshold is not None:
        flat += [keys.RULE_LOW, sku.low_stock_threshold]
    if sku.vip_presale_until is not None:
        flat += [keys.RULE_VIP_UNTIL, int(sku.vip_presale_until.timestamp() * 1000)]
    for lock in sku.channel_locks:
        flat += [keys.lock_qty(lock.channel), lock.qty]
        flat += [keys.lock_until(lock.channel), int(lock.until.timestamp() * 1000)]
    return flat


def campaign_fields(campaigns: list[Campaign]) -> dict[str, list[Any]]:
    """Per campaign SKU, its campaigns' definitions as the NUL-prefixed fields beside its
    stock (``keys.CAMPAIGN``: first_n, ``keys.CAMPAIGN_LATENESS``: lateness_ms)."""
    out: dict[str, list[Any]] = {}
    for c in campaigns:
        out.setdefault(c.sku, []).extend(
            [keys.CAMPAIGN + c.id, c.first_n, keys.CAMPAIGN_LATENESS + c.id, c.lateness_ms]
        )
    return out
