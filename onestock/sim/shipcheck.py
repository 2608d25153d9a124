"""The checker's fulfilment invariants (part of ``model``; docs/fulfilment.md), judged from
the events pushed, every record version and the write-off records `onestock movements`
prints:

- every re-route (an accepted version followed by an accepted or ``sold_out`` rejected one,
  not a payment's) drops exactly one location, which has exactly one ``write_off`` record
  ``<order>@<location>`` with that shipment's lines; an accepted next version ships the
  same units per SKU, keeps the other shipments (their units stay where they were) and
  ships from no location that rejected the order before; a write-off no re-route explains
  is a violation (``reroutes``);
- every fulfilment event ends as the order's versions, played in stream order, say
  (``_play``): a rejection of a shipment that exists and was not shipped is the next
  version; a ``shipped``, ``picked_up`` or ``claimed`` of one has no outcome; a copy has
  none; an event for an order that is not (yet) accepted, a location without a shipment,
  or a shipment shipped (rejected) before is a dead letter with the documented reason; a
  pending order's events are refused for a documented reason or have no outcome;
- no location ever counted more orders a day than its ``daily_capacity``, and every order
  an accepted version ships from such a location is counted there (``capacity``).

Conservation with write-offs is ``model``'s (a write-off counts as a sale at the rejecting
location; a re-routed order holds what its latest version ships) and ``ops.audit``'s.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from onestock.sim.model import ordered, per_sku, units

if TYPE_CHECKING:
    from onestock.sim.model import Checker, Ev

REFUSED = re.compile(r"fulfilment refused: (.*) - at `\$\.location`")
HELD = "the order's record waits for its first-N rank to settle"
NO_ORDER = "no order of this id came before it"
NOT_ACCEPTED = "the order was not accepted"
CANCELLED = "the order was cancelled"


def check(c: Checker) -> None:
    reroutes(c)
    evs = _events_of(c)
    for oid, mine in evs.items():
        if any(e.kind == "fulfilment" for e in mine):
            _judge(c, oid, mine)
    capacity(c)


def _events_of(c: Checker) -> dict[str, list[Ev]]:
    out: dict[str, list[Ev]] = defaultdict(list)
    for e in c.evs:
        if e.kind in ("order", "cancel", "fulfilment") and e.oid is not None:
            out[e.oid].append(e)
    return out


def locs(rec: dict[str, Any]) -> set[str]:
    return {s["location"] for s in rec["shipments"]}


def _lines_at(rec: dict[str, Any], loc: str) -> Counter[str]:
    return per_sku(Counter({k: q for k, q in units(rec["shipments"]).items() if k[1] == loc}))


def _write_offs(c: Checker) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in c.ob.movements:
        if m.get("kind") == "write_off":
            out[m["movement_id"]].append(m)
    return out


def reroutes(c: Checker) -> None:
    """Every re-route's dropped location, write-off and next version (module docstring)."""
    offs = _write_offs(c)
    used: set[str] = set()
    for oid, recs in c.versions.items():
        rejected: set[str] = set()
        for prev, nxt in zip(recs, recs[1:], strict=False):
            if prev["status"] != "accepted" or nxt["status"] not in ("accepted", "rejected"):
                continue
            loc = _dropped(c, oid, prev, nxt)
            if loc is None:
                continue
            mid = f"{oid}@{loc}"
            used.add(mid)
            _write_off(c, mid, offs.get(mid, []), _lines_at(prev, loc))
            rejected.add(loc)
            if nxt["status"] == "accepted" and locs(nxt) & rejected:
                c.fail("ship.reroute_back", f"{oid!r} version {nxt.get('version')} ships from "
                       f"{sorted(locs(nxt) & rejected)}, which rejected it")  # fmt: skip
    for mid in offs.keys() - used:
        c.fail("ship.writeoff_orphan", f"a write-off {mid!r} no re-route explains")


