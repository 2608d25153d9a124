"""Fulfilment feedback in a history (feature ``fulfilment``; docs/fulfilment.md): the stores'
``shipped``, ``picked_up``, ``claimed`` and ``rejected`` events after the orders, and a daily
capacity on a location now and then.

Drawn from a random source of their own (``fulfilment_events``), so a history without them
is exactly the history of the same seed before they existed. Which location ships an order
is only known once it is decided, and a history is a pure function of its seed: the events
name a location drawn from the catalog (now and then one it does not have), and the checker
(``shipcheck``) judges each from the record versions the run wrote, in stream order. With 2
to 4 locations, about half of them name a location that has a shipment of the order: a
rejection of it re-routes the order (a write-off and a new version), the others are dead
letters (no shipment there). Around them: copies, a rejection after a ``shipped`` of the same
shipment, events before their order and for order ids no order has, and, for pending orders
(their payment may come or not), only ``claimed`` and ``shipped`` (no re-route: the payment
check judges their versions).
"""

from __future__ import annotations

import random
from typing import Any

from onestock.sim.features import Features
from onestock.sim.history import SUR, Event

STATUSES = ["rejected"] * 9 + ["shipped"] * 4 + ["picked_up"] * 2 + ["claimed"] * 5
UNKNOWN_LOCATION = "st-zz"


def fulfilment_events(
    seed: int,
    cat: dict[str, Any],
    base: list[Event],
    end: float,
    f: Features,
    returned: set[Any] | None = None,
) -> list[tuple[float, Event]]:
    """Fulfilment events of some of ``base`` (the orders in push order, at keys 0, 1, ...),
    each at a push key (as ``history.generate`` sorts them); maybe a daily capacity on one
    location of ``cat`` (changed in place). Orders in ``returned`` (with returns) get no
    rejection unless ``f.reject_returned``."""
    rng = random.Random(seed * 3_000_017 + 11)
    locations = [loc["id"] for loc in cat["locations"]]
    if rng.random() < 0.3 and f.capacity:
        rng.choice(cat["locations"])["daily_capacity"] = rng.randint(2, 8)
        if not f.capacity_rules:
            no_rules(cat)

    def event(oid: str, status: str, loc: str | None = None) -> Event:
        if loc is None:
            loc = rng.choice(locations) if rng.random() < 0.92 else UNKNOWN_LOCATION
        body: dict[str, Any] = {"type": "fulfilment", "order_id": oid, "location": loc,
                                "status": status}  # fmt: skip
        if rng.random() < 0.3:
            body["reason"] = rng.choice(["shelf empty", "count was wrong", "ok"])
        return Event("fulfilment", body)

    out: list[tuple[float, Event]] = []
    for i, e in enumerate(base):
        body = e.body or {}
        oid = body["order_id"]
        if SUR in oid or not oid.startswith("o-") or rng.random() >= 0.4:
            continue
        pay = body.get("payment")
        pending = isinstance(pay, dict) and pay.get("status") == "pending"
        pending = pending or (not f.reject_returned and oid in (returned or set()))
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            early = rng.random() < 0.05
            k = rng.uniform(-0.99, i - 0.01) if early else rng.uniform(i + 0.01, end + 0.5)
            status = rng.choice(["claimed", "shipped"] if pending else STATUSES)
            ev = event(oid, status)
            out.append((k, ev))
            if f.dups and rng.random() < 0.15:  # a retried delivery: an exact copy
                at = k + 0.001 if rng.random() < 0.4 else rng.uniform(k + 0.01, end + 0.5)
                out.append((at, Event("dup", of=id(ev))))  # resolved by history.generate
            if not pending and status == "shipped" and rng.random() < 0.3:  # then rejected
                loc = (ev.body or {})["location"]
                out.append((rng.uniform(k + 0.01, end + 0.6), event(oid, "rejected", loc)))
    for j in range(rng.randint(0, 2)):  # events of orders that never come
        out.append((rng.uniform(-1, end), event(f"f-{j:02d}", rng.choice(STATUSES))))
    return out


def no_rules(cat: dict[str, Any]) -> None:
    """The catalog without its campaign, per-customer limits and channel locks (in place)."""
    cat.pop("campaigns", None)
    for sku in cat["skus"]:
        sku.pop("per_customer_limit", None)
        sku.pop("channel_locks", None)
