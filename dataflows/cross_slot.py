"""Orders whose SKUs live in different hash slots: reserved slot by slot, compensated on failure.

The same code serves one Redis server and a Redis Cluster, since no script touches two slots.
For a batch of such orders:

1. read what an earlier, crashed attempt left: an order whose every slot holds its part was
   reserved whole (its stored outcome stands); a partly reserved one is released;
2. plan each order against one read of the stock, the channel locks and the customers'
   counts (planning updates a local copy, so orders of the batch do not plan on the same
   units); an order the rules will reject, as far as that read tells, is only judged;
3. reserve each slot's parts of all orders in one script call per slot;
4. release the parts of orders that failed in some slot (someone took the units since the
   read) and plan those again against a fresh read. Each round settles at least the orders
   before the first one whose plan did not hold; a failure means another worker consumed
   stock, so the loop converges. It is bounded all the same (rounds in a row that settle
   nothing: the rest is sold out).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from onestock.domain.protocol import SEP, Code, ProtocolError
from onestock.domain.records import rejected
from onestock.domain.routing import Allocation, plan
from onestock.domain.types import Order
from state import keys
from state.skus import Part
from state.store import Store

MAX_STALLED = 20  # rounds in a row that settle no order
# reserve_parts.lua's answer per order (state/lua/reserve_parts.lua): reserved now, or by an
# earlier call; else nothing changed for it: too few units, vip_only, limit_exceeded,
# sold_out for its channel (other channels' locks hold the units), or STALE: the slot's
# rules are newer than the caller's catalog (every order of the call answers so)
NO_UNITS, RESERVED, RESERVED_BEFORE, RULE_VIP_ONLY, RULE_LIMIT, RULE_LOCKED, STALE = range(7)
_RESERVED = frozenset({RESERVED, RESERVED_BEFORE})
_NOT_RESERVED = frozenset({NO_UNITS, RULE_VIP_ONLY, RULE_LIMIT, RULE_LOCKED, STALE})


class StaleCatalog(Exception):
    """A script found rules newer than the catalog the decider judged by: nothing of the
    call changed; the decider refreshes its catalog and decides the batch again."""


class Rules(NamedTuple):
    """What the catalog says beyond stock, as the cross-slot path needs it."""

    ruled: set[str]  # SKUs with a per-customer limit, VIP pre-sale or channel locks
    limits: dict[str, int]  # per-customer limit per SKU
    presale: dict[str, int]  # VIP pre-sale end per SKU, epoch ms
    floors: dict[str, int]  # safety stock per location: units online channels cannot take
    store_channels: set[str]  # channels of kind "store" (they may take safety stock)
    fewest: bool  # split over as few locations as possible (else nearest first)
    bucketed: frozenset[str] = frozenset()  # hot SKUs split into buckets (dataflows.buckets)
    version: int = 0  # the catalog version these rules are of


@functools.lru_cache(maxsize=4096)
def _slots_of(skus: tuple[str, ...]) -> dict[int, list[str]]:
    """Slot -> the SKUs there, smallest first (the first keeps the part record). Orders of
    the same SKUs share the answer: read only."""
    slots: dict[int, list[str]] = defaultdict(list)
    for sku in skus:
        slots[keys.sku_slot(sku)].append(sku)
    return {slot: sorted(names) for slot, names in slots.items()}


class _Item:
    __slots__ = ("order", "ranking", "skus", "slots", "store_channel", "paid_ms", "ruled")

    def __init__(self, order: Order, ranking: list[str], rules: Rules, paid: int) -> None:
        self.order = order
        self.ranking = ranking
        self.store_channel = order.channel in rules.store_channels
        self.paid_ms = paid  # paid_at in epoch ms
        self.skus = skus = tuple([ln.sku for ln in order.lines])
        self.slots = _slots_of(skus)
        # a line's SKU has a rule in the catalog (per-customer limit, VIP pre-sale, channel
        # locks); the locks Redis holds are checked again each round, with the stock
        self.ruled = bool(rules.ruled) and not rules.ruled.isdisjoint(skus)


def accepted(allocs: list[Allocation]) -> str:
    return SEP.join([Code.ACCEPTED, *(f"{loc}{SEP}{sku}{SEP}{qty}" for loc, sku, qty in allocs)])


# (order, slot, allocations in that slot or None to release)
_Entry = tuple[_Item, int, list[Allocation] | None]


def _parts(batch: Sequence[_Entry]) -> list[Part]:
    """A slot's entries as ``state.skus`` reserves (with their allocations) or releases
    them: each order's SKUs in the slot, smallest first (the first keeps the part)."""
    return [Part(it.order, it.slots[slot], it.paid_ms, it.store_channel, allocs or ())
            for it, slot, allocs in batch]  # fmt: skip