def _dropped(c: Checker, oid: str, prev: dict[str, Any], nxt: dict[str, Any]) -> str | None:
    """The location a re-route from ``prev`` to ``nxt`` dropped (None: a violation, told)."""
    v = nxt.get("version")
    if nxt["status"] == "rejected":
        named = [loc for loc in sorted(locs(prev)) if loc in (nxt.get("detail") or "")]
        if nxt.get("reason") != "sold_out" or len(named) != 1:
            why = f"{nxt.get('reason')!r} ({nxt.get('detail')!r})"
            c.fail("ship.reroute_rejected", f"{oid!r} version {v}: rejected {why} after "
                   f"{sorted(locs(prev))}")  # fmt: skip
            return None
        return named[0]
    gone = locs(prev) - locs(nxt)
    before, after = units(prev["shipments"]), units(nxt["shipments"])
    if len(gone) != 1:
        c.fail("ship.reroute_shape", f"{oid!r} version {v}: {sorted(locs(prev))} -> "
               f"{sorted(locs(nxt))}")  # fmt: skip
        return None
    loc = next(iter(gone))
    kept = all(after[k] >= q for k, q in before.items() if k[1] != loc)
    if not kept or per_sku(before) != per_sku(after):
        c.fail("ship.reroute_units", f"{oid!r} version {v}: {dict(before)} -> {dict(after)} "
               f"(rejected at {loc!r})")  # fmt: skip
    return loc


def _write_off(c: Checker, mid: str, recs: list[dict[str, Any]], held: Counter[str]) -> None:
    if len(recs) != 1:
        c.fail("ship.writeoff_count", f"{mid!r}: {len(recs)} write-off records")
        return
    rec = recs[0]
    got: Counter[str] = Counter()
    for ln in rec["lines"]:
        got[ln["sku"]] += ln["qty"]
    if (rec["status"], rec.get("reason")) != ("applied", "rejected") or got != held:
        c.fail("ship.writeoff", f"{mid!r}: {rec['status']} {rec.get('reason')!r} "
               f"{dict(got)}; the shipment held {dict(held)}")  # fmt: skip


def _raw(e: Ev) -> str:
    return e.raw.decode("utf-8", "replace")


def _why(reason: str) -> str:
    hit = REFUSED.fullmatch(reason)
    return hit[1] if hit else "other: " + reason


def _letters(c: Checker, mine: list[Ev]) -> Counter[tuple[str, str]]:
    raws = {_raw(e) for e in mine if e.kind == "fulfilment"}
    return Counter((d["raw"], _why(d["reason"])) for d in c.ob.deadletters if d["raw"] in raws)


def _judge(c: Checker, oid: str, mine: list[Ev]) -> None:
    got = _letters(c, mine)
    if oid in c.pending:  # (paid or not, expired or not: the payment check's to judge)
        first = c.first[oid]
        for e in mine:
            if e.kind == "fulfilment" and e.i < first.i:
                got[(_raw(e), NO_ORDER)] -= 1
        for (raw, why), n in got.items():
            o = _Order(c.versions.get(oid, []))
            v1 = o.recs[0]["status"] if o.recs else None  # (not accepted: the known fault)
            maybe = v1 == "rejected" or o.early()
            if n < 0 or why.startswith("other: ") or (why == NOT_ACCEPTED and not maybe):
                c.fail("ship.pending", f"{oid!r}: {n} x {why!r} for {raw[:90]}")
        return
    want, left = _play(c, oid, mine, Counter(got))
    if +want != +got:
        c.fail("ship.letters", f"{oid!r}: dead letters {dict(+got)}, expected {dict(+want)} "
               f"(versions {[r['status'] for r in c.versions.get(oid, [])]})")  # fmt: skip
    if left:
        c.fail("ship.versions", f"{oid!r}: {left} versions no event explains "
               f"({[r['status'] for r in c.versions.get(oid, [])]})")  # fmt: skip


