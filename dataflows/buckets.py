"""Hot-SKU buckets in the decider: which bucket decides an order, and borrowing when it is short.

A SKU with ``"buckets": B`` in the catalog has its stock split over B stock hashes on
different hash slots (``state.buckets``). An order of one line of such a SKU is decided in
bucket ``shard % B``: the same bucket on every replay (an order id always lands on the same
shard), and the K shards, so the workers, spread over all B. An order of several lines, or
of a store-kind channel (which may take safety stock, kept in bucket 0), is decided in
bucket 0.

A bucket that cannot serve an order does not say sold_out at once (``decide.lua`` answers
"B" and changes nothing). Under the SKU's mover lease the decider then:

1. borrows half of what every other bucket may lend, and decides the short orders again;
2. for the orders still short, borrows *everything* the other buckets may lend, and decides
   them for good.

So an order is sold_out only when its bucket held every lendable unit of the SKU (moves take
turns under the lease; the other buckets can only have sold units meanwhile): sell-out is
exact, and nothing is oversold, since each bucket's units are taken atomically by its script.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import redis
from msgspec.structs import replace

from onestock.records import SEP
from onestock.types import Catalog, Order
from state import keys
from state.store import Store

# Outcomes a bucketed order may have when its bucket is short: "B" from decide.lua (the
# one-slot path), sold_out or pickup_unavailable from the cross-slot path (nothing stored).
_SHORT = {"B", f"R{SEP}sold_out", f"R{SEP}pickup_unavailable"}

Decide = Callable[[list[Order], set[str]], None]  # decide these orders, retry flag on these ids


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

    def targets(self, o: Order) -> list[tuple[str, int]]:
        """(SKU, bucket) of each bucketed line of an assigned order."""
        out = []
        for ln in o.lines:
            sku, _, b = ln.sku.partition(keys.BUCKET)
            if sku in self.count:
                out.append((sku, int(b or 0)))
        return out


def short(outcome: str) -> bool:
    return outcome in _SHORT


def borrow_and_decide(
    store: Store,
    call: Callable[..., Any],
    plan: BucketPlan,
    orders: list[Order],
    outcome: dict[str, str],
    decide: Decide,
) -> None:
    """Settle assigned orders whose bucket was short (see the module's docstring); ``decide``
    writes into ``outcome``. Every order leaves with a final outcome."""
    skus = sorted({sku for o in orders for sku, _ in plan.targets(o)})
    leases = [store.buckets.lease(sku) for sku in skus]  # one order of taking: no deadlock
    for lease in leases:
        while not call(lease.acquire):  # blocks until the holder is done, or its lease ends
            pass
    try:
        todo = orders
        for everything in (False, True):
            by_targets: dict[tuple[tuple[str, int], ...], list[Order]] = defaultdict(list)
            for o in todo:
                by_targets[tuple(plan.targets(o))].append(o)
            # Orders borrowing into different buckets of one SKU take turns (a second
            # "everything" would take back what the first gathered).
            for targets, group in by_targets.items():
                moved = sum(_borrow(store, call, plan, targets, everything))
                if moved or everything:
                    decide(group, set() if everything else {o.order_id for o in group})
            todo = [o for o in todo if short(outcome[o.order_id])]
            if not todo:
                break
    finally:
        for lease in leases:
            try:
                lease.release()
            except redis.exceptions.LockError:  # the lease ran out (a long stall): harmless
                pass


def _borrow(
    store: Store,
    call: Callable[..., Any],
    plan: BucketPlan,
    targets: Iterable[tuple[str, int]],
    everything: bool,
) -> list[int]:
    return [
        call(store.buckets.borrow, sku, plan.count[sku], b, everything, plan.locations, plan.floors)
        for sku, b in targets
    ]


def reconcile(store: Store, call: Callable[..., Any], plan: BucketPlan) -> None:
    """Finish transfers a crash left in flight (run when a worker starts or the catalog
    changes)."""
    for sku, n in plan.count.items():
        call(store.buckets.reconcile, sku, n)