def _stored_allocations(part: bytes) -> list[Allocation]:
    """A stored part: customer, channel, then (location, sku, qty, counted, locked)."""
    f = part.decode().split(SEP)
    return [(f[i], f[i + 1], int(f[i + 2])) for i in range(2, len(f), 5)]


def _release(store: Store, call: Callable[..., Any], items: list[_Item]) -> None:
    by_slot: dict[int, list[_Entry]] = defaultdict(list)
    for item in items:
        for slot in item.slots:
            by_slot[slot].append((item, slot, None))
    if by_slot:
        call(store.skus.release_parts, [_parts(batch) for batch in by_slot.values()])


def decide_cross(
    store: Store,
    call: Callable[..., Any],
    orders: list[Order],
    rankings: list[list[str]],
    outcome: dict[str, str],
    rules: Rules,
    retry: set[str] | None = None,
    *,
    paid: dict[str, int],
    refused: dict[str, str] | None = None,
) -> None:
    """Decide cross-slot orders into ``outcome``; ``call`` wraps Redis calls (retry on outage);
    ``paid``: paid_at in epoch ms per order id (parsed once, at decode). ``refused``: orders
    that may have been decided, which the caller's catalog refuses, with the reason: one
    reserved whole keeps its stored outcome, any other gets the reason (its parts released).
    An order in ``retry`` that only a hot SKU's bucket is short for gets BUCKET_SHORT (decided again
    once the bucket borrowed; ``dataflows.buckets``) instead of being rejected."""
    items = [_Item(o, r, rules, paid[o.order_id]) for o, r in zip(orders, rankings, strict=True)]
    wanted = [(it.order.order_id, skus[0]) for it in items for skus in it.slots.values()]
    found = call(store.skus.read_parts, wanted)
    pending, partial = [], []
    at = 0
    for it in items:
        n = len(it.slots)
        parts = found[at : at + n]
        at += n
        if None not in parts:
            rank = {loc: i for i, loc in enumerate(it.ranking)}
            allocs = [a for p in parts for a in _stored_allocations(p)]  # type: ignore[arg-type]
            outcome[it.order.order_id] = accepted(sorted(allocs, key=lambda a: rank.get(a[0], 0)))
            continue
        if parts.count(None) < n:
            partial.append(it)
        if refused and it.order.order_id in refused:
            outcome[it.order.order_id] = refused[it.order.order_id]
        else:
            pending.append(it)
    if partial:
        _release(store, call, partial)
    stalled = 0
    while pending and stalled < MAX_STALLED:
        left = _attempt(store, call, pending, outcome, rules, retry)
        stalled = stalled + 1 if len(left) == len(pending) else 0
        pending = left
    for it in pending:
        outcome[it.order.order_id] = rejected("sold_out")


def _judge(
    it: _Item,
    rules: Rules,
    units: dict[str, int],
    locks: dict[str, dict[str, list[int]]],
    counts: dict[tuple[str, str], int],
) -> str | None:
    """The reason a rule rejects the order for on this read, if any: the rules as the
    scripts judge them (VIP pre-sale, per-customer limit, channel locks, in this order).
    ``units``: each SKU's units over all locations, as planning has left them."""
    o = it.order
    for ln in o.lines:
        end = rules.presale.get(ln.sku)
        if end is not None and not o.customer.vip and it.paid_ms < end:
            return "vip_only"
    for ln in o.lines:
        cap = rules.limits.get(ln.sku)
        if cap is not None and counts.get((ln.sku, o.customer.id), 0) + ln.qty > cap:
            return "limit_exceeded"
    for ln in o.lines:
        held = locks.get(ln.sku)
        if held:
            have = units[ln.sku]
            others = sum(
                left for ch, (left, until) in held.items() if ch != o.channel and it.paid_ms < until
            )
            if have - others < ln.qty <= have:
                return "sold_out"
    return None


