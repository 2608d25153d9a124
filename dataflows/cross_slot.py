"""Orders whose SKUs live in different hash slots: reserved slot by slot, compensated on failure.

The same code serves one Redis server and a Redis Cluster, since no script touches two slots.
For a batch of such orders:

1. read what an earlier, crashed attempt left: an order whose every slot holds its part was
   reserved whole (its stored outcome stands); a partly reserved one is released;
2. plan each order against one stock read (planning decrements a local copy, so orders of
   the batch do not plan on the same units);
3. reserve each slot's parts of all orders in one script call per slot;
4. release the parts of orders that failed in some slot (someone took the units since the
   read) and plan those again against a fresh read. Each failure means stock was consumed,
   so the loop converges; it is bounded all the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from onestock.records import SEP, rejected
from onestock.routing import Allocation, plan
from onestock.types import Order
from state import keys
from state.store import Store

MAX_ATTEMPTS = 20


class _Item:
    __slots__ = ("order", "ranking", "slots")

    def __init__(self, order: Order, ranking: list[str]) -> None:
        self.order = order
        self.ranking = ranking
        slots: dict[int, list[str]] = defaultdict(list)
        for ln in order.lines:
            slots[keys.sku_slot(ln.sku)].append(ln.sku)
        # slot -> the order's SKUs there, smallest first (the first keeps the part record)
        self.slots = {slot: sorted(skus) for slot, skus in slots.items()}


def accepted(allocs: list[Allocation]) -> str:
    return SEP.join(["A", *(f"{loc}{SEP}{sku}{SEP}{qty}" for loc, sku, qty in allocs)])


def _slot_args(
    batch: Sequence[tuple[_Item, int, list[Allocation] | None]],
) -> tuple[list[str], list[Any]]:
    """ARGV for reserve_parts/release_parts on one slot: SKU table, then per-order entries."""
    names: dict[str, int] = {}
    for item, slot, _ in batch:
        for sku in item.slots[slot]:
            names.setdefault(sku, len(names) + 1)
    args: list[Any] = [len(names), *names, len(batch)]
    for item, slot, allocs in batch:
        args += [item.order.order_id, names[item.slots[slot][0]]]
        if allocs is not None:
            args.append(len(allocs))
            for loc, sku, qty in allocs:
                args += [names[sku], loc, qty]
    return list(names), args


def _release(store: Store, call: Callable[..., Any], items: list[_Item]) -> None:
    by_slot: dict[int, list[tuple[_Item, int, None]]] = defaultdict(list)
    for item in items:
        for slot in item.slots:
            by_slot[slot].append((item, slot, None))
    if by_slot:
        call(store.release_parts, [_slot_args(batch) for batch in by_slot.values()])


def decide_cross(
    store: Store,
    call: Callable[..., Any],
    orders: list[Order],
    rankings: list[list[str]],
    outcome: dict[str, str],
) -> None:
    """Decide cross-slot orders into ``outcome``; ``call`` wraps Redis calls (retry on outage)."""
    items = [_Item(o, r) for o, r in zip(orders, rankings, strict=True)]
    wanted = [(it.order.order_id, skus[0]) for it in items for skus in it.slots.values()]
    found = iter(call(store.read_parts, wanted))
    pending, partial = [], []
    for it in items:
        parts = [next(found) for _ in it.slots]
        if all(p is not None for p in parts):
            rank = {loc: i for i, loc in enumerate(it.ranking)}
            f = SEP.join(p.decode() for p in parts).split(SEP)  # type: ignore[union-attr]
            allocs = [(f[i], f[i + 1], int(f[i + 2])) for i in range(0, len(f), 3)]
            outcome[it.order.order_id] = accepted(sorted(allocs, key=lambda a: rank.get(a[0], 0)))
            continue
        if any(p is not None for p in parts):
            partial.append(it)
        pending.append(it)
    if partial:
        _release(store, call, partial)
    for _ in range(MAX_ATTEMPTS):
        if not pending:
            return
        pending = _attempt(store, call, pending, outcome)
    for it in pending:
        outcome[it.order.order_id] = rejected("sold_out")


def _attempt(
    store: Store, call: Callable[..., Any], pending: list[_Item], outcome: dict[str, str]
) -> list[_Item]:
    skus = sorted({ln.sku for it in pending for ln in it.order.lines})
    stock = call(store.stock_levels, skus)
    plans: dict[str, list[Allocation]] = {}
    by_slot: dict[int, list[tuple[_Item, int, list[Allocation]]]] = defaultdict(list)
    for it in pending:
        o = it.order
        pickup = o.delivery.store if o.delivery.mode == "pickup" else None
        res = plan(o.lines, stock, it.ranking, pickup)
        if isinstance(res, str):
            outcome[o.order_id] = rejected(res)
            continue
        plans[o.order_id] = res
        for loc, sku, qty in res:
            stock[sku][loc] -= qty
        for slot, slot_skus in it.slots.items():
            by_slot[slot].append((it, slot, [a for a in res if a[1] in slot_skus]))
    failed: dict[str, _Item] = {}
    batches = list(by_slot.values())
    results = call(store.reserve_parts, [_slot_args(b) for b in batches]) if batches else []  # type: ignore[arg-type]
    for batch, statuses in zip(batches, results, strict=True):
        for (it, _, _), status in zip(batch, statuses, strict=True):
            if status == 0:
                failed[it.order.order_id] = it
    if failed:
        _release(store, call, list(failed.values()))
    for oid, allocs in plans.items():
        if oid not in failed:
            outcome[oid] = accepted(allocs)
    return list(failed.values())
