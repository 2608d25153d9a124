"""The checker's movement invariants (part of ``model``; docs/movements.md, CONTRACT.md
"Stock movements"), judged from the events pushed and the records `onestock movements` prints:

- one record per movement id with a usable id (the first copy pushed is the one recorded),
  a dead letter for the others (``model.Checker.outcomes``);
- the status the model expects wherever it is certain: an invalid movement, one naming an
  unknown SKU or location, is refused with that reason; one that only adds (a receipt, a
  positive adjustment, a count) is applied; one that takes more units than a location can
  ever hold is refused ``below_zero``. Where the outcome depends on the orders it races,
  the record must be consistent: applied figures never below zero, a ``below_zero`` names a
  line that takes, at a figure below what it takes;
- what an applied movement did (``Moves.moved``, written here, not taken from the product)
  enters the conservation law; a refused one changes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from onestock.sim.model import ms, usable

if TYPE_CHECKING:
    from onestock.sim.model import Checker, Ev, Observed

MAX = 10**9
LEAST = {"receipt": 1, "sale": 1, "transfer": 1, "adjustment": -MAX, "count": 0}
BELOW_ZERO = re.compile(r"(.+) at (.+) has (-?\d+) units, the movement takes (\d+)")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def invalid(obj: dict[str, Any]) -> bool:
    """The movement breaks the table of docs/movements.md (or its texts, kind, `to`)."""
    kind, loc, lines = obj.get("kind"), obj.get("location"), obj.get("lines")
    if kind not in LEAST or not usable(loc) or not isinstance(lines, list):
        return True
    if not 1 <= len(lines) <= 1000:
        return True
    to, at, why = obj.get("to"), obj.get("at"), obj.get("reason")
    if any(v is not None and not usable(v) for v in (to, why)):
        return True
    if at is not None and not (isinstance(at, str) and RFC3339.fullmatch(at) and ms(at)):
        return True
    if (kind == "transfer") != (to is not None) or to == loc:
        return True
    counted: set[str] = set()
    for ln in lines:
        sku, q = (ln.get("sku"), ln.get("qty")) if isinstance(ln, dict) else (None, None)
        if not usable(sku) or type(q) is not int or not LEAST[kind] <= q <= MAX:
            return True
        if (kind == "adjustment" and q == 0) or (kind == "count" and sku in counted):
            return True
        counted.add(sku)
    return False


def takes(obj: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(SKU, location) -> units a valid movement takes out there (sales, negative
    adjustments, the source of a transfer)."""
    out: Counter[tuple[str, str]] = Counter()
    for ln in obj["lines"]:
        q = ln["qty"]
        if obj["kind"] in ("sale", "transfer") or (obj["kind"] == "adjustment" and q < 0):
            out[(ln["sku"], obj["location"])] += abs(q)
    return out