def _take(
    it: _Item,
    rules: Rules,
    allocs: list[Allocation],
    stock: dict[str, dict[str, int]],
    units: dict[str, int],
    locks: dict[str, dict[str, list[int]]],
    counts: dict[tuple[str, str], int],
    judged: bool,
) -> None:
    """Update the local read as the reservation of ``allocs`` will update Redis (the rules'
    counts and locks only for an order ``judged`` against them). Planning takes only units
    a location has, so a SKU's ``units`` (over locations with some) fall by what it takes."""
    o = it.order
    for loc, sku, qty in allocs:
        stock[sku][loc] -= qty
        units[sku] -= qty
    if not judged:
        return
    for ln in o.lines:
        if ln.sku in rules.limits:
            key = (ln.sku, o.customer.id)
            counts[key] = counts.get(key, 0) + ln.qty
        own = locks.get(ln.sku, {}).get(o.channel)
        if own is not None and it.paid_ms < own[1]:
            own[0] -= min(own[0], ln.qty)


class _Read(NamedTuple):
    """One read of the pending orders' SKUs; planning updates it as it plans."""

    stock: dict[str, dict[str, int]]  # per SKU: units per location
    units: dict[str, int]  # per SKU: units over the locations with some
    locks: dict[str, dict[str, list[int]]]  # per locked SKU: channel -> [units left, until ms]
    counts: dict[tuple[str, str], int]  # units sold so far per (SKU with a limit, customer)
    # SKUs without a unit anywhere on this read (planning only takes units, so they stay
    # so): an order of one is refused as planning would, without planning it
    gone: set[str]


class _Plans(NamedTuple):
    """The pending orders planned on one read (``_plan``)."""

    plans: dict[str, list[Allocation]]  # order id -> the allocations to reserve
    refused: dict[str, str]  # order id -> reason, on the read (BUCKET_SHORT: may borrow)
    by_slot: dict[int, list[_Entry]]  # per slot, in arrival order: the parts to reserve


def _attempt(
    store: Store,
    call: Callable[..., Any],
    pending: list[_Item],
    outcome: dict[str, str],
    rules: Rules,
    retry: set[str] | None = None,
) -> list[_Item]:
    """One round: plan and reserve, release what failed; returns the orders to plan again.

    An order the read says a rule (judged first) or the stock rejects is rejected on that read,
    writing nothing, like a sold-out order of the one-slot path; an accepted order's rules are
    judged again by the script that reserves it, atomically with its units."""
    read = _read(store, call, pending, rules)
    planned = _plan(pending, rules, read, outcome, retry)
    # _Plans: allocations or a reason per order, the parts to reserve per slot
    batches = list(planned.by_slot.values())
    parts = [_parts(b) for b in batches]
    results = call(store.skus.reserve_parts, parts, rules.floors, rules.version)
    failed, stale = _failures(batches, results)
    # the orders a slot did not reserve; whether a slot's rules are newer than the read's
    again, undo = _settle(pending, planned, failed, outcome)
    if undo:
        _release(store, call, undo)
    if stale:  # the orders before the first failure stand; the rest wait for the new rules
        raise StaleCatalog
    return again


def _read(store: Store, call: Callable[..., Any], pending: list[_Item], rules: Rules) -> _Read:
    """The stock, channel locks and customers' counts the pending orders plan against."""
    skus = sorted(set().union(*(it.skus for it in pending)))
    limits = rules.limits
    wanted = sorted(
        {(sku, it.order.customer.id) for it in pending for sku in it.skus if sku in limits}
        if limits
        else ()
    )
    state, bought = call(store.skus.plan_state, skus, wanted)
    counts = dict(zip(wanted, bought, strict=True))
    stock = {sku: levels for sku, (levels, _) in state.items()}
    locks = {
        sku: {lk.channel: [max(0, lk.qty - lk.used), lk.until_ms] for lk in held}
        for sku, (_, held) in state.items()
        if held
    }
    units = {sku: sum(u for u in levels.values() if u > 0) for sku, levels in stock.items()}
    gone = {sku for sku, n in units.items() if n == 0}
    return _Read(stock, units, locks, counts, gone)


