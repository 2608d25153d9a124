"""Refusals on a read: orders the scripts would refuse, refused on a batch's first read.

Most orders of a Double-Eleven burst come after their SKU sold out. The decider reads the
stock of the SKUs ``decide.lua`` last answered sold_out for (the suspects) in the batch's
first round trip and refuses here, without a Lua call, the orders the scripts would refuse
(a refusal writes nothing, so the read is the decision). ``Decider.process`` decides when a
batch may be refused so (wholly after the shard's decide mark, under an unchanged catalog).

A hot SKU split into buckets is read whole (``state.buckets.Buckets.snapshot``: every
bucket at one moment, no transfer in flight) and judged by what its buckets hold together:
what an order could get once its bucket borrowed everything the others may lend is at most
that, so an order it cannot cover is one the scripts would refuse after borrowing.
"""

from __future__ import annotations

from typing import NamedTuple

from msgspec.structs import replace

from onestock.domain import events
from onestock.domain.records import rejected
from onestock.domain.types import Line, Order
from state.keys import BUCKET
from state.store import Alone, Lock

SOLD_OUT, NO_PICKUP = rejected("sold_out"), rejected("pickup_unavailable")
VIP_ONLY, LIMIT = rejected("vip_only"), rejected("limit_exceeded")


class Left(NamedTuple):
    """A SKU read for refusals: its units for a store channel's order, for an online
    channel's (the safety stock left out), and what its stock hash says (``read.levels``:
    units per location, what a store channel's pickup there may take); ``online_at``: per
    location what an online channel's pickup there may take."""

    units: int
    online: int
    read: Alone
    online_at: dict[str, int]


def locked_out(locks: list[Lock], channel: str, paid_ms: int, qty: int, units: int) -> bool:
    """Whether the other channels' locks keep ``qty`` of a SKU's ``units`` from ``channel``
    at ``paid_ms``, as lib_stock.lua's ``lock_take`` judges (with fewer units than qty the
    locks are not the reason)."""
    others = sum(lk.left(paid_ms) for lk in locks if lk.channel != channel)
    return units - others < qty <= units