class Moves:
    """The history's movements: the first copy of each movement id, its records, what the
    model expects of it, and what the applied ones did to the stock."""

    def __init__(self, evs: list[Ev], ob: Observed) -> None:
        self.first: dict[str, Ev] = {}
        for e in evs:
            if e.kind == "movement" and e.oid is not None:
                self.first.setdefault(e.oid, e)
        self.records: dict[str, list[dict[str, Any]]] = {}
        for rec in ob.movements:
            self.records.setdefault(rec["movement_id"], []).append(rec)
        cat = ob.catalogs[-1]
        self.locations = {loc["id"] for loc in cat["locations"]}
        self.skus = {s["sku"] for s in cat["skus"]}
        # hot-SKU buckets: a count holds, then commits (units back meanwhile stay on top)
        self.split = {s["sku"] for c in ob.catalogs for s in c["skus"] if s.get("buckets", 1) > 1}
        self.bound = self._bound(evs, ob)
        self.moved = self._moved()
        self.put = self._moved(write_offs=False)

    def _bound(self, evs: list[Ev], ob: Observed) -> Counter[str]:
        """Per SKU, more units than it ever has: loaded, plus every unit any valid movement
        could add (a count as much as it counts), plus every unit returned."""
        most: Counter[str] = Counter({sku: sum(locs.values()) for sku, locs in ob.base.items()})
        for e in evs:
            if e.kind == "movement" and e.obj is not None and not invalid(e.obj):
                most.update({ln["sku"]: ln["qty"] for ln in e.obj["lines"] if ln["qty"] > 0
                             and e.obj["kind"] in ("receipt", "adjustment", "count")})  # fmt: skip
        for ret in ob.returns:
            most.update({ln["sku"]: ln["qty"] for ln in ret["lines"]})
        return most

    def expected(self, obj: dict[str, Any]) -> tuple[str, str | None] | None:
        """(status, reason) the movement certainly ends with; None where it races."""
        if invalid(obj):
            return "refused", "invalid"
        if {obj["location"], obj.get("to") or obj["location"]} - self.locations:
            return "refused", "unknown_location"
        if {ln["sku"] for ln in obj["lines"]} - self.skus:
            return "refused", "unknown_sku"
        if not takes(obj):
            return "applied", None
        if any(q > self.bound[sku] for (sku, _), q in takes(obj).items()):
            return "refused", "below_zero"
        return None

    def _moved(self, write_offs: bool = True) -> Counter[tuple[str, str]]:
        """(SKU, location) -> units the applied movements added (negative: took); with the
        re-routes' write-offs (``write_offs``) counted out as sales."""
        moved: Counter[tuple[str, str]] = Counter()
        for mid, e in self.first.items():
            recs, obj = self.records.get(mid), e.obj or {}
            if not recs or recs[0]["status"] != "applied" or invalid(obj):
                continue
            kind, loc, lines = obj["kind"], obj["location"], obj["lines"]
            for i, ln in enumerate(lines):
                sku, q = ln["sku"], ln["qty"]
                if kind == "count":  # by what it found: its discrepancy
                    got = recs[0]["lines"]
                    moved[(sku, loc)] += (got[i].get("discrepancy") or 0) if i < len(got) else 0
                elif kind == "transfer":
                    moved[(sku, loc)] -= q
                    moved[(sku, obj["to"])] += q
                else:
                    moved[(sku, loc)] += -q if kind == "sale" else q
        for recs in self.records.values() if write_offs else ():  # (counted out as sales)
            for rec in recs[:1]:
                if rec.get("kind") == "write_off" and rec["status"] == "applied":
                    for ln in rec["lines"]:
                        moved[(ln["sku"], rec["location"])] -= ln["qty"]
        return moved

    def added(self, sku: str) -> int:
        """Units of ``sku`` the applied movements put anywhere (a lenient bound's part). Not
        less a re-route's write-off: the units it writes off are the order's, which counts
        them as taken already (a write-off at a location that received them would hide the
        receipt)."""
        return sum(q for (s, _), q in self.put.items() if s == sku and q > 0)


def check(c: Checker) -> None:
    m = c.moves
    for mid in m.records.keys() - m.first.keys():
        if all(r.get("kind") == "write_off" for r in m.records[mid]):
            continue  # (a re-route's: shipcheck)
        c.fail("movement.phantom", f"a movement record for {mid!r}, which no movement has")
    for mid, e in m.first.items():
        recs = m.records.get(mid, [])
        if len(recs) != 1:
            cls = "movement.missing" if not recs else "movement.duplicate"
            c.fail(cls, f"{mid!r}: {len(recs)} records in `onestock movements`")
        if recs:
            _one(c, e.obj or {}, recs[0])


