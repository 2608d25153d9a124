"""The phases of a batch that follow an order after its decision: daily capacity and
reservations (right after deciding), then payments, fulfilment feedback, claim timeouts and
payment deadlines (after the batch's own records), each making the order's later record
versions (docs/payments.md, docs/fulfilment.md). Plain Python, called by ``Decider``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from dataflows.aftersale import Aftersale
from dataflows.fulfilment import DAY_MS, Fulfilments, Places
from dataflows.payments import Payments
from onestock.domain import events, meter
from onestock.domain.protocol import Code
from onestock.domain.records import allocations
from onestock.domain.types import Order
from state import keys
from state.conn import Waiter
from state.store import Store

# the metric tags of later versions (onestock.domain.meter: no latency buckets)
PAID_TAG = f"{meter.NONE}{meter.NONE}{Code.PAID}"
EXPIRED_TAG = f"{meter.NONE}{meter.NONE}{Code.EXPIRED}"

Firsts = dict[str, tuple[str, events.Decoded]]  # order id -> (entry id, its first event)
Reserved = tuple[str, int, str, str]  # a new reserved order: id, deadline ms, channel, mode


class Later(NamedTuple):
    """What the phases after a batch's records add: registry triples, their metric tags,
    and the greatest paid_at (ms) of its accepted payments (-1: none)."""

    records: list[str]
    tags: list[str]
    paid_ms: int = -1


class Lifecycle:
    def __init__(self, store: Store, wait: Waiter, aftersale: Aftersale) -> None:
        self.store = store
        self.wait = wait
        self.payments = Payments(store, wait, aftersale)
        self.fulfilments = Fulfilments(store, wait, aftersale)

    def route(
        self,
        firsts: Firsts,
        outcome: dict[str, str],
        held_ids: set[str],
        pending: dict[str, int],
        places: Places,
        rank: Callable[[Order], list[str]],
        decided: str,
    ) -> list[Reserved]:
        """Right after deciding: orders moved off locations whose day is full, then the
        pending orders' units reserved (``Code.RESERVED``); the new reserved orders."""
        if places.capacity:
            self._capacity(firsts, outcome, held_ids, places, rank, decided)
        new: list[Reserved] = []
        for oid, deadline in pending.items():
            res = outcome.get(oid, "")
            if res[:1] != Code.ACCEPTED:
                continue
            outcome[oid] = Code.RESERVED + res[1:]
            o = firsts[oid][1].order  # type: ignore[union-attr]
            new.append((oid, deadline, o.channel, o.delivery.mode))
        return new

    def _capacity(
        self,
        firsts: Firsts,
        outcome: dict[str, str],
        held_ids: set[str],
        places: Places,
        rank: Callable[[Order], list[str]],
        decided: str,
    ) -> None:
        """Each accepted order counted against the daily capacity of the locations it was
        routed to (the day of its arrival); the shipments of a full day move to the next
        locations with room (``Fulfilments.honour``), or the order is rejected."""
        asks: dict[int, dict[str, tuple[int, list[str]]]] = {}
        for oid, res in outcome.items():
            if res[:1] != Code.ACCEPTED:
                continue
            locs = {a[0] for a in allocations(res)} & places.capacity.keys()
            day = int(firsts[oid][0].partition("-")[0]) // DAY_MS
            for loc in locs:
                asks.setdefault(day, {}).setdefault(loc, (places.capacity[loc], []))[1].append(oid)
        for day, per_loc in asks.items():
            full: dict[str, set[str]] = {}
            for loc, oids in self.wait.call(self.store.shipments.count, day, per_loc).items():
                for oid in oids:
                    full.setdefault(oid, set()).add(loc)
            for oid, locs in full.items():
                o = firsts[oid][1].order  # type: ignore[union-attr]
                ranking = rank(o) if o.delivery.mode == "ship" else []
                res = self.fulfilments.honour(
                    oid, outcome[oid], ranking, locs, places, day, decided
                )
                outcome[oid] = res
                if res[:1] != Code.ACCEPTED:
                    held_ids.discard(oid)

    def after(
        self,
        shard: int,
        paids: list[tuple[str, bytes, events.Paid]],
        fulfilments: list[tuple[str, bytes, events.Fulfilment]],
        busy: set[str],
        records: list[str],
        new: list[Reserved],
        places: Places,
        campaign_skus: set[str],
        last_id: str,
        decided: str,
        dead: list[list[Any]],
    ) -> Later:
        """After the batch's orders, cancels and returns (``records``: their triples; no
        order has a payment or a fulfilment event and another event here: segments): its
        payments, its fulfilment events, the shipments past their claim timeout and the
        reserved orders past their deadline, none of an order the batch names (``busy``)."""
        out: list[str] = []
        tags: list[str] = []
        paid: list[str] = []
        latest = -1
        if paids:
            paid, latest = self.payments.paid(shard, paids, campaign_skus, decided, dead)
            out += paid
            tags += [PAID_TAG if k.startswith(keys.REG_STATE) else "" for k in paid[::3]]
            busy.update(p.order_id for *_, p in paids)
        if fulfilments:
            shipped = self.fulfilments.apply(shard, fulfilments, places, decided, dead)
            out += shipped
            tags += [""] * (len(shipped) // 3)
            busy.update(f.order_id for *_, f in fulfilments)
        if places.timeouts:  # shipments not claimed in time: re-routed
            moved = self.fulfilments.claims(shard, last_id, records + out, busy, places, decided)
            out += moved
            tags += [""] * (len(moved) // 3)
        gone = [  # paid: out of the deadlines
            k[len(keys.REG_STATE) :] for k in paid[::3] if k.startswith(keys.REG_STATE)
        ]
        expired = self.payments.expire(shard, last_id, new, busy, decided, gone)
        out += expired
        tags += [EXPIRED_TAG] * (len(expired) // 3)
        return Later(out, tags, latest)

    def tick(self, shard: int, after: str, places: Places, decided: str) -> Later:
        """A caught-up shard: the reserved orders past their deadline, and the shipments
        past their claim timeout."""
        out = self.payments.expire(shard, after, [], set(), decided)
        tags = [EXPIRED_TAG] * (len(out) // 3)
        if places.timeouts:
            moved = self.fulfilments.claims(shard, after, out, set(), places, decided)
            out += moved
            tags += [""] * (len(moved) // 3)
        return Later(out, tags)