class Refusals:
    """The suspects of one decider, and the refusals judged on a batch's read."""

    def __init__(self) -> None:
        # SKUs decide.lua last answered sold_out for: the next batch reads their stock first
        self.suspects: set[str] = set()
        # (SKU, store) of pickups the scripts last answered pickup_unavailable: a batch with
        # a pickup of that SKU there reads the SKU first
        self.stores: set[tuple[str, str]] = set()

    def sold_out(self, o: Order) -> None:
        """The scripts answered sold_out for the order: its SKUs become suspects (a hot-SKU
        bucket's internal name stands for its SKU: the order borrowed before it was
        refused)."""
        self.suspects.update(ln.sku.partition(BUCKET)[0] for ln in o.lines)

    def no_pickup(self, o: Order) -> None:
        """The scripts answered pickup_unavailable for the order: its SKUs at its store
        become suspects (``stores``)."""
        store = o.delivery.store or ""
        self.stores.update((ln.sku.partition(BUCKET)[0], store) for ln in o.lines)

    def to_read(
        self,
        firsts: dict[str, tuple[str, events.Decoded]],
        limits: dict[str, int],
        bucketed: frozenset[str] = frozenset(),
    ) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """What the batch reads first: the suspects' stock and that of the other SKUs of the
        batch's orders with a suspect line (every SKU of an order refused on the read is
        read); the (SKU, customer) pairs of those SKUs with a per-customer limit
        (``limits``) whose customer has one order of that SKU in the batch (with two, the
        first may count before the second is judged: decide.lua judges those); and apart,
        those SKUs split into buckets (``bucketed``: read whole, ``pooled``)."""
        suspects, stores = self.suspects, self.stores
        if not suspects and not stores:
            return [], [], []
        wanted = set(suspects)
        orders: dict[tuple[str, str], int] = {}
        Valid = events.Valid
        for _, d in firsts.values():
            if d.__class__ is Valid:
                o = d.order  # type: ignore[union-attr]
                lines = o.lines
                if stores and o.delivery.mode == "pickup":
                    at = o.delivery.store
                    picked = [ln.sku for ln in lines if (ln.sku, at) in stores]
                    if picked and len(lines) == 1:
                        wanted.add(picked[0])
                    elif picked:
                        wanted.update(ln.sku for ln in lines)
                if len(lines) > 1 and any(ln.sku in suspects for ln in lines):
                    wanted.update(ln.sku for ln in lines)
                if limits:
                    for ln in lines:
                        if ln.sku in limits:
                            pair = (ln.sku, o.customer.id)
                            orders[pair] = orders.get(pair, 0) + 1
        pairs = [pair for pair, n in orders.items() if n == 1 and pair[0] in wanted]
        split = wanted & bucketed if bucketed else set()
        return list(wanted - split), pairs, list(split)

    def left(self, read: dict[str, Alone | None], floors: dict[str, int]) -> dict[str, Left]:
        """The SKUs read whose stock can refuse an order (``state.store.read_alone``), with
        their units for store and online channels (``floors``: the safety stock per
        location). A SKU an order can still take a unit of (and no lock) stops being a
        suspect: decide.lua tells again."""
        short: dict[str, Left] = {}
        for sku, got in read.items():
            if got is None:
                continue
            levels = got.levels
            units = sum(u for u in levels.values() if u > 0)
            at = {loc: u - floors.get(loc, 0) for loc, u in levels.items()
                  if u > floors.get(loc, 0)}  # fmt: skip
            short[sku] = self._cleared(sku, Left(units, sum(at.values()), got, at))
        return short

    def _cleared(self, sku: str, left: Left) -> Left:
        """A SKU an order can still take a unit of (and no lock) stops being a suspect, and
        so at a store where a pickup can: decide.lua tells again."""
        if left.online and not left.read.locks:  # (a no-op for the other SKUs read)
            self.suspects.discard(sku)
        if self.stores:
            for store in [s for k, s in self.stores if k == sku and left.online_at.get(s)]:
                self.stores.discard((sku, store))
        return left

    def pooled(self, read: dict[str, list[Alone]], floors: dict[str, int]) -> dict[str, Left]:
        """The hot SKUs read whole (per SKU its buckets, bucket 0 first: ``snapshot``) as
        ``left`` gives a SKU: units for a store channel's order (all of them), for an online
        one's (bucket 0 keeps the safety stock ``floors`` when it lends; the other buckets'
        units are anyone's), and bucket 0's rules (a bucketed SKU has no limit or lock: the
        catalog refuses them) with the units per location summed. A SKU an order can still
        take a unit of stops being a suspect."""
        short: dict[str, Left] = {}
        for sku, parts in read.items():
            levels: dict[str, int] = {}
            at: dict[str, int] = {}
            units = 0
            for b, part in enumerate(parts):
                for loc, u in part.levels.items():
                    levels[loc] = levels.get(loc, 0) + u
                    if u > 0:
                        units += u
                        free = u if b else u - floors.get(loc, 0)
                        if free > 0:
                            at[loc] = at.get(loc, 0) + free
            first = parts[0]
            if first.limit is not None or any(p.locks for p in parts):
                continue  # (never loaded so: the scripts judge)
            read_ = Alone(levels, first.vip_until, None, [])
            short[sku] = self._cleared(sku, Left(units, sum(at.values()), read_, at))
        return short

    def whole(
        self,
        orders: list[Order],
        read: dict[str, list[Alone]],
        floors: dict[str, int],
        paid: dict[str, int],
        store_channels: set[str],
    ) -> dict[str, str]:
        """Refusals of hot-SKU orders of one line (renamed to their bucket) that the
        scripts found short after borrowing, judged on a read of their SKU's buckets at one
        moment (``read``: ``Buckets.snapshot``), as ``pooled`` and ``judge`` judge a
        batch's orders; ``paid``: paid_at ms per order id. Their SKUs become suspects."""
        short = self.pooled(read, floors) if read else {}
        out: dict[str, str] = {}
        for o in orders:
            sku = o.lines[0].sku.partition(BUCKET)[0]
            if len(o.lines) != 1 or sku not in short:
                continue
            plain = replace(o, lines=[replace(o.lines[0], sku=sku)])
            reason = self.judge(plain, paid[o.order_id], short, {}, store_channels)
            if reason == SOLD_OUT:
                self.sold_out(o)
            elif reason == NO_PICKUP:
                self.no_pickup(o)
            else:
                continue  # (a rule would have answered before "short")
            out[o.order_id] = reason
        return out

    @staticmethod
    def judge(
        o: Order,
        paid_ms: int,
        short: dict[str, Left],
        bought: dict[tuple[str, str], int],
        store_channels: set[str],
    ) -> str | None:
        """The refusal decide.lua (or the cross-slot path) would give the order, or None: the
        order goes to the scripts. ``short``: the SKUs read (``left``; every SKU of the
        order must be one); ``bought``: units sold so far per (SKU, customer), read for
        customers with one order of the SKU in the batch. Judged as the scripts judge, in
        their order: vip_only, limit_exceeded, a channel lock (sold_out), then a line of
        more units than its SKU has left for the order (an online channel's order cannot
        take the safety stock): sold_out, or pickup_unavailable for a pickup. What the
        batch's earlier orders do cannot change these answers (they only take units: each
        channel's units outside the other channels' locks only fall), except a customer's
        count (hence one order per customer) and a pickup's reason (a lock's sold_out, or
        pickup_unavailable once the units fall below the line: decided by the script).
        A hot SKU split into buckets is in ``short`` only as read whole (``pooled``)."""
        lines = o.lines
        online = o.channel not in store_channels
        store = o.delivery.store if o.delivery.mode == "pickup" else None
        pickup = store is not None
        if len(lines) == 1:  # (the usual order, without the loops)
            left = short.get(lines[0].sku)
            if left is None:
                return None
            lacking = _has(left, online, store) < lines[0].qty
            if not lacking and (pickup or not left.read.locks):
                return None
        else:
            basket = _lacking(lines, short, online, store)
            if basket is None:
                return None
            lacking = basket
        for ln in lines:
            until = short[ln.sku].read.vip_until
            if until is not None and not o.customer.vip and paid_ms < until:
                return VIP_ONLY
        for ln in lines:
            limit = short[ln.sku].read.limit
            if limit is not None:
                n = bought.get((ln.sku, o.customer.id))
                if n is None:  # not read: another order of the batch may count first
                    return None
                if n + ln.qty > limit:
                    return LIMIT
        if lacking and not pickup:
            return SOLD_OUT  # (a lock could only say sold_out too)
        return _by_stock(o, paid_ms, short, pickup)