def _plan(
    pending: list[_Item],
    rules: Rules,
    read: _Read,
    outcome: dict[str, str],
    retry: set[str] | None,
) -> _Plans:
    """Each pending order, in arrival order, judged by the rules (only an order with a
    ruled SKU or a SKU under a channel lock can be refused by them) and planned on the read,
    which its plan then updates (``_take``); an order of an unknown SKU is rejected."""
    plans: dict[str, list[Allocation]] = {}
    refused: dict[str, str] = {}
    by_slot: dict[int, list[_Entry]] = defaultdict(list)
    stock, locks = read.stock, read.locks
    for it in pending:
        o = it.order
        if not stock.keys() >= set(it.skus):
            outcome[o.order_id] = rejected("unknown_sku")
            continue
        judged = it.ruled or (bool(locks) and not locks.keys().isdisjoint(it.skus))
        reason = _judge(it, rules, read.units, locks, read.counts) if judged else None
        res = _plan_order(it, rules, read, retry) if reason is None else reason
        if isinstance(res, str):
            refused[o.order_id] = res
            continue
        plans[o.order_id] = res
        _take(it, rules, res, stock, read.units, locks, read.counts, judged)
        for slot, slot_skus in it.slots.items():
            by_slot[slot].append((it, slot, [a for a in res if a[1] in slot_skus]))
    return _Plans(plans, refused, by_slot)


def _plan_order(
    it: _Item, rules: Rules, read: _Read, retry: set[str] | None
) -> list[Allocation] | str:
    """The order's allocations on the read, or the reason planning refuses it for:
    BUCKET_SHORT where only a hot SKU's bucket is short and the order may borrow
    (``retry``)."""
    o = it.order
    pickup = o.delivery.store if o.delivery.mode == "pickup" else None
    floors = None if it.store_channel else rules.floors
    res: list[Allocation] | str
    if read.gone and not read.gone.isdisjoint(it.skus):
        res = "pickup_unavailable" if pickup else "sold_out"
    else:
        res = plan(o.lines, read.stock, it.ranking, pickup, floors, rules.fewest)
    if (
        isinstance(res, str)
        and retry
        and o.order_id in retry
        and _bucket_short(o, rules, res, read.stock, it, floors)
    ):
        return Code.BUCKET_SHORT
    return res


def _failures(batches: list[list[_Entry]], results: list[list[int]]) -> tuple[set[str], bool]:
    """The orders some slot did not reserve (too few units, or a rule rejects it after
    all), and whether a slot holds rules of a newer catalog than the plans were made with.
    An answer the protocol does not know raises."""
    failed: set[str] = set()
    stale = False
    for batch, statuses in zip(batches, results, strict=True):
        for (it, _, _), status in zip(batch, statuses, strict=True):
            if status in _RESERVED:
                continue
            if status not in _NOT_RESERVED:
                raise ProtocolError(f"reserve_parts.lua answered {status!r}")
            failed.add(it.order.order_id)
            stale = stale or status == STALE
    return failed, stale


def _settle(
    pending: list[_Item], planned: _Plans, failed: set[str], outcome: dict[str, str]
) -> tuple[list[_Item], list[_Item]]:
    """The round's outcomes; returns the orders to plan again and those whose parts to
    release. In arrival order: once an order's plan did not go through, the orders after it
    may have planned around units it never took, or been judged on counts that included
    it, so they are released and decided again on a fresh read; the ones before it stand."""
    again: list[_Item] = []
    undo: list[_Item] = []
    suspect = False
    for it in pending:
        oid = it.order.order_id
        if oid in failed:
            undo.append(it)
            again.append(it)
            suspect = True
        elif oid in planned.plans:
            if suspect:
                undo.append(it)
                again.append(it)
            else:
                outcome[oid] = accepted(planned.plans[oid])
        elif oid in planned.refused:
            if suspect:
                again.append(it)
            else:
                reason = planned.refused[oid]
                short = reason == Code.BUCKET_SHORT
                outcome[oid] = Code.BUCKET_SHORT if short else rejected(reason)
    return again, undo


def _bucket_short(
    o: Order,
    rules: Rules,
    reason: str,
    stock: dict[str, dict[str, int]],
    it: _Item,
    floors: dict[str, int] | None,
) -> bool:
    """Whether borrowing for the order's bucketed SKUs could change a stock refusal: every
    other line can be served on its own (lines are served independently of each other)."""
    if reason not in ("sold_out", "pickup_unavailable"):
        return False
    pickup = o.delivery.store if o.delivery.mode == "pickup" else None
    others = [ln for ln in o.lines if keys.public(ln.sku) not in rules.bucketed]
    return len(others) < len(o.lines) and all(
        not isinstance(plan([ln], stock, it.ranking, pickup, floors, rules.fewest), str)
        for ln in others
    )