def _one(c: Checker, obj: dict[str, Any], rec: dict[str, Any]) -> None:
    """One movement's record against its first copy and what the model expects."""
    mid, m = rec["movement_id"], c.moves
    want = m.expected(obj)
    got = (rec["status"], rec.get("reason"))
    if want is not None and got != want:
        c.fail("movement.status", f"{mid!r} ({obj.get('kind')}): {got}, expected {want}")
    if got[0] not in ("applied", "refused") or (got[0] == "refused") != (got[1] is not None):
        c.fail("movement.status", f"{mid!r}: status {got[0]!r}, reason {got[1]!r}")
    if want == ("refused", "invalid"):
        if not rec.get("detail"):
            c.fail("movement.reason", f"{mid!r}: refused invalid without a detail")
        return
    said = (rec.get("kind"), rec.get("location"), rec.get("to"),
            [(ln["sku"], ln["qty"]) for ln in rec.get("lines", [])])  # fmt: skip
    pushed = (obj["kind"], obj["location"], obj.get("to"),
              [(ln["sku"], ln["qty"]) for ln in obj["lines"]])  # fmt: skip
    if said != pushed:
        c.fail("movement.record", f"{mid!r}: the record says {said}, its first copy {pushed}")
    elif got == ("applied", None):
        _figures(c, obj, rec)
    elif got[0] == "refused":
        _reason(c, obj, rec)


def _figures(c: Checker, obj: dict[str, Any], rec: dict[str, Any]) -> None:
    """An applied record's figures: never below zero; a location holds at least what was
    just added there; a count's discrepancies add up."""
    mid, kind = rec["movement_id"], obj["kind"]
    for ln in rec["lines"]:
        on, to_on, q = ln.get("on_hand"), ln.get("to_on_hand"), ln["qty"]
        least = q if kind in ("receipt", "count") or (kind == "adjustment" and q > 0) else 0
        # one line of a plain SKU: one slot, set at once, nothing between
        exact = kind == "count" and len(rec["lines"]) == 1 and ln["sku"] not in c.moves.split
        if (
            on is None
            or on < least
            or (exact and on != q)
            or (kind == "transfer" and (to_on is None or to_on < q))
        ):
            c.fail("movement.figures", f"{mid!r} ({kind}) applied: line {ln}")
        if (kind == "count") != (ln.get("discrepancy") is not None):
            c.fail("movement.figures", f"{mid!r} ({kind}): discrepancy of line {ln}")
    if kind == "count" and rec.get("discrepancy") != sum(
        ln.get("discrepancy") or 0 for ln in rec["lines"]
    ):
        c.fail("movement.figures", f"{mid!r}: discrepancy {rec.get('discrepancy')} is not "
               "the sum of its lines'")  # fmt: skip


def _reason(c: Checker, obj: dict[str, Any], rec: dict[str, Any]) -> None:
    """A refusal's detail is true of the movement: the unknown name, the short line."""
    mid, why, detail = rec["movement_id"], rec.get("reason"), rec.get("detail") or ""
    m = c.moves
    if why == "below_zero":
        hit = BELOW_ZERO.fullmatch(detail)
        lines = {(ln["sku"], abs(ln["qty"])) for ln in obj["lines"]}
        ok = hit is not None and (hit[1], hit[2]) in takes(obj) and (hit[1], int(hit[4])) in lines
        if hit is None or not ok or not 0 <= int(hit[3]) < int(hit[4]):
            c.fail("movement.reason", f"{mid!r}: below_zero {detail!r} names no short line")
    elif why == "unknown_sku":
        if not any(repr(s) in detail for s in {ln["sku"] for ln in obj["lines"]} - m.skus):
            c.fail("movement.reason", f"{mid!r}: unknown_sku {detail!r}")
    elif why == "unknown_location":
        named = {obj["location"], obj.get("to")} - m.locations - {None}
        if not any(repr(x) in detail for x in named):
            c.fail("movement.reason", f"{mid!r}: unknown_location {detail!r}")
    elif why != "invalid":
        c.fail("movement.reason", f"{mid!r}: refused {why!r}, which no movement is")
