"""Decide one shard batch: decode, route, one Lua call per hash slot, build the outputs.

Plain Python, no Bytewax: the dataflow's ``decide`` step and the benchmark's bare loop both
call ``Decider.process`` so the ceiling they are compared against does the same Redis work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from onestock import events
from onestock.records import SEP, rejected
from onestock.routing import Router, plan
from onestock.types import Catalog, Order
from state import keys
from state.store import Store, Waiter

MAX_CROSS_SLOT_ATTEMPTS = 50


class Decided(msgspec.Struct):
    """What ``emit`` writes for one batch: records and dead letters of shard ``shard``."""

    shard: int
    last_id: str
    records: list[list[Any]]  # [order_id, registry value, field, value, ...]
    dead: list[list[Any]]  # [entry id, raw text, reason]


class _View:
    """The catalog as the decider needs it, rebuilt when the catalog version changes."""

    def __init__(self, catalog: Catalog | None) -> None:
        catalog = catalog or Catalog(channels=[], locations=[], skus=[])
        self.router = Router(catalog)
        self.channels = {c.id for c in catalog.channels}
        self.skus = {s.sku for s in catalog.skus}
        self.locations = set(self.router.ids)
        self.loc_index = {loc: i + 1 for i, loc in enumerate(self.router.ids)}


class Decider:
    def __init__(self, store: Store, say: Callable[[str], None] = print,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.store = store
        self.wait = Waiter(say, stopping)
        self.version = -1
        self.view = _View(None)

    def refresh(self) -> None:
        version = self.wait.call(self.store.catalog_version)
        if version != self.version:
            self.version, catalog = self.wait.call(self.store.catalog)
            self.view = _View(catalog)

    def process(self, shard: int, entries: list[tuple[str, bytes]]) -> Decided:
        """Outcomes for a batch read from ``shard`` (entry id, raw event)."""
        self.refresh()
        decided_ms = int(time.time() * 1000)
        firsts: dict[str, tuple[str, events.Decoded]] = {}
        dead: list[list[Any]] = []
        for eid, raw in entries:
            d = events.decode(raw)
            if isinstance(d, events.Dead):
                dead.append([eid, d.raw, d.reason])
                continue
            oid = d.order.order_id if isinstance(d, events.Valid) else d.order_id
            if oid not in firsts:  # a later copy in the same batch changes nothing
                firsts[oid] = (eid, d)
        ids = list(firsts)
        done = self.wait.call(self.store.already_emitted, shard, ids)
        outcome: dict[str, str] = {}
        slot_orders: dict[int, list[Order]] = {}
        cross: list[Order] = []
        for oid, seen in zip(ids, done):
            if seen:  # replay of an order whose record exists: skip it entirely
                del firsts[oid]
                continue
            d = firsts[oid][1]
            if isinstance(d, events.Invalid):
                outcome[oid] = rejected("invalid", d.detail)
                continue
            o = d.order  # type: ignore[union-attr]
            reason = self._precheck(o)
            if reason is not None:
                outcome[oid] = reason
                continue
            slots = {keys.sku_slot(ln.sku) for ln in o.lines}
            if len(slots) == 1:
                slot_orders.setdefault(slots.pop(), []).append(o)
            else:
                cross.append(o)
        for group in slot_orders.values():
            self._decide_slot(group, outcome)
        for o in cross:
            outcome[o.order_id] = self._decide_cross(o)
        records = []
        for oid, (eid, d) in firsts.items():
            res = outcome[oid]
            if isinstance(d, events.Valid):
                o = d.order
                channel, paid, mode = o.channel, o.paid_at, o.delivery.mode
            else:
                channel, paid, mode = d.channel or "", d.paid_at or "", "ship"  # type: ignore[union-attr]
            registry = res if res[0] == "A" else "R"
            received = eid.partition("-")[0]
            records.append(
                [oid, registry, "o", oid, "s", res, "c", channel, "p", paid, "m", mode,
                 "r", received, "d", decided_ms]
            )  # fmt: skip
        last_id = entries[-1][0] if entries else "0-0"
        return Decided(shard, last_id, records, dead)

    def emit(self, d: Decided) -> None:
        self.wait.call(self.store.emit, d.shard, d.last_id, d.records, d.dead)

    # -- helpers ---------------------------------------------------------------------------

    def _precheck(self, o: Order) -> str | None:
        """Rejections that need only the catalog (the Lua script re-checks SKUs atomically)."""
        view = self.view
        if o.channel not in view.channels:
            return rejected("unknown_channel")
        for ln in o.lines:
            if ln.sku not in view.skus:
                return rejected("unknown_sku")
        if o.delivery.mode == "pickup":
            store = o.delivery.store
            if store not in view.locations:
                return rejected("invalid", f"delivery.store: unknown location {store!r} - at `$.delivery.store`")
            if store not in view.router.pickup:
                return rejected("pickup_unavailable")
        return None

    def _rankings(self, orders: list[Order]) -> list[bytes]:
        coords = [
            (o.customer.lat, o.customer.lon) if o.customer.lat is not None else None
            for o in orders
        ]
        return self.view.router.rank_batch(coords)  # type: ignore[arg-type]

    def _decide_slot(self, orders: list[Order], outcome: dict[str, str]) -> None:
        view = self.view
        sku_index: dict[str, int] = {}
        body: list[Any] = [len(orders)]
        rankings = self._rankings(orders)
        for o, ranking in zip(orders, rankings):
            lines = o.lines
            for ln in lines:
                if ln.sku not in sku_index:
                    sku_index[ln.sku] = len(sku_index) + 1
            # The outcome lives with the order's smallest SKU name: the same key on every replay.
            home = sku_index[min(ln.sku for ln in lines)]
            if o.delivery.mode == "pickup":
                body += [o.order_id, home, view.loc_index[o.delivery.store], b"", len(lines)]  # type: ignore[index]
            else:
                body += [o.order_id, home, 0, ranking, len(lines)]
            for ln in lines:
                body += [sku_index[ln.sku], ln.qty]
        skus = list(sku_index)
        args = [len(skus), len(view.router.ids), *skus, *view.router.ids, *body]
        results = self.wait.call(self.store.decide_slot, skus, args)
        for o, res in zip(orders, results):
            outcome[o.order_id] = res.decode()

    def _decide_cross(self, o: Order) -> str:
        """An order whose SKUs span slots: reserve slot by slot, compensate on failure."""
        call = self.wait.call
        groups_by_slot: dict[int, list[str]] = {}
        for ln in o.lines:
            groups_by_slot.setdefault(keys.sku_slot(ln.sku), []).append(ln.sku)
        groups = [sorted(g) for _, g in sorted(groups_by_slot.items())]
        ranking = self.view.router.decode(self._rankings([o])[0])
        rank = {loc: i for i, loc in enumerate(ranking)}
        parts = call(self.store.read_parts, o.order_id, groups)
        if all(p is not None for p in parts):  # reserved whole before a crash: same outcome
            triples = SEP.join(p.decode() for p in parts).split(SEP)
            allocs = [(triples[i], triples[i + 1], int(triples[i + 2])) for i in range(0, len(triples), 3)]
            return _accepted(sorted(allocs, key=lambda a: rank.get(a[0], len(rank))))
        for g, p in zip(groups, parts):  # a half-reserved order from a crash: undo, then redo
            if p is not None:
                call(self.store.release_part, o.order_id, g)
        store = o.delivery.store if o.delivery.mode == "pickup" else None
        for _ in range(MAX_CROSS_SLOT_ATTEMPTS):
            stock = call(self.store.stock_levels, [ln.sku for ln in o.lines])
            res = plan(o.lines, stock, ranking, store)
            if isinstance(res, str):
                return rejected(res)
            reserved: list[list[str]] = []
            for g in groups:
                allocs = [a for a in res if a[1] in g]
                if call(self.store.reserve_part, o.order_id, g, allocs) == 0:
                    break  # someone took the stock since we read it: compensate and re-plan
                reserved.append(g)
            else:
                return _accepted(res)
            for g in reserved:
                call(self.store.release_part, o.order_id, g)
        return rejected("sold_out")


def _accepted(allocs: list[tuple[str, str, int]]) -> str:
    return SEP.join(["A", *(f"{loc}{SEP}{sku}{SEP}{qty}" for loc, sku, qty in allocs)])