class _Order:
    """An order's state as its events are played: its current version, what each location
    said of its shipment."""

    def __init__(self, recs: list[dict[str, Any]]) -> None:
        self.recs = recs
        self.cur: int | None = None
        self.state = ""
        self.said: dict[str, str] = {}
        self.claimed: set[str] = set()

    def came(self) -> None:
        if self.cur is None and self.recs:
            self.cur = 0
            self.state = self.recs[0]["status"]

    def early(self) -> bool:
        """Cancelled before it was decided (its one record cancelled, with no shipments)."""
        return len(self.recs) == 1 and self.recs[0]["status"] == "cancelled"

    def cancel(self) -> None:
        if self.cur is None or self.state != "accepted":
            return
        later = [j for j in range(self.cur + 1, len(self.recs))
                 if self.recs[j]["status"] == "cancelled"]  # fmt: skip
        self.cur = later[0] if later else self.cur
        self.state = "cancelled"

    def refusal(self, loc: str, status: str) -> str | None:
        """As dataflows/fulfilment.py's ``_refusal`` must judge it ("": a copy)."""
        if self.cur is None:
            return NO_ORDER
        if self.state == "cancelled":
            return CANCELLED
        if self.state != "accepted":
            return NOT_ACCEPTED
        before = self.said.get(loc)
        if before is not None:
            if before == status or (before != "rejected" and status in ("shipped", "picked_up")):
                return ""
            return f"its shipment at {loc!r} was {before.replace('_', ' ')} before"
        if status == "claimed" and loc in self.claimed:
            return ""
        if loc not in locs(self.recs[self.cur]):
            return f"the order has no shipment at {loc!r}"
        return None


def _play(
    c: Checker, oid: str, mine: list[Ev], got: Counter[tuple[str, str]]
) -> tuple[Counter[tuple[str, str]], int]:
    """The dead letters the order's events must have, and how many of its versions none
    explains. A campaign order's event may find its record waiting for its rank (``HELD``):
    taken as such where the run says so."""
    o = _Order(c.versions.get(oid, []))
    gifted = {camp["sku"] for camp in c.ob.catalogs[-1].get("campaigns") or []}
    first = c.first.get(oid)
    campaign = first is not None and bool(gifted & set(ordered(first.obj or {})))
    want: Counter[tuple[str, str]] = Counter()
    for e in mine:
        if e.kind == "order":
            o.came()
        elif e.kind == "cancel":
            o.cancel()
        elif e.kind == "fulfilment":
            obj = e.obj or {}
            loc, status = str(obj.get("location")), str(obj.get("status"))
            why, raw = o.refusal(loc, status), _raw(e)
            if why not in ("", NO_ORDER) and campaign and got[(raw, HELD)] > 0:  # (it waited)
                got[(raw, HELD)] -= 1
                want[(raw, HELD)] += 1
            elif why == CANCELLED and o.early() and got[(raw, NOT_ACCEPTED)] > 0:
                got[(raw, NOT_ACCEPTED)] -= 1  # (the known fault: tests/test_fulfilment_sim.py)
                want[(raw, NOT_ACCEPTED)] += 1
            elif why:
                want[(raw, why)] += 1
            elif why is None:
                _applied(c, oid, o, loc, status)
    left = len(o.recs) - 1 - (o.cur or 0) if o.recs else 0
    return want, left


def _applied(c: Checker, oid: str, o: _Order, loc: str, status: str) -> None:
    if status == "claimed":
        o.claimed.add(loc)
        return
    o.said[loc] = status
    if status != "rejected":
        return
    assert o.cur is not None
    nxt = o.cur + 1
    if nxt >= len(o.recs) or o.recs[nxt]["status"] not in ("accepted", "rejected"):
        c.fail("ship.reroute_missing", f"{oid!r}: rejected at {loc!r}, no re-route version "
               f"after {o.recs[o.cur].get('version')}")  # fmt: skip
        return
    o.cur = nxt
    o.state = o.recs[nxt]["status"]


def capacity(c: Checker) -> None:
    """No location's day counted more orders than its capacity; every order an accepted
    version ships from such a location counted there."""
    caps = {loc["id"]: loc["daily_capacity"] for loc in c.ob.catalogs[-1]["locations"]
            if "daily_capacity" in loc}  # fmt: skip
    counted: dict[str, set[str]] = defaultdict(set)
    for (loc, day), oids in c.ob.capacity.items():
        counted[loc] |= oids
        if loc in caps and len(oids) > caps[loc]:
            c.fail("ship.capacity", f"{loc!r} day {day}: {len(oids)} orders, capacity {caps[loc]}")
    if not c.ob.capacity:
        return  # (not read: the CLI mode)
    for oid, recs in c.versions.items():
        for r in recs:
            for loc in locs(r) & caps.keys() if r["status"] == "accepted" else set():
                if oid not in counted[loc]:
                    c.fail("ship.capacity_uncounted", f"{oid!r} version {r.get('version')} "
                           f"ships from {loc!r}, which never counted it")  # fmt: skip
