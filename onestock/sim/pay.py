"""Payments in a history (feature ``payments``; docs/payments.md): pending orders, ``paid``
events, and the cancels and returns around them.

Drawn from a random source of their own (``payment_events``), so a history without them is
exactly the history of the same seed before they existed. A pending order's deadline is of
one of four classes, so the checker knows the outcome from the order of events alone where
it can:

- **past**: an hour before the history is pushed: the order is reserved, then expires (or a
  cancel takes it first); every ``paid`` event of it is late;
- **far**: an hour after: it never expires within a history; a ``paid`` pays it;
- **near**: within about a second of the pushes, and **the catalog's** (``payment_deadline_s``
  of 1 or 2 s, or 30 or 60 minutes): the outcome depends on the entry ids the events got,
  which the checker reads back (``Observed.entry_ms``) to apply the stream-clock rule.

``paid`` events come after their order (copies, a second payment), now and then before it,
for orders that need none, and for order ids no order has; their ``paid_at`` never runs
ahead of the orders around them (less than a quarter of the campaign's lateness behind), so
first-N ranks stay well defined.
"""

from __future__ import annotations

import random
from typing import Any

from onestock.sim.features import Features
from onestock.sim.history import BAD_TIMES, SUR, Event, _returns

HOUR = 3_600_000
# the render time, as an offset from the anchor (``fast.anchor_of``: the last paid_at is
# 5 s before it)
AHEAD_MS = 5000
# deadlines that are no RFC 3339 time with an offset from 2000 on: the order is `invalid`
BAD_DEADLINES = ["tomorrow", "2026-11-11T00:30:00", "1969-12-31T23:59:59Z"]


def payment_events(
    seed: int, cat: dict[str, Any], base: list[Event], end: float, lateness: int, f: Features
) -> list[tuple[float, Event]]:
    """Some of ``base`` (the orders in push order, at keys 0, 1, ...) made pending (their
    bodies changed in place), the catalog's default deadline, and the payment events, each
    at a push key among the orders (as ``history.generate`` sorts them)."""
    rng = random.Random(seed * 2_000_029 + 7)
    if rng.random() < 0.8:
        cat["payment_deadline_s"] = rng.choice([1, 2, 1800, 3600])
    highs: list[int] = []  # the greatest paid_at offset of the orders up to each key
    hi = 0
    for e in base:
        t = (e.body or {}).get("paid_at")
        hi = max(hi, t) if isinstance(t, int) else hi
        highs.append(hi)
    now = hi + AHEAD_MS
    locations = [loc["id"] for loc in cat["locations"]]

    def paid(oid: str, key: float) -> Event:
        """A payment pushed at ``key``: paid at the orders' time there, a little behind."""
        at = highs[min(max(int(key), 0), len(highs) - 1)] if highs else 0
        behind = rng.randrange(max(1, lateness // 4))
        body: dict[str, Any] = {"type": "paid", "order_id": oid, "paid_at": max(0, at - behind)}
        if f.bad_times and rng.random() < 0.06:  # (1969, year 1, 2062: no payment)
            body["paid_at"] = rng.choice(BAD_TIMES if f.future_paid else BAD_TIMES[:2])
        elif f.bad_times and rng.random() < 0.03:
            del body["paid_at"]
        return Event("paid", body)

    out: list[tuple[float, Event]] = []
    for i, e in enumerate(base):
        body = e.body or {}
        oid = body["order_id"]
        if SUR in oid:
            continue
        r = rng.random()
        if r < 0.32:
            body["payment"] = _payment(rng, f, now)
            out += _around(rng, f, i, body, end, paid, locations)
        elif r < 0.36:
            body["payment"] = {"status": "paid"}
        elif r < 0.42:  # a payment of an order that needs none (a copy changes nothing)
            k = rng.uniform(i + 0.01, end)
            out.append((k, paid(oid, k)))
    for j in range(rng.randint(0, 2)):  # payments of orders that never come
        k = rng.uniform(-1, end)
        out.append((k, paid(f"p-{j:02d}", k)))
    return out


def _payment(rng: random.Random, f: Features, now: int) -> dict[str, Any]:
    """A pending payment with a deadline of a class drawn at random (offsets from the
    anchor; see the module's docstring)."""
    if f.bad_times and rng.random() < 0.04:
        return {"status": "pending", "deadline": rng.choice(BAD_DEADLINES)}
    how = rng.random()
    if how < 0.28:
        deadline = now - HOUR - rng.randrange(60_000)  # past
    elif how < 0.55:
        deadline = now + HOUR + rng.randrange(60_000)  # far
    elif how < 0.8:
        deadline = now + rng.randrange(-300, 1500)  # near
    else:
        return {"status": "pending"}  # the catalog's
    return {"status": "pending", "deadline": deadline}


def _around(
    rng: random.Random,
    f: Features,
    i: int,
    body: dict[str, Any],
    end: float,
    paid: Any,
    locations: list[str],
) -> list[tuple[float, Event]]:
    """The events of pending order ``i``: maybe a payment (maybe before the order, maybe
    delivered twice, maybe a second one), a cancel, returns (as ``f`` allows them)."""
    oid = body["order_id"]
    out: list[tuple[float, Event]] = []
    if rng.random() < 0.72:
        early = rng.random() < 0.08
        k = rng.uniform(-0.99, i - 0.01) if early else rng.uniform(i + 0.01, end)
        p = paid(oid, k)
        out.append((k, p))
        if rng.random() < 0.2 and f.dups:  # a retried delivery: an exact copy
            at = k + 0.001 if rng.random() < 0.4 else rng.uniform(k + 0.01, end + 0.5)
            out.append((at, Event("dup", of=id(p))))  # resolved by history.generate
        if rng.random() < 0.12:  # a second payment, paid at another time
            k2 = rng.uniform(k + 0.01, end + 0.5)
            out.append((k2, paid(oid, k2)))
    if rng.random() < 0.2 and f.cancels:
        cancel = Event("cancel", {"type": "cancel", "order_id": oid})
        out.append((rng.uniform(i + 0.01, end + 0.5), cancel))
    if rng.random() < 0.18 and f.returns:
        for ret in _returns(rng, body, locations):
            out.append((rng.uniform(i + 0.01, end + 0.5), Event("return", ret)))
    return out
