"""The checker: a history's outputs against the contract's invariants.

Not a second implementation of routing: it re-adds what the outputs say and asks whether the
sums and orders hold. (a) one outcome per event, nothing missing or extra; (b) stock
conserved per SKU and location from the loaded levels and the applied movements, never
below zero; (c) per-customer limits never exceeded, and a ``limit_exceeded`` never without
a reason; (d) channel locks and VIP pre-sales honoured as far as the outputs show; (e)
first-N ranks follow (paid_at, order_id); (f) no unit given back twice; (g) one record per
stock movement, the status the model expects, figures consistent (``movecheck``); (h) every
channel's availability equal to a plain model's (``availcheck``); (i) record versions 1..n
per order, and every pending order and payment as the stream clock decides it
(``paycheck``); (j) every fulfilment event, re-route, write-off and daily capacity as
docs/fulfilment.md says (``shipcheck``). Each violation is (class, detail).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

Violation = tuple[str, str]


@dataclass
class Observed:
    """What a run of a history produced, read back the way users read it."""

    lines: list[bytes]  # the events pushed, in push order
    shards: int
    catalogs: list[dict[str, Any]]  # the initial catalog, then the reloaded one
    base: dict[str, dict[str, int]]  # the stock levels conservation is measured from
    reload_window: tuple[int, int] | None  # wall ms around the reload
    fulfilments: list[dict[str, Any]]  # `onestock fulfilments`
    versions: list[dict[str, Any]]  # every record the output streams hold, in order
    deadletters: list[dict[str, Any]]
    returns: list[dict[str, Any]]  # `onestock returns`
    stock: dict[str, Any]  # `onestock stock --json`
    gifts: dict[str, Any] | None  # `onestock gifts CAMPAIGN --json`
    alerts: list[dict[str, Any]]
    ranks: list[tuple[str, str, int, str, bool]]  # campaign, order id, rank, gift from, late
    problems: list[Violation] = field(default_factory=list)  # hangs, crashes, tracebacks
    # order ids certainly judged by the reloaded rules (None: those decided after the reload)
    after_reload: set[str] | None = None
    skew_ms: int = 0  # how far decided_at may run behind decision order (concurrent workers)
    # wall ms of the first crash: a replayed decision's record is dated by its replay, so
    # from then on decided_at says nothing about the order of decisions
    first_crash_ms: int | None = None
    movements: list[dict[str, Any]] = field(default_factory=list)  # `onestock movements`
    # what each channel may sell, read at fixed times: at ms -> SKU -> channel -> (available,
    # status; None where the command read does not print one)
    availability: dict[int, dict[str, dict[str, tuple[int, str | None]]]] = field(
        default_factory=dict
    )
    # per event pushed: the ms of its input entry id, the stream's clock (0: not known)
    entry_ms: list[int] = field(default_factory=list)
    # wall ms: every payment deadline before the first had passed when the drain ended (its
    # expiry due), none after the second had (None: not known, e.g. the drain hung)
    drained: tuple[int, int] | None = None
    rank_paid: dict[str, int] = field(default_factory=dict)  # order id -> paid_at it ranked by
    # (location, day) -> the orders counted against its daily capacity (empty: not read)
    capacity: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    # push indices of the orders the fast driver made raise after deciding (feature poison):
    # each is quarantined, a dead letter; a later copy of it gets its record
    poisoned: list[int] = field(default_factory=list)
    # order ids a decide.lua call took units for right before the reload, its run dying
    # before their records (fast mode's aim, feature reload_changes_channel): each keeps it
    kept: set[str] = field(default_factory=set)


@dataclass
class Ev:
    i: int
    raw: bytes
    kind: str  # order | cancel | return | movement | paid | fulfilment | dead
    oid: str | None  # a movement's: its movement id
    obj: dict[str, Any] | None
    shard: int


def usable(text: Any) -> TypeGuard[str]:
    """An id or name the contract accepts: a string of 1 to 256 printable characters."""
    return isinstance(text, str) and 0 < len(text) <= 256 and text.isprintable()


def classify(lines: list[bytes], shards: int) -> list[Ev]:
    """Each event as the contract sees it: a usable order_id (a movement's: movement_id) in
    a JSON object; everything else is a dead letter."""
    out = []
    kinds = {None: "order", "order": "order", "cancel": "cancel", "return": "return",
             "movement": "movement", "paid": "paid", "fulfilment": "fulfilment"}  # fmt: skip
    for i, raw in enumerate(lines):
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        obj = obj if isinstance(obj, dict) else {}
        t = obj.get("type")
        kind = kinds.get(t, "dead") if t is None or isinstance(t, str) else "dead"
        oid = obj.get("movement_id" if kind == "movement" else "order_id")
        if not usable(oid):
            out.append(Ev(i, raw, "dead", None, None, zlib.crc32(raw) % shards))
            continue
        out.append(Ev(i, raw, kind, oid, obj, zlib.crc32(oid.encode()) % shards))
    return out


def ms(text: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text)).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None


def units(shipments: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(SKU, location) -> units of a record's shipments."""
    got: Counter[tuple[str, str]] = Counter()
    for s in shipments:
        for ln in s["lines"]:
            got[(ln["sku"], s["location"])] += ln["qty"]
    return got


def per_sku(c: Counter[tuple[str, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (sku, _), q in c.items():
        out[sku] += q
    return out


def cancelled_back(
    shipments: list[dict[str, Any]], returned: Counter[str]
) -> Counter[tuple[str, str]]:
    """What a cancel gives back (docs/intake.md "Cancellations"): the order's shipments less what
    returns brought back before, taken off its last allocations first."""
    left = Counter(returned)
    back: Counter[tuple[str, str]] = Counter()
    for s in reversed(shipments):
        for ln in reversed(s["lines"]):
            off = min(left[ln["sku"]], ln["qty"])
            left[ln["sku"]] -= off
            back[(ln["sku"], s["location"])] += ln["qty"] - off
    return +back


def ordered(obj: dict[str, Any]) -> Counter[str]:
    want: Counter[str] = Counter()
    for ln in obj.get("lines", []):
        want[ln["sku"]] += ln["qty"]
    return want


class Checker:
    def __init__(self, ob: Observed) -> None:
        self.ob = ob
        self.v: list[Violation] = list(ob.problems)
        self.evs = classify(ob.lines, ob.shards)
        self.first: dict[str, Ev] = {}  # order id -> its first order event
        self.cancels: dict[str, Ev] = {}  # order id -> its first cancel event
        for e in self.evs:
            if e.kind == "order" and e.oid is not None:
                self.first.setdefault(e.oid, e)
            if e.kind == "cancel" and e.oid is not None:
                self.cancels.setdefault(e.oid, e)
        self.return_raws = {
            e.raw.decode("utf-8", "replace") for e in self.evs if e.kind == "return"
        }
        self.paid_raws = {e.raw.decode("utf-8", "replace") for e in self.evs if e.kind == "paid"}
        self.ship_raws = {
            e.raw.decode("utf-8", "replace") for e in self.evs if e.kind == "fulfilment"
        }
        # order id -> the locations whose shipment of it was written off (re-routed away)
        self.written_off: dict[str, list[str]] = defaultdict(list)
        for m in ob.movements:
            if m.get("kind") == "write_off":
                oid, _, loc = str(m["movement_id"]).rpartition("@")
                self.written_off[oid].append(loc)
        self.versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in ob.versions:
            self.versions[rec["order_id"]].append(rec)
        # the order's decision (its first record that is not a cancellation or an expiry; a
        # reserved order's, not its payment's)
        self.decision: dict[str, dict[str, Any]] = {}
        for oid, recs in self.versions.items():
            dec = [r for r in recs if r["status"] in ("accepted", "rejected", "reserved")]
            if [r["status"] for r in dec[:2]] == ["reserved", "accepted"]:
                dec = dec[:1] + dec[2:]
            if len(dec) > 1 + len(self.written_off.get(oid, [])):  # (re-routes: shipcheck)
                self.fail("outcome.two_decisions", f"{oid!r}: {[r['status'] for r in dec]}")
            if dec:
                self.decision[oid] = dec[0]
        self.final = {r["order_id"]: r for r in ob.fulfilments}
        from onestock.sim import paycheck

        # pending orders (order id -> its deadline) and the payment that paid each one paid
        self.pending = paycheck.pending(self)
        self.paid_by = paycheck.paid_by(self)
        self.took = {oid: self._took(oid) for oid in self.versions}  # units first taken
        self.back = self._given_back()
        from onestock.sim.movecheck import Moves

        self.moves = Moves(self.evs, ob)
        self.expect: Counter[tuple[str, str]] = Counter()  # the stock the outputs add up to
        self.unbalanced: set[str] = set()  # SKUs whose stock breaks the conservation law

    def _given_back(self) -> dict[str, Counter[tuple[str, str]]]:
        """Order -> units given back, by returns and by cancels."""
        back: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
        returned: dict[str, Counter[str]] = defaultdict(Counter)  # order -> SKU -> units
        for ret in self.ob.returns:
            for ln in ret["lines"]:
                back[ret["order_id"]][(ln["sku"], ret["location"])] += ln["qty"]
                returned[ret["order_id"]][ln["sku"]] += ln["qty"]
        for oid, recs in self.versions.items():
            for r in recs:
                if r["status"] == "cancelled":
                    back[oid] += cancelled_back(r["shipments"], returned[oid])
                elif r["status"] == "expired":  # (a reserved order: nothing was returned)
                    back[oid] += units(r["shipments"])
        return back

    def fail(self, cls: str, detail: str) -> None:
        self.v.append((cls, detail))

    def held(self, oid: str) -> Counter[tuple[str, str]]:
        """What the order's units count in the conservation law: what it first took, or, if
        re-routed, what its latest version ships (or shipped, if cancelled)."""
        if oid not in self.written_off:
            return self.took[oid]
        recs = self.versions[oid]
        if recs[-1]["status"] != "rejected":
            return units(recs[-1]["shipments"])
        # rejected: the last accepted version's other shipments went back, less what returns
        # brought back before (the rejecting location's units are the write-off's)
        rest, returned = self._rest(oid)
        return units(rest) - cancelled_back(rest, returned)

    def rerouted_back(self, oid: str) -> Counter[tuple[str, str]]:
        """What a sold_out re-route gave back: the last accepted version's shipments at the
        locations that did not reject it, less what returns brought back before (none if the
        order was not rejected by a re-route)."""
        if not self.sold_out(oid):
            return Counter()
        return cancelled_back(*self._rest(oid))

    def _rest(self, oid: str) -> tuple[list[dict[str, Any]], Counter[str]]:
        """A re-routed order's last accepted shipments at locations that did not reject it,
        and per SKU what returns brought back of it."""
        recs = self.versions[oid]
        last = next((r for r in reversed(recs) if r["status"] == "accepted"), None)
        if last is None:
            return [], Counter()
        gone = self.written_off[oid]
        rest = [s for s in last["shipments"] if s["location"] not in gone]
        returned: Counter[str] = Counter()
        for ret in self.ob.returns:
            if ret["order_id"] == oid:
                returned.update({ln["sku"]: ln["qty"] for ln in ret["lines"]})
        return rest, returned

    def _took(self, oid: str) -> Counter[tuple[str, str]]:
        dec = self.decision.get(oid)
        if dec is not None:
            held = dec["status"] in ("accepted", "reserved")
            return units(dec["shipments"]) if held else Counter()
        # decided and cancelled in one batch (or held, then cancelled): what it gave back
        return sum((units(r["shipments"]) for r in self.versions[oid]), Counter())

    def sold_out(self, oid: str) -> tuple[str, ...]:
        """("rejected",) if a re-route rejected the order (sold_out; a cancel or a return
        after it is refused), else ()."""
        recs = self.versions.get(oid)
        last = recs[-1]["status"] if recs else None
        return ("rejected",) if oid in self.written_off and last == "rejected" else ()

    def accepted(self, oid: str) -> bool:
        """Whether the order was accepted at some point (a pending one: paid)."""
        if oid in self.pending:
            return oid in self.paid_by
        dec = self.decision.get(oid)
        return dec is not None and dec["status"] == "accepted" or bool(self.took.get(oid))

    def run(self) -> list[Violation]:
        from onestock.sim import availcheck, movecheck, paycheck, rules, shipcheck

        self.outcomes()
        self.aftersale()
        self.conservation()
        rules.check(self)
        movecheck.check(self)
        availcheck.check(self)
        paycheck.check(self)
        shipcheck.check(self)
        return self.v

    # (a) one outcome per event -----------------------------------------------------------

    def outcomes(self) -> None:
        ob = self.ob
        seen = Counter(r["order_id"] for r in ob.fulfilments)
        for oid, n in seen.items():
            if n > 1:
                self.fail("outcome.duplicate", f"{oid!r}: {n} lines in `onestock fulfilments`")
            if oid not in self.first:
                self.fail("outcome.phantom", f"a record for {oid!r}, which no order event has")
        for oid in self.first:
            if oid not in seen:
                self.fail("outcome.missing", f"no record for order {oid!r}")
            elif (
                self.versions.get(oid)
                and self.versions[oid][-1]["status"] != (self.final[oid]["status"])
            ):
                self.fail("outcome.final", f"{oid!r}: printed record is not the latest")
        want = Counter(e.raw.decode("utf-8", "replace") for e in self.evs if e.kind == "dead")
        want.update(ob.lines[i].decode("utf-8", "replace") for i in ob.poisoned)
        theirs = self.return_raws | self.paid_raws | self.ship_raws  # (judged with their orders)
        got = Counter(d["raw"] for d in ob.deadletters if d["raw"] not in theirs)
        for raw in want - got:
            self.fail("dead.missing", f"no dead letter for {raw[:80]!r}")
        for raw in got - want:
            self.fail("dead.extra", f"a dead letter for {raw[:80]!r}")
        self._lines()

    def _lines(self) -> None:
        """An accepted order ships what it ordered; a rejected one ships nothing."""
        for oid, rec in self.final.items():
            dec = self.decision.get(oid)
            if dec is not None and dec["status"] in ("accepted", "reserved"):
                want_l = ordered((self.first[oid].obj or {}) if oid in self.first else {})
                if per_sku(units(dec["shipments"])) != want_l:
                    self.fail("lines.mismatch", f"{oid!r} ordered {dict(want_l)}, shipped "
                              f"{dict(per_sku(units(dec['shipments'])))}")  # fmt: skip
            if rec["status"] == "rejected" and rec["shipments"]:
                self.fail("lines.mismatch", f"{oid!r}: rejected with shipments")

    def aftersale(self) -> None:
        self._cancelled()
        self._returns_applied()
        self._returns_refused()

    def _cancelled(self) -> None:
        """A cancelled order was named by a cancel; a cancel of an accepted order (or before
        its order) ends it cancelled."""
        for oid, rec in self.final.items():
            c = self.cancels.get(oid)
            if rec["status"] == "cancelled" and c is None:
                self.fail("cancel.phantom", f"{oid!r} is cancelled but no cancel names it")
            if c is None or oid not in self.first:
                continue
            if c.i < self.first[oid].i and (rec["status"] != "cancelled" or rec["shipments"]):
                self.fail("cancel.early", f"{oid!r} cancelled before it came, yet {rec['status']}")
            elif self.accepted(oid) and rec["status"] not in ("cancelled", *self.sold_out(oid)):
                self.fail("cancel.lost", f"{oid!r} was accepted and cancelled, yet {rec['status']}")

    def _returns_applied(self) -> None:
        """Each return (its copies one group) applied once or refused, to an accepted order."""
        groups: dict[tuple[Any, ...], list[Ev]] = defaultdict(list)
        for e in self.evs:
            if e.kind == "return" and e.obj is not None:
                lines = tuple(sorted(ordered(e.obj).items()))
                groups[(e.oid, e.obj.get("location"), lines)].append(e)
        applied = Counter(
            (r["order_id"], r["location"], tuple(sorted(ordered(r).items())))
            for r in self.ob.returns
        )
        refused = Counter(d["raw"] for d in self.ob.deadletters if d["raw"] in self.return_raws)
        for key, copies in groups.items():
            a = applied[key]
            d = sum(refused[raw] for raw in {c.raw.decode("utf-8", "replace") for c in copies})
            if a > 1 or (a == 1 and d > len(copies) - 1):
                self.fail("return.twice", f"{key}: applied {a}, refused {d}, {len(copies)} copies")
            if a == 0 and d < len(copies):
                self.fail("return.missing", f"{key}: {len(copies)} copies, {d} outcomes")
            if a and not self.accepted(str(key[0])):
                self.fail("return.wrong", f"{key}: applied to an order never accepted")

    def _returns_refused(self) -> None:
        """A refused return's reason is true of its order."""
        by_raw: dict[str, Ev] = {}  # a return's text -> its first copy
        for e in self.evs:
            if e.kind == "return":
                by_raw.setdefault(e.raw.decode("utf-8", "replace"), e)
        for letter in self.ob.deadletters:
            ret = by_raw.get(letter["raw"])
            if ret is None or ret.oid is None or ret.oid not in self.final:
                continue  # (an order without a record is reported as such)
            oid, o, why = ret.oid, self.first.get(ret.oid), letter["reason"]
            if "no such order" in why and o is not None and o.i < ret.i:
                self.fail("return.refused", f"{oid!r}: {why!r}, but the order came first")
            if "was rejected" in why and self.accepted(oid) and not self.sold_out(oid):
                self.fail("return.refused", f"{oid!r}: {why!r}, but it was accepted")
            if "was cancelled" in why and oid not in self.cancels:
                self.fail("return.refused", f"{oid!r}: {why!r}, but nothing cancelled it")
            if "is not paid" in why and oid not in self.pending:
                self.fail("return.refused", f"{oid!r}: {why!r}, but it needed no payment")
            statuses = {r["status"] for r in self.versions.get(oid, [])}
            if "expired unpaid" in why and "expired" not in statuses:
                self.fail("return.refused", f"{oid!r}: {why!r}, but it never expired")

    # (b) conservation, (f) nothing given back twice ---------------------------------------

    def conservation(self) -> None:
        expect = self.expect = self._expected()
        have: Counter[tuple[str, str]] = Counter()
        for sku, view in self.ob.stock.items():
            for loc, q in view["locations"].items():
                have[(sku, loc)] = q
                if q < 0:
                    self.fail("stock.negative", f"{sku} at {loc}: {q}")
        for key in sorted(set(expect) | set(have)):
            if expect[key] != have[key]:
                self.unbalanced.add(key[0])
                self.fail("stock.conservation", f"{key[0]} at {key[1]}: expected "
                          f"{expect[key]}, `onestock stock` says {have[key]}")  # fmt: skip

    def _expected(self) -> Counter[tuple[str, str]]:
        """The stock the outputs add up to: loaded, plus what applied movements added (less
        what they took), less what orders took (gifts too), plus what was given back; no
        order given back more than it shipped."""
        expect: Counter[tuple[str, str]] = Counter()
        for sku, locs in self.ob.base.items():
            for loc, q in locs.items():
                expect[(sku, loc)] += q
        expect.update(self.moves.moved)
        for oid in self.took:
            expect.subtract(self.held(oid))
            expect.update(self.back.get(oid, Counter()))
            rec = self.final.get(oid)
            gift = next((r["gift"] for r in self.versions.get(oid, []) if r.get("gift")), None)
            if rec and rec["status"] == "accepted" and gift:  # (a re-route's: gift null)
                expect[(gift["sku"], gift["location"])] -= 1
        for oid, back in self.back.items():
            if oid not in self.took:  # returns of an order with no record
                expect.update(back)
            shipped = per_sku(self.took.get(oid, Counter()))
            for sku, q in per_sku(back).items():
                if q > shipped[sku]:
                    self.fail("restock.twice", f"{oid!r}: {q} x {sku} given back, "
                              f"{shipped[sku]} shipped")  # fmt: skip
        return expect


def check(ob: Observed) -> list[Violation]:
    return Checker(ob).run()
