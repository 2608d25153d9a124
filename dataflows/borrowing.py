"""The decider's side of hot-SKU buckets: which bucket decides each order of a batch, and
borrowing for the orders their bucket left short (the moves themselves: dataflows/buckets.py).

One ``Borrowing`` per decider process. It keeps, per batch, the orders whose bucket may
borrow (``retry``: decide.lua answers ``Code.BUCKET_SHORT`` instead of sold_out) and those
decided in a bucket other than 0 (``spread``: bucket 0 alone holds safety stock), which the
decide calls' flags read; and across batches, where the last borrowing found nothing to lend
(``dry``): such an order skips the first round and goes straight to borrowing (sold out: one
round, not three).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dataflows import buckets
from dataflows.refusals import Refusals
from onestock.domain.protocol import Code
from onestock.domain.records import rejected
from onestock.domain.routing import plan
from onestock.domain.types import Order
from state import keys
from state.store import Store

if TYPE_CHECKING:
    from dataflows.view import CatalogView


def _where(t: buckets.Target) -> tuple[str, str]:
    """A bucket target's (SKU, pickup store or ""): what ``Borrowing.dry`` holds."""
    return t[0], t[2]


class Borrowing:
    """Hot-SKU buckets in one decider process (module docstring)."""

    def __init__(self, store: Store, call: Callable[..., Any], refusals: Refusals) -> None:
        self.store, self.call, self.refusals = store, call, refusals
        self.retry: set[str] = set()  # orders whose hot-SKU bucket may borrow
        self.spread: set[str] = set()  # orders decided in a bucket other than 0
        # (bucketed SKU, pickup store or "" for shipments) whose other buckets had nothing to
        # lend at the last borrowing
        self.dry: set[tuple[str, str]] = set()

    def assign(
        self,
        view: CatalogView,
        shard: int,
        todo: list[Order],
        outcome: dict[str, str],
        maybe: set[str],
    ) -> tuple[list[Order], list[Order]]:
        """Orders of hot SKUs renamed to the bucket that decides them: (the orders to
        decide, the renamed ones among them or short at once). An order of one line of a
        SKU ``dry`` at the last borrowing goes straight to borrowing, whose first round asks
        decide.lua. A basket is asked first here: short, it may be refused on a read
        (``_refuse_helpless``), which a replayed basket decided before must never be.
        ``maybe``: orders an earlier run may have decided (``_decided_in``)."""
        plan_, dry, retry, spread = view.buckets, self.dry, self.retry, self.spread
        kept: list[Order] = []
        bucketed: list[Order] = []  # orders of hot SKUs split into buckets, renamed
        before = self._decided_in(view, [o for o in todo if o.order_id in maybe]) if maybe else {}
        for o in todo:
            assigned = plan_.assign(o, shard, before.get(o.order_id))
            if assigned is None:
                kept.append(o)
                continue
            renamed, b = assigned
            oid = renamed.order_id
            bucketed.append(renamed)
            retry.add(oid)
            if b:  # bucket 0 alone holds safety stock
                spread.add(oid)
            if dry and len(o.lines) == 1 and _where(plan_.targets(renamed)[0]) in dry:
                outcome[oid] = Code.BUCKET_SHORT  # sold out at the last look: straight to borrowing
                continue
            kept.append(renamed)
        return kept, bucketed

    def _decided_in(self, view: CatalogView, orders: list[Order]) -> dict[str, int]:
        """Of these orders an earlier run may have decided, the one-line orders of a hot SKU
        with an outcome stored in one of its buckets' decision hashes: that bucket. The
        bucket of such an order depends on the catalog (its channel's kind), which a load
        since may have changed: its replay must go where its outcome is, or it would be
        decided again. (A fresh call's outcomes are in its shard's journal, which a call
        of any bucket reads; a basket is always bucket 0's.)"""
        count = view.buckets.count
        ones = [o for o in orders if len(o.lines) == 1 and o.lines[0].sku in count]
        if not ones:
            return {}
        wanted = [
            (o.order_id, [keys.bucket(o.lines[0].sku, b) for b in range(count[o.lines[0].sku])])
            for o in ones
        ]
        found = self.call(self.store.skus.decided_in, wanted)
        return {oid: b for (oid, _), b in zip(wanted, found, strict=True) if b is not None}

    def borrow(
        self,
        view: CatalogView,
        bucketed: list[Order],
        outcome: dict[str, str],
        decide: Callable[[list[Order]], None],
        ranking: Callable[[Order], list[str]],
        paid: dict[str, int],
    ) -> None:
        """Hot-SKU orders whose bucket was short: borrow from the SKU's other buckets and
        ``decide`` them again (``buckets.borrow_and_decide``; ``retry`` holds the orders
        that may still borrow); remember where nothing could be lent (``dry``)."""
        again = [o for o in bucketed if buckets.short(outcome[o.order_id])]
        if any(len(o.lines) > 1 for o in again):
            self._refuse_helpless(view, again, outcome, ranking)
            again = [o for o in again if buckets.short(outcome[o.order_id])]
        if not again:
            return

        def decide_again(orders: list[Order], retry: set[str]) -> None:
            self.retry = retry
            decide(orders)

        def refuse(orders: list[Order]) -> None:
            self._refuse_whole(view, orders, outcome, paid)

        moved = buckets.borrow_and_decide(
            self.store, self.call, view.buckets, again, outcome, decide_again, refuse
        )
        for where, units in moved.items():  # none of the SKU's buckets could lend
            if units:
                self.dry.discard(where)
            else:
                self.dry.add(where)

    def _refuse_helpless(
        self,
        view: CatalogView,
        short: list[Order],
        outcome: dict[str, str],
        ranking: Callable[[Order], list[str]],
    ) -> None:
        """Baskets short in a hot SKU's bucket that borrowing cannot help: a line of a SKU
        without buckets that cannot be served on its own on a read (``decide.lua`` says
        short for the whole basket). Refused on that read, as the slot-by-slot path plans
        them; without it every borrowing round would gather the hot SKU into bucket 0."""
        count = view.buckets.count
        todo = [(o, [ln for ln in o.lines if keys.public(ln.sku) not in count]) for o in short]
        todo = [(o, plain) for o, plain in todo if plain]
        if not todo:
            return
        names = sorted({ln.sku for _, plain in todo for ln in plain})
        stock = self.call(self.store.skus.stock_levels, names)
        floors, fewest = view.floors, bool(view.fewest)
        for o, plain in todo:
            pickup = o.delivery.store if o.delivery.mode == "pickup" else None
            mine = None if o.channel in view.store_channels else floors
            near = ranking(o)
            for ln in plain:
                res = plan([ln], stock, near, pickup, mine, fewest)
                if isinstance(res, str):
                    outcome[o.order_id] = rejected(res)
                    break

    def _refuse_whole(
        self, view: CatalogView, orders: list[Order], outcome: dict[str, str], paid: dict[str, int]
    ) -> None:
        """Hot-SKU orders of one line still short after borrowing: those a read of their
        SKU's buckets at one moment shows it cannot cover are refused (``Refusals.whole``);
        the others stay short."""
        plan_ = view.buckets
        skus = {o.lines[0].sku.partition(keys.BUCKET)[0] for o in orders if len(o.lines) == 1}
        counts = {sku: plan_.count[sku] for sku in skus if sku in plan_.count}
        if counts:
            read = self.call(self.store.buckets.snapshot, counts, view.version)
            outcome.update(self.refusals.whole(orders, read, view.floors, paid,
                                               view.store_channels))  # fmt: skip
