"""Stock movements in a history (feature ``movements``; docs/movements.md): receipts, sales,
adjustments, transfers and counts pushed among the orders, copies of them, invalid ones and
dead letters.

Drawn from a random source of their own (``movement_events``), so a history without them is
exactly the history of the same seed before they existed. Some lines take ``SHORT`` units,
more than a location of a history ever holds: their movement is certainly refused
(``below_zero``), which the checker can tell; the rest race the orders around them.
"""

from __future__ import annotations

import random
from typing import Any

from onestock.sim.history import INTERNAL, LOCATIONS, Event, iso

SHORT = 1000  # units no location of a history ever holds: a certain below_zero
TAKING = ("sale", "adjustment", "transfer")
AT = "2026-11-11T00:05:00Z"
BAD_AT = ["yesterday", "2026-11-11T00:05:00", "2026-13-01T00:00:00Z"]


def movement_events(
    seed: int, cat: dict[str, Any], end: float, order_ids: list[str], internal_ids: bool
) -> list[tuple[float, Event]]:
    """The history's movements, each at a push key in (-1, ``end``) among the orders (keys as
    ``history.generate`` sorts them); copies after their first."""
    rng = random.Random(seed * 1_000_003 + 11)
    locs = [loc["id"] for loc in cat["locations"]]
    skus = [s["sku"] for s in cat["skus"]]
    out: list[tuple[float, Event]] = []
    for i in range(rng.randint(3, 10)):
        mid = f"MV-{i:02d}"
        if rng.random() < 0.06 and order_ids:  # an order's id: another namespace
            mid = rng.choice(order_ids)
        elif internal_ids and rng.random() < 0.05:
            mid = rng.choice(INTERNAL).format(x=mid)
        body = _movement(rng, mid, locs, skus)
        # (most that take come early, while the orders left units to take)
        early = body["kind"] in TAKING and rng.random() < 0.6
        key = rng.uniform(-1, end / 2 if early else end)
        e = Event("movement", body)
        out.append((key, e))
        out += _copies(rng, e, key, end)
    for j in range(rng.randint(0, 3)):
        body = _unusable(rng, f"MX-{j:02d}", locs, skus)
        out.append((rng.uniform(-1, end), Event("movement", body)))
    return out


def _movement(rng: random.Random, mid: str, locs: list[str], skus: list[str]) -> dict[str, Any]:
    """A well-formed movement of a kind drawn at random (a few of them certainly short)."""
    kind = rng.choice(["receipt"] * 3 + ["sale"] * 2 + ["adjustment"] * 2 + ["transfer"] * 3
                      + ["count"] * 2)  # fmt: skip
    src = rng.choice(locs)
    chosen = rng.sample(skus, min(len(skus), rng.choice([1, 1, 2, 2, 3])))
    body: dict[str, Any] = {"type": "movement", "movement_id": mid, "kind": kind,
                            "location": src}  # fmt: skip
    if kind == "receipt":
        lines = [(s, rng.randint(1, 5)) for s in chosen]
    elif kind == "count":
        lines = [(s, rng.randint(0, 6)) for s in chosen]
    elif kind == "adjustment":
        lines = [(s, rng.choice([-3, -2, -1, -1, 1, 2, 4])) for s in chosen]
        if rng.random() < 0.5:
            body["reason"] = rng.choice(["damaged", "found in the back"])
    else:
        lines = [(s, rng.choice([1, 1, 2, 3])) for s in chosen]
        if kind == "transfer":
            body["to"] = rng.choice([x for x in locs if x != src])
    if kind in TAKING and rng.random() < 0.12:  # two lines of one SKU: they add up
        lines.append((lines[0][0], rng.randint(1, 2)))
    if kind in TAKING and rng.random() < 0.15:  # one line certainly short
        k = rng.randrange(len(lines))
        lines[k] = (lines[k][0], -SHORT if kind == "adjustment" else SHORT)
    body["lines"] = [{"sku": s, "qty": q} for s, q in lines]
    if rng.random() < 0.4:
        body["at"] = rng.choice([AT, iso(1_800_000_000_000 + rng.randrange(10**6))])
    return body


def _copies(rng: random.Random, e: Event, key: float, end: float) -> list[tuple[float, Event]]:
    """Maybe an exact copy (a retried delivery), maybe a copy that says something else under
    the same movement id (the first one pushed is the one that counts)."""
    out: list[tuple[float, Event]] = []
    if rng.random() < 0.15:
        at = key + 0.001 if rng.random() < 0.4 else rng.uniform(key, end + 0.5)
        out.append((at, Event("dup", of=id(e))))  # resolved by history.generate
    if rng.random() < 0.06:
        other = dict(e.body or {})
        other["lines"] = [{**ln, "qty": ln["qty"] + 1} for ln in other["lines"]]
        out.append((rng.uniform(key + 0.001, end + 0.5), Event("movement", other)))
    return out


def _unusable(rng: random.Random, mid: str, locs: list[str], skus: list[str]) -> dict[str, Any]:
    """A movement refused whole (invalid, unknown SKU or location) or, without a usable
    movement id, a dead letter."""
    loc, sku = rng.choice(locs), rng.choice(skus)
    body: dict[str, Any] = {"type": "movement", "movement_id": mid, "kind": "receipt",
                            "location": loc, "lines": [{"sku": sku, "qty": 2}]}  # fmt: skip
    lines = body["lines"]
    how = rng.randrange(16)
    if how == 0:
        lines[0]["sku"] = "NOPE"
    elif how == 1:
        body["location"] = rng.choice([x for x, *_ in LOCATIONS if x not in locs] or ["nowhere"])
    elif how == 2:
        body.update(kind="transfer", to="nowhere")
    elif how == 3:
        body["kind"], lines[0]["qty"] = rng.choice(
            [("receipt", 0), ("sale", -1), ("adjustment", 0), ("count", -2), ("receipt", 1.5),
             ("transfer", 10**9 + 1)])  # fmt: skip
    elif how == 4:
        body["kind"] = "count"
        lines.append({"sku": sku, "qty": 1})  # one SKU counted twice
    elif how == 5:
        body["kind"] = "transfer"  # without `to`
    elif how == 6:
        body.update(kind="transfer", to=loc)
    elif how == 7:
        body.update(kind="sale", to=loc)
    elif how == 8:
        body["kind"] = rng.choice(["levitate", 7, None])
    elif how == 9:
        body["at"] = rng.choice(BAD_AT)
    elif how == 10:
        body["lines"] = rng.choice([[], [{"sku": sku}], "two units"])
    elif how == 11:
        lines[0]["sku"] = rng.choice(["", "SKU\x07", "x" * 300])
    else:  # dead letters: no usable movement id
        body["movement_id"] = rng.choice([None, "", 7, "x" * 300, "MV\x1f1"])
        if body["movement_id"] is None:
            del body["movement_id"]
    return body
