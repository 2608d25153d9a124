"""Hot-SKU buckets in the decider: which bucket decides an order, and borrowing when it is short.

A SKU with ``"buckets": B`` in the catalog has its stock split over B stock hashes on
different hash slots (``state.buckets``). An order of one line of such a SKU is decided in
bucket ``shard % B``: the same bucket on every replay (an order id always lands on the same
shard), and the K shards, so the workers, spread over all B. An order of several lines, or
of a store-kind channel (which may take safety stock, kept in bucket 0), is decided in
bucket 0.

A bucket that cannot serve an order does not say sold_out at once (``decide.lua`` answers
``Code.BUCKET_SHORT`` and changes nothing). The decider then (``borrow_and_decide``):

1. borrows half of what every other bucket may lend, and decides the short orders again;
2. for the orders still short: refuses those a read of every bucket at one moment shows the
   SKU cannot cover (``Buckets.snapshot``, as a batch's read refuses a sold-out SKU's orders:
   dataflows/refusals.py); borrows *everything* the other buckets may lend for the rest, one
   bucket at a time, and decides them again; so for a few rounds;
3. for what is still short, a last round with the SKU's lease held from the move to the
   decision (no unit moves between buckets meanwhile), still refusing on the read, tried
   again after moving what came back (a cancel, a return); only then a decision that
   refuses at once.

Moves (lend, receive) take turns under the SKU's mover lease, held for the move alone, so
the workers never wait for each other's decisions; a decision round may find its borrowed
units lent on to another bucket meanwhile, and then asks again. An order is refused when
the read shows the whole SKU short for it (an exact moment), or, after the last round's
tries, when its bucket holds every unit the others could lend: sell-out is exact, and
nothing is oversold, since each bucket's units are taken atomically by its script.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from msgspec.structs import replace

from dataflows.cross_slot import StaleCatalog
from onestock.domain.protocol import Code
from onestock.domain.types import Catalog, Order
from state import keys
from state.store import Store

Decide = Callable[[list[Order], set[str]], None]  # decide these orders, retry flag on these ids
Target = tuple[str, int, str]  # (SKU, the bucket that borrows, the pickup store or "")


class BucketPlan:
    """The catalog's bucketed SKUs, as the decider needs them."""

    def __init__(
        self, catalog: Catalog, locations: list[str], floors: dict[str, int], version: int = 0
    ) -> None:
        self.version = version  # the catalog's: a lender loaded by a newer one lends nothing
        self.count = {s.sku: s.buckets for s in catalog.skus if s.buckets > 1}
        self.store_channels = {c.id for c in catalog.channels if c.kind == "store"}
        self.locations = locations  # every location, in the router's order
        self.floors = floors  # safety stock per location (kept by bucket 0 when it lends)

    def assign(self, o: Order, shard: int, b: int | None = None) -> tuple[Order, int] | None:
        """The order with each bucketed SKU renamed to the bucket that decides it (``b``
        where given: the bucket an earlier run decided it in), and that bucket; None when it
        has no bucketed SKU."""
        count = self.count
        lines = o.lines
        if not any(ln.sku in count for ln in lines):
            return None
        if b is None:
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


ROUNDS = 3  # decision rounds with the lease held for the moves alone, before the last one
RENEW_S = 1.0  # how often held mover leases are renewed while their holder runs long
LAST_TRIES = 3  # the last round's tries, lease held, before a decision that refuses at once


def borrow_and_decide(
    store: Store,
    call: Callable[..., Any],
    plan: BucketPlan,
    orders: list[Order],
    outcome: dict[str, str],
    decide: Decide,
    refuse: Callable[[list[Order]], None],
) -> dict[tuple[str, str], int]:
    """Settle assigned orders whose bucket was short (see the module's docstring); ``decide``
    writes into ``outcome``; ``refuse`` writes the refusals a read of the SKUs' buckets
    gives (orders it cannot judge stay short). Every order leaves with a final outcome.
    Returns the units moved per (SKU, pickup store or "" for shipments); 0: no other bucket
    had a unit to lend."""
    of = {o.order_id: plan.targets(o) for o in orders}  # (the same for every round)
    moved: dict[tuple[str, str], int] = defaultdict(int)

    def move(targets: list[Target], everything: bool) -> None:  # (the leases held)
        got = _borrow(store, call, plan, targets, everything)
        for (sku, _, where), n in zip(targets, got, strict=True):
            moved[(sku, where)] += n

    def borrow(targets: list[Target], everything: bool) -> None:
        with _leased(store, call, targets):
            move(targets, everything)

    def still(group: list[Order]) -> list[Order]:
        return [o for o in group if short(outcome[o.order_id])]

    # Half of what the other buckets may lend, for every short bucket at once, then for the
    # orders still short everything, one bucket at a time (a second "everything" into
    # another bucket of the SKU would take it back). Every decision outside the lease may
    # say "short" again, never sold_out: the read refuses.
    borrow(sorted({t for ts in of.values() for t in ts}), False)
    pending = orders
    for round_ in range(ROUNDS):
        if round_:
            for targets, group in _by_targets(pending, of).items():
                borrow(list(targets), True)
                decide(group, {o.order_id for o in group})
        else:  # every order, also one that borrowed nothing: the scripts answer a replay
            # with its stored outcome (an order sent here as dry, ``Borrowing.dry``, was not
            # asked yet), and only an order they found short may be refused on the read
            decide(pending, set(of))
        pending = still(pending)
        if pending:
            refuse(pending)
            pending = still(pending)
        if not pending:
            return moved
    # The last round, the lease held from the move to the decision: no unit moves between
    # the buckets meanwhile, but one may come back into another bucket (a cancel, a return,
    # a restock), so a refusal is still the read's, tried again after moving what came; only
    # after LAST_TRIES does the decision refuse at once, as its bucket holds every unit the
    # others could lend (up to what came back meanwhile).
    for targets, group in _by_targets(pending, of).items():
        with _leased(store, call, list(targets)) as leases:
            for _ in range(LAST_TRIES):
                leases.renew()  # (held from the move to the decision: not lost between)
                move(list(targets), True)
                decide(group, {o.order_id for o in group})
                group = still(group)
                if group:
                    refuse(group)
                    group = still(group)
                if not group:
                    break
            else:
                leases.renew()
                move(list(targets), True)
                decide(group, set())
    return moved


