"""Hot-SKU buckets in the decider: which bucket decides an order, and borrowing when it is short.

A SKU with ``"buckets": B`` in the catalog has its stock split over B stock hashes on
different hash slots (``state.buckets``). An order of one line of such a SKU is decided in
bucket ``shard % B``: the same bucket on every replay (an order id always lands on the same
shard), and the K shards, so the workers, spread over all B. An order of several lines, or
of a store-kind channel (which may take safety stock, kept in bucket 0), is decided in
bucket 0.

A bucket that cannot serve an order does not say sold_out at once (``decide.lua`` answers
``Code.BUCKET_SHORT`` and changes nothing). Under the SKU's mover lease the decider then:

1. borrows half of what every other bucket may lend, and decides the short orders again;
2. for the orders still short, borrows *everything* the other buckets may lend, and decides
   them for good.

So an order is sold_out only when its bucket held every lendable unit of the SKU (moves take
turns under the lease; the other buckets can only have sold units meanwhile): sell-out is
exact, and nothing is oversold, since each bucket's units are taken atomically by its script.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from msgspec.structs import replace

from onestock.domain.protocol import Code
from onestock.domain.types import Catalog, Order
from state import keys
from state.store import Store

Decide = Callable[[list[Order], set[str]], None]  # decide these orders, retry flag on these ids
Target = tuple[str, int, str]  # (SKU, the bucket that borrows, the pickup store or "")


class BucketPlan:
    """The catalog's bucketed SKUs, as the decider needs them."""

    def __init__(self, catalog: Catalog, locations: list[str], floors: dict[str, int]) -> None:
        self.count = {s.sku: s.buckets for s in catalog.skus if s.buckets > 1}
        self.store_channels = {c.id for c in catalog.channels if c.kind == "store"}
        self.locations = locations  # every location, in the router's order
        self.floors = floors  # safety stock per location (kept by bucket 0 when it lends)

    def assign(self, o: Order, shard: int) -> tuple[Order, int] | None:
        """The order with each bucketed SKU renamed to the bucket that decides it, and that
        bucket; None when it has no bucketed SKU."""
        count = self.count
        lines = o.lines
        if not any(ln.sku in count for ln in lines):
            return None
        b = 0
        if len(lines) == 1 and o.channel not in self.store_channels:
            b = shard % count[lines[0].sku]
        renamed = [
            replace(ln, sku=keys.bucket(ln.sku, b)) if ln.sku in count else ln for ln in lines
        ]
        return replace(o, lines=renamed), b

    def targets(self, o: Order) -> list[Target]:
        """(SKU, bucket, where) of each bucketed line of an assigned order: where = the pickup
        store (only units there help it), or "" for a shipment (units anywhere help)."""
        where = o.delivery.store or "" if o.delivery.mode == "pickup" else ""
        out = []
        for ln in o.lines:
            sku, _, b = ln.sku.partition(keys.BUCKET)
            if sku in self.count:
                out.append((sku, int(b or 0), where))
        return out


def short(outcome: str) -> bool:
    """The bucket was short for the order (BUCKET_SHORT: from decide.lua, or the cross-slot path
    when only bucketed lines fell short); nothing was stored or taken."""
    return outcome == Code.BUCKET_SHORT


def borrow_and_decide(
    store: Store,
    call: Callable[..., Any],
    plan: BucketPlan,
    orders: list[Order],
    outcome: dict[str, str],
    decide: Decide,
) -> dict[tuple[str, str], int]:
    """Settle assigned orders whose bucket was short (see the module's docstring); ``decide``
    writes into ``outcome``. Every order leaves with a final outcome. Returns the units moved
    per (SKU, pickup store or "" for shipments); 0: no other bucket had a unit to lend."""
    of = {o.order_id: plan.targets(o) for o in orders}  # (the same for every round)
    skus = sorted({t[0] for ts in of.values() for t in ts})
    leases = [store.buckets.lease(sku) for sku in skus]  # one order of taking: no deadlock
    for lease in leases:
        while not call(lease.acquire):  # blocks until the holder is done, or its lease ends
            pass
    moved: dict[tuple[str, str], int] = defaultdict(int)
    try:
        # First half of what the other buckets may lend, for every short bucket at once, and
        # one decision round; then, for the orders still short, everything, one bucket at a
        # time (a second "everything" into another bucket of the SKU would take it back).
        # Half of nothing is nothing: an order none of whose SKUs could borrow a unit (and
        # moves take turns) is decided for good in the first round.
        targets = sorted({t for ts in of.values() for t in ts})
        got = dict(zip(targets, _borrow(store, call, plan, targets, False), strict=True))
        for (sku, _, where), n in got.items():
            moved[(sku, where)] += n
        retry = {oid for oid, ts in of.items() if any(got[t] for t in ts)}
        decide(orders, retry)
        by_targets: dict[tuple[Target, ...], list[Order]] = defaultdict(list)
        for o in orders:
            if short(outcome[o.order_id]):
                by_targets[tuple(of[o.order_id])].append(o)
        for group_targets, group in by_targets.items():
            gathered = _borrow(store, call, plan, list(group_targets), True)
            for (sku, _, where), n in zip(group_targets, gathered, strict=True):
                moved[(sku, where)] += n
            decide(group, set())
    finally:
        for lease in leases:
            try:
                call(lease.release)  # (waits out a Redis outage like every call here)
            except redis.exceptions.LockError:  # the lease ran out (a long stall): harmless
                pass
    return moved


def _borrow(
    store: Store, call: Callable[..., Any], plan: BucketPlan, targets: list[Target], all_: bool
) -> list[int]:
    """Units moved into each target's bucket: at its pickup store, or at every location."""
    where = [(sku, plan.count[sku], b, [at] if at else plan.locations) for sku, b, at in targets]
    return call(store.buckets.borrow, where, all_, plan.floors)  # type: ignore[no-any-return]


def reconcile(store: Store, call: Callable[..., Any], plan: BucketPlan) -> None:
    """Finish transfers a crash left in flight (run when a worker starts or the catalog
    changes)."""
    for sku, n in plan.count.items():
        call(store.buckets.reconcile, sku, n)