def _has(left: Left, online: bool, store: str | None) -> int:
    """What an order can take of a SKU read (``left``): an online channel's cannot take the
    safety stock; a pickup only what its store holds (lib_route.lua ``holds_all``)."""
    if store is None:
        return left.online if online else left.units
    return left.online_at.get(store, 0) if online else max(0, left.read.levels.get(store, 0))


def _lacking(
    lines: list[Line],
    short: dict[str, Left],
    online: bool,
    store: str | None,
) -> bool | None:
    """For an order of several lines: whether a line has more units than its SKU has left
    for the order (``_has``); None when the scripts tell (a SKU not read, or no line
    lacking and no lock to judge)."""
    if not all(ln.sku in short for ln in lines):
        return None
    lacking = any(_has(short[ln.sku], online, store) < ln.qty for ln in lines)
    if not lacking and (store is not None or not any(short[ln.sku].read.locks for ln in lines)):
        return None
    return lacking


def _by_stock(o: Order, paid_ms: int, short: dict[str, Left], pickup: bool) -> str | None:
    """The rest of ``Refusals.judge`` once the rules let the order through (a shipment
    lacking units is sold_out before): a pickup lacks units (pickup_unavailable, unless a
    lock judged first may say sold_out: the script tells), or a channel lock keeps a
    shipment's units from its channel (sold_out)."""
    lines = o.lines
    if pickup:  # (lacking) a lock judged before the stock may say sold_out
        for ln in lines:
            left = short[ln.sku]
            if left.read.locks and left.units >= ln.qty:
                return None
        return NO_PICKUP
    for ln in lines:
        left = short[ln.sku]
        locks = left.read.locks
        if locks and locked_out(locks, o.channel, paid_ms, ln.qty, left.units):
            return SOLD_OUT
    return None