def _by_targets(
    orders: list[Order], of: dict[str, list[Target]]
) -> dict[tuple[Target, ...], list[Order]]:
    """The orders grouped by the buckets they borrow into."""
    groups: dict[tuple[Target, ...], list[Order]] = defaultdict(list)
    for o in orders:
        groups[tuple(of[o.order_id])].append(o)
    return groups


class LeaseLost(StaleCatalog):
    """A hot SKU's mover lease ran out while it was held (a stall longer than the lease;
    another mover may have held it since): the batch is decided again, under the lease anew
    (every step is idempotent; a count's hold keeps its guard, dataflows/movements.py)."""


class Leases:
    """The mover leases of some hot SKUs, held for a ``with`` block: taken in one order (no
    deadlock), each waited for until its holder is done or its lease ends; released at the
    end (one that ran out meanwhile: harmless). (Each move first finishes the transfers a
    mover left in flight: ``Buckets.borrow``.)"""

    def __init__(self, store: Store, call: Callable[..., Any], skus: Iterable[str]) -> None:
        self.call = call
        self._leases = [store.buckets.lease(sku) for sku in sorted(set(skus))]
        self._taken: list[Any] = []
        self._renewed = 0.0

    def __enter__(self) -> Leases:
        try:
            for lease in self._leases:
                while not self.call(lease.acquire):
                    pass
                self._taken.append(lease)
        except BaseException:
            self._release()
            raise
        self._renewed = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def renew(self) -> None:
        """Keep the leases while a holder runs long (a count that waits, a batch of many
        movements): renewed at most once per ``RENEW_S``; one that ran out anyway raises
        LeaseLost."""
        if time.monotonic() - self._renewed < RENEW_S:
            return
        for lease in self._taken:
            try:
                self.call(lease.reacquire)
            except redis.exceptions.LockNotOwnedError:
                raise LeaseLost from None
        self._renewed = time.monotonic()

    def _release(self) -> None:
        taken, self._taken = self._taken, []
        for lease in taken:
            try:
                self.call(lease.release)  # (waits out a Redis outage like every call here)
            except redis.exceptions.LockError:  # the lease ran out (a long stall): harmless
                pass


def _leased(store: Store, call: Callable[..., Any], targets: list[Target]) -> Leases:
    """The mover leases of the targets' SKUs (``Leases``)."""
    return Leases(store, call, (t[0] for t in targets))


@contextmanager
def gathered(
    store: Store, call: Callable[..., Any], plan: BucketPlan, skus: list[str], at: list[str]
) -> Iterator[None]:
    """The bucketed ones of ``skus`` gathered into bucket 0 at the locations ``at``
    (everything the other buckets may lend there), their leases held until the block ends,
    so what decides there in bucket 0 (a re-route: dataflows/fulfilment.py) sees every unit
    of the SKU there."""
    hot = sorted(s for s in set(skus) if s in plan.count)
    with _leased(store, call, [(sku, 0, "") for sku in hot]):
        if hot:
            _moved(store, call, plan, [(sku, plan.count[sku], 0, at) for sku in hot], True)
        yield


def _borrow(
    store: Store, call: Callable[..., Any], plan: BucketPlan, targets: list[Target], all_: bool
) -> list[int]:
    """Units moved into each target's bucket: at its pickup store, or at every location."""
    where = [(sku, plan.count[sku], b, [at] if at else plan.locations) for sku, b, at in targets]
    return _moved(store, call, plan, where, all_)


def _moved(
    store: Store,
    call: Callable[..., Any],
    plan: BucketPlan,
    where: list[tuple[str, int, int, list[str]]],
    all_: bool,
) -> list[int]:
    """``Buckets.borrow`` of ``where``; a plan older than the buckets' catalog (a reload
    changed them since) raises StaleCatalog: the batch is decided again."""
    got = call(store.buckets.borrow, where, all_, plan.floors, plan.version)
    if got is None:
        raise StaleCatalog
    return got  # type: ignore[no-any-return]


def reconcile(store: Store, call: Callable[..., Any], plan: BucketPlan) -> None:
    """Finish transfers a crash left in flight (run when a worker starts or the catalog
    changes), under each SKU's lease like a move: a catalog load, which drops
    the transfers in flight with the stock they came from, takes it too, so a transfer read
    before a load is never received into the stock after it."""
    for sku, n in plan.count.items():
        with _leased(store, call, [(sku, 0, "")]):
            call(store.buckets.reconcile, sku, n)
