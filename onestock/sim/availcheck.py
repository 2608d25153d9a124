"""The checker's availability invariant (part of ``model``; CONTRACT.md "Availability"): what
onestock says each channel may sell of each SKU, read at fixed times after a history, equals
a plain computation from the stock the model expects, the last catalog and the orders.

The plain computation, as the deciders judge an order of that channel (``lock_take`` in
state/lua/lib_stock.lua, the routing floors of state/lua/lib_route.lua), written here anew:

- an online channel's order may not take a location's safety stock (a store channel's may):
  it can have at most the sum over locations of what lies above the floor;
- a channel may not take the units other channels' locks still hold: a lock is active while
  the reading time is before its ``until`` and holds its units less those its channel took
  while it was active (orders of that channel paid before ``until``: each draws from the
  lock what it still held, so together min(qty, their units); a cancel gives none back);

so available = max(0, min(above the floors, all units - others' active locks' left)).

A SKU split into hot-SKU buckets (no locks: the catalog refuses them) keeps a location's
safety stock in bucket 0 alone; units that sit in another bucket there are anyone's, and
which bucket holds a unit is not public: an online channel's figure lies between the plain
one and the one without floors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onestock.sim.model import ms, per_sku

if TYPE_CHECKING:
    from onestock.sim.model import Checker

LockLeft = tuple[str, int, int]  # channel, units the lock still holds, until (epoch ms)


def plain(
    levels: dict[str, int], floors: dict[str, int], locks: list[LockLeft], channel: str, at: int
) -> int:
    """What ``channel`` may sell at ``at`` (``floors``: per location the units it may not
    take there)."""
    above = sum(max(0, q - floors.get(loc, 0)) for loc, q in levels.items())
    units = sum(q for q in levels.values() if q > 0)
    others = sum(left for ch, left, until in locks if ch != channel and at < until)
    return max(0, min(above, units - others))


def status(available: int, threshold: int | None) -> str:
    if available == 0:
        return "sold_out"
    return "low_stock" if threshold is not None and available <= threshold else "in_stock"


def locks_left(c: Checker, cat: dict[str, Any]) -> dict[str, list[LockLeft]]:
    """Per SKU its locks: channel, units still held (qty less what its channel drew), until."""
    out: dict[str, list[LockLeft]] = {}
    for s in cat["skus"]:
        for lock in s.get("channel_locks", []):
            until = ms(lock["until"]) or 0
            drawn = 0
            for oid, took in c.took.items():
                obj = (c.first[oid].obj or {}) if oid in c.first else {}
                paid = ms(obj.get("paid_at"))
                if obj.get("channel") == lock["channel"] and paid is not None and paid < until:
                    drawn += per_sku(took)[s["sku"]]
            left = lock["qty"] - min(lock["qty"], drawn)
            out.setdefault(s["sku"], []).append((lock["channel"], left, until))
    return out


def check(c: Checker) -> None:
    """Every (reading time, SKU, channel) onestock answered, against ``plain``."""
    if not c.ob.availability:
        return
    cat = c.ob.catalogs[-1]
    safety = {loc["id"]: loc.get("safety_stock", 0) for loc in cat["locations"]}
    online = {ch["id"]: ch.get("kind", "online") == "online" for ch in cat["channels"]}
    low = {s["sku"]: s.get("low_stock_threshold") for s in cat["skus"]}
    locks = locks_left(c, cat)
    levels: dict[str, dict[str, int]] = {sku: {} for sku in low}
    for (sku, loc), q in c.expect.items():
        if sku in levels:
            levels[sku][loc] = q
    split = {s["sku"] for s in cat["skus"] if s.get("buckets", 1) > 1}
    for at, view in sorted(c.ob.availability.items()):
        for sku in sorted(low.keys() - c.unbalanced):  # (a broken balance is reported)
            for ch, is_online in online.items():
                floors = safety if is_online else {}
                want = plain(levels[sku], floors, locks.get(sku, []), ch, at)
                most = plain(levels[sku], {}, [], ch, at) if sku in split else want
                got, said = view.get(sku, {}).get(ch, (None, None))
                if got is None or not want <= got <= most:
                    c.fail("availability.mismatch", f"{sku} for {ch} at {at}: onestock says "
                           f"{got}, the model {want}..{most} (stock {levels[sku]}, locks "
                           f"{locks.get(sku, [])})")  # fmt: skip
                elif said is not None and said != status(got, low[sku]):
                    c.fail("availability.status", f"{sku} for {ch} at {at}: {said} with "
                           f"{got} available, threshold {low[sku]}")  # fmt: skip
