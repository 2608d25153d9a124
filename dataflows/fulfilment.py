"""Fulfilment feedback of a shard batch (docs/fulfilment.md).

``{"type": "fulfilment", "order_id", "location", "status", "reason"}`` about an accepted
order's shipment at a location:

- ``shipped`` / ``picked_up``: kept (``keys.REG_SHIPMENT``); the outcome does not change, so
  there is no new record; the location can no longer reject it.
- ``rejected``: the location cannot serve it. Its units there are written off as a
  discrepancy (a ``write_off`` movement record: they are not back on sale there until a
  count finds them), and the shipment's lines go to the next locations that can serve them,
  nearest to the rejecting one first, never to a location that rejected the order before,
  never below safety stock or into a channel's lock (``reroute.lua``, per slot, all or
  none). The order's next version is ``accepted`` with the new shipments, or, when no
  location can take them, ``rejected`` (``sold_out``) with the rest of its units given back.

A copy of an event changes nothing. Every step is idempotent: the re-route's outcome is kept
per (order, version) in each slot, the give-backs are undo_units.lua's, and the records are
written once by emit.lua.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from dataflows.aftersale import Aftersale
from dataflows.buckets import BucketPlan, gathered
from dataflows.payments import fresh
from onestock.domain import events
from onestock.domain.protocol import INTERNAL, SEP, Code, ProtocolError
from onestock.domain.records import allocations, by_location, iso_ms, pack, rejected
from onestock.domain.routing import Router
from onestock.domain.types import MovedLine, MovementRecord, json_encoder
from state import keys
from state.conn import Waiter
from state.fulfilment import GIVE, TAKE, UNDO, Reroute
from state.keys import public
from state.payments import OrderState
from state.store import Store

_DUPLICATE = ""  # an event that changes nothing and has no outcome of its own (a copy)
Alloc = tuple[str, str, int]  # (location, SKU or hot-SKU bucket, units)
# why an event for an order that is not accepted is refused, by the order's outcome code
# (a cancel that came before its order, or in its batch, leaves it CANCELLED)
_NOT_ACCEPTED: dict[str, str] = {
    Code.CANCELLED: "the order was cancelled",
    Code.EXPIRED: "the order expired",
}


CLAIMS_LIMIT = 1000  # shipments past their claim timeout re-routed per batch or tick
DAY_MS = 86_400_000  # a daily capacity's day: UTC, by the routing event's time


class Places(NamedTuple):
    """What re-routing needs of the catalog (the decider's view)."""

    router: Router
    coords: dict[str, tuple[float, float] | None]  # location -> its coordinates
    floors: dict[str, int]  # location -> safety stock (units a re-route may not take)
    locations: list[str]
    timeouts: dict[str, int]  # location -> its claim timeout, ms (locations that have one)
    capacity: dict[str, int]  # location -> orders it ships a day (locations that have one)
    buckets: BucketPlan | None = None  # the hot SKUs split into buckets (a re-route gathers)


# what a location said of its shipment: its last word (shipped, picked_up, rejected) and
# whether it claimed it
Said = tuple[str | None, bool]


def _accepted(allocs: list[Alloc]) -> str:
    """The accepted outcome of ``allocs``, grouped by location (the locations in the order
    they first appear): the order ``records.allocations`` reads back, so the stored outcome
    lists its allocations as its record does (a re-route appends what it took, perhaps at a
    location the order already ships from)."""
    return Code.ACCEPTED + "".join(
        f"{SEP}{loc}{SEP}{sku}{SEP}{q}" for loc, sku, q in by_location(allocs)
    )


def _merged(lines: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for sku, q in lines:
        out[sku] = out.get(sku, 0) + q
    return out


def _refusal(st: OrderState, f: events.Fulfilment, said: dict[str, Said]) -> str | None:
    """Why the event changes nothing (a dead letter's reason; ``_DUPLICATE``: a copy). A
    claimed shipment may still be shipped or rejected; a shipped or rejected one is done."""
    if st.value is None:
        return "no order of this id came before it"
    if st.cancelled:
        return "the order was cancelled"
    code = st.value[:1]
    if code == Code.HELD:
        return "the order's record waits for its first-N rank to settle"
    if code == Code.RESERVED:
        return "the order is not paid"
    if code not in (Code.ACCEPTED, Code.CANDIDATE):
        return _NOT_ACCEPTED.get(code, "the order was not accepted")
    before, claimed = said.get(f.location, (None, False))
    if before is not None:
        if before == f.status or (before != "rejected" and f.status in ("shipped", "picked_up")):
            return _DUPLICATE
        return f"its shipment at {f.location!r} was {before.replace('_', ' ')} before"
    if f.status == "claimed" and claimed:
        return _DUPLICATE
    outcome = st.value[1:] if code == Code.CANDIDATE else st.value
    if all(loc != f.location for loc, _, _ in allocations(outcome)):
        return f"the order has no shipment at {f.location!r}"
    return None


class Fulfilments:
    def __init__(self, store: Store, wait: Waiter, aftersale: Aftersale) -> None:
        self.store = store
        self.wait = wait
        self.aftersale = aftersale

    def apply(
        self,
        shard: int,
        items: list[tuple[str, bytes, events.Fulfilment]],
        places: Places,
        decided: str,
        dead: list[list[Any]],
    ) -> list[str]:
        """Apply a segment's fulfilment events (none of their orders has another event in
        it): registry triples; refused ones become dead letters."""
        items = fresh(self.store, self.wait, shard, items)
        oids = [f.order_id for *_, f in items]
        states = self.wait.call(self.store.payments.states, shard, oids)
        pairs = [(oid, loc) for oid in oids for loc in places.locations]
        got = self.wait.call(self.store.shipments.said, shard, pairs)
        n = len(places.locations)
        out: list[str] = []
        for i, ((eid, raw, f), st) in enumerate(zip(items, states, strict=True)):
            said = dict(zip(places.locations, got[i * n : (i + 1) * n], strict=True))
            why = _refusal(st, f, said)
            if why is None or why == _DUPLICATE:  # (a replay of this entry: skipped)
                out += [keys.REG_EVENT + eid, "1", ""]
            if why is not None:
                if why != _DUPLICATE:
                    reason = f"fulfilment refused: {why} - at `$.location`"
                    dead.append([eid, events.text_of(raw), reason])
                continue
            out += self._said(f, st, said, places, eid.partition("-")[0], decided)
        return out

    def _said(
        self,
        f: events.Fulfilment,
        st: OrderState,
        said: dict[str, Said],
        places: Places,
        received: str,
        decided: str,
    ) -> list[str]:
        """The triples of what an event the order takes says: a claim or the location's
        last word kept, and a rejection's re-route."""
        where = f"{f.order_id}{SEP}{f.location}"
        if f.status == "claimed":
            return [keys.REG_CLAIM + where, f.status, ""]
        out = [keys.REG_SHIPMENT + where, f.status, ""]
        if f.status == "rejected":
            gone = {loc for loc, (s, _) in said.items() if s == "rejected"} | {f.location}
            out += self._reroute(f, st, gone, places, received, decided)
        return out

    def claims(
        self,
        shard: int,
        after: str,
        records: list[str],
        busy: set[str],
        places: Places,
        decided: str,
    ) -> list[str]:
        """Shipments past their location's claim timeout, unclaimed, are rejected on the
        location's behalf and re-routed (their units written off as for a rejection). The
        batch's accepted versions (``records``: registry triples) start the clocks of their
        shipments at such locations; the input stream's clock decides (payments.py)."""
        new = _claims_of(records, places.timeouts)
        due = self.wait.call(self.store.shipments.claims_due, shard, after, new, [], CLAIMS_LIMIT)
        due = [d for d in due if d[0] not in busy]
        if not due:
            return []
        states = self.wait.call(self.store.payments.states, shard, [oid for oid, _, _ in due])
        pairs = [(oid, loc) for oid, _, _ in due for loc in places.locations]
        got = self.wait.call(self.store.shipments.said, shard, pairs)
        n = len(places.locations)
        out: list[str] = []
        settled: list[tuple[str, str]] = []
        for i, ((oid, loc, deadline), st) in enumerate(zip(due, states, strict=True)):
            said = dict(zip(places.locations, got[i * n : (i + 1) * n], strict=True))
            secs = places.timeouts.get(loc, 0) // 1000
            f = events.Fulfilment(oid, loc, "rejected", f"not claimed within {secs} s")
            if st.ahead:  # (a replay a generation back: a batch of its generation does it)
                continue
            if (
                st.cancelling  # (a cancel is under way: a timer leaves the order alone)
                or said.get(loc, (None, False)) != (None, False)
                or _refusal(st, f, said) is not None
            ):
                settled.append((oid, loc))  # claimed, shipped, rejected, or the order moved on
                continue
            out += self._said(f, st, said, places, str(deadline), decided)
        later = _claims_of(out, places.timeouts)  # the re-routed shipments' own clocks
        if settled or later:
            self.wait.call(self.store.shipments.claims_due, shard, after, later, settled, 0)
        return out

    def _reroute(
        self,
        f: events.Fulfilment,
        st: OrderState,
        gone: set[str],
        places: Places,
        received: str,
        decided: str,
    ) -> list[str]:
        """The rejected shipment's lines to other locations, or the order rejected: the
        triples of its write-off and of its next version."""
        assert st.value is not None
        outcome = st.value[1:] if st.value[:1] == Code.CANDIDATE else st.value
        allocs = allocations(outcome)
        here = [(public(sku), q) for loc, sku, q in allocs if loc == f.location]
        rest = [a for a in allocs if a[0] != f.location]
        version = str(st.version + 1)
        router = places.router
        ranking = router.decode(router.rank_batch([places.coords.get(f.location)])[0])
        key = f"{keys.DEC_REROUTE}{f.order_id}{SEP}{version}"
        day = int(received) // DAY_MS
        taken = self._place(f.order_id, key, _merged(here), ranking, gone, places, day, decided)
        if taken is not None:
            value = _accepted(rest + taken)
        else:  # the order's other units go back too (and a gift it won)
            if rest:
                self.aftersale.undo([(f.order_id, _accepted(rest))])
            # (a gift it won: also once a re-route's version dropped the candidate code;
            # return_gifts keeps to campaign SKUs and puts back only a unit taken)
            self.aftersale.return_gifts([(f.order_id, outcome)])
            value = rejected(
                "sold_out",
                f"{f.location} rejected its shipment and no other location can serve it",
            )
        rec = pack(f.order_id, st.channel, "", st.mode, received, decided, value, version)
        return [
            f"{keys.REG_WRITE_OFF}{f.order_id}{SEP}{f.location}", Code.MOVEMENT,
            self._write_off(f, here, decided),
            keys.REG_STATE + f.order_id, f"{version}{SEP}{value}", rec,
        ]  # fmt: skip

    def _place(
        self,
        oid: str,
        key: str,
        lines: dict[str, int],
        ranking: list[str],
        gone: set[str],
        places: Places,
        day: int,
        decided: str,
        gather: bool = True,
    ) -> list[Alloc] | None:
        """``lines`` (SKU -> units) taken at the first locations of ``ranking`` not in
        ``gone`` that have room on ``day`` (reroute.lua per slot, all or none; capacity.lua);
        None when no such locations have the units. The same answer on a replay: each
        attempt's outcome is kept under ``key``, and a full day stays full. Re-routes take
        from bucket 0 of a hot SKU split into buckets (its own keys): where no place is
        found (``gather``), again once every bucket's units at the candidates are gathered
        there (under the SKUs' leases; ``gathered``), under a key of its own."""
        before, gone = gone, set(gone)
        for attempt in range(len(places.locations)):
            cands = [loc for loc in ranking if loc not in gone]
            calls = self._calls(f"{key}{SEP}{attempt}", lines, cands, places)
            got = self.wait.call(self.store.shipments.reroute, calls, int(decided))
            # (CANCELLED + allocations: taken, then given back by an earlier run of this
            # batch because a day was full; the days tell the same again)
            ok = all(r[:1] in (Code.ACCEPTED, Code.CANCELLED) for r in got)
            taken = [a for r in got for a in allocations(r)] if ok else []
            full = self.full(oid, {loc for loc, _, _ in taken}, places, day) if ok else set()
            if ok and not full:
                if any(r[:1] == Code.CANCELLED for r in got):
                    raise ProtocolError(f"a re-route of {oid!r} given back with room left")
                return taken
            undo = [
                c._replace(mode=UNDO)
                for c, r in zip(calls, got, strict=True)
                if r[:1] == Code.ACCEPTED
            ]
            if undo:
                self.wait.call(self.store.shipments.reroute, undo, int(decided))
            if not ok:
                break
            gone |= full
        plan = places.buckets
        if not gather or plan is None or not any(s in plan.count for s in lines):
            return None
        at = [loc for loc in ranking if loc not in before]
        with gathered(self.store, self.wait.call, plan, list(lines), at):
            again = f"{key}{SEP}all"
            return self._place(oid, again, lines, ranking, before, places, day, decided, False)

    def full(self, oid: str, locations: set[str], places: Places, day: int) -> set[str]:
        """Count ``oid`` against the daily capacity of those of ``locations`` that have one;
        the ones whose day has no room left for it."""
        asks = {loc: (places.capacity[loc], [oid]) for loc in locations if loc in places.capacity}
        if not asks:
            return set()
        refused = self.wait.call(self.store.shipments.count, day, asks)
        return {loc for loc, ids in refused.items() if ids}

    def honour(
        self,
        oid: str,
        outcome: str,
        ranking: list[str],
        full: set[str],
        places: Places,
        day: int,
        decided: str,
    ) -> str:
        """An accepted decision that routed ``oid`` to locations whose day is ``full``: the
        lines there go back and are placed at the next locations with room (``ranking``; a
        pickup order has none), or the order is rejected and all its units go back. Its
        outcome (the same on a replay)."""
        allocs = allocations(outcome)
        moved = [a for a in allocs if a[0] in full]
        rest = [a for a in allocs if a[0] not in full]
        key = f"{keys.DEC_REROUTE}{oid}{SEP}1"
        gives = []
        for loc in sorted(full):
            here = _merged([(sku, q) for at, sku, q in moved if at == loc])
            for call in self._calls(f"{key}{SEP}give{SEP}{loc}", here, [loc], places):
                gives.append(call._replace(mode=GIVE))
        self.wait.call(self.store.shipments.reroute, gives, int(decided))
        lines = _merged([(public(sku), q) for _, sku, q in moved])
        taken = self._place(oid, key, lines, ranking, full, places, day, decided)
        if taken is not None:
            return _accepted(rest + taken)
        # Rejected: the decision is void (the order never happened). The units still out go
        # back (those moved off came back above: their SKUs only marked), with all the decision
        # took of the rules: counts against the customer's limits, channel lock draws (kept by
        # decide.lua, or in a cross-slot order's parts), the first-N candidacy.
        kept = rest + [(loc, sku, 0) for loc, sku, _ in moved]
        self.aftersale.undo([(oid, _accepted(kept))], void=frozenset([oid]))
        self.wait.call(self.store.skus.unrule_parts, oid, {public(sku) for _, sku, _ in allocs})
        if not ranking:
            return rejected("pickup_unavailable", "the store has no room for more orders today")
        return rejected("sold_out", "no location with the units has room for more orders today")

    def _calls(
        self, key: str, lines: dict[str, int], cands: list[str], places: Places
    ) -> list[Reroute]:
        """One reroute.lua call per group of the lines' SKUs (``Store.slot``), with these
        candidates."""
        floors = [places.floors.get(loc, 0) for loc in cands]
        by_slot: dict[int, list[str]] = {}
        for sku in lines:
            by_slot.setdefault(self.store.slot(sku), []).append(sku)
        return [
            Reroute(
                TAKE, key, names, [(i + 1, lines[s]) for i, s in enumerate(names)], cands, floors
            )
            for names in by_slot.values()
        ]

    @staticmethod
    def _write_off(f: events.Fulfilment, lines: list[tuple[str, int]], decided: str) -> str:
        """The record of the units the rejecting location held for the order: written off
        there (the audit counts them out, as a sale)."""
        why = f"{f.location} rejected its shipment of {f.order_id}"
        rec = MovementRecord(
            movement_id=f"{f.order_id}@{f.location}", status="applied", reason="rejected",
            detail=f"{why}: {f.reason}" if f.reason else why, kind="write_off",
            location=f.location, lines=[MovedLine(sku=s, qty=q) for s, q in lines],
            at=iso_ms(int(decided)), decided_at=iso_ms(int(decided)),
        )  # fmt: skip
        return json_encoder.encode(rec).decode()


def _claims_of(records: list[str], timeouts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(order id, location, deadline ms) of the shipments the batch's accepted versions
    route to locations with a claim timeout: from when the version's event came."""
    if not timeouts:
        return []
    out: list[tuple[str, str, int]] = []
    for i in range(0, len(records), 3):
        key, value, rec = records[i : i + 3]
        if key[:1] == INTERNAL:
            if not key.startswith(keys.REG_STATE):
                continue
            oid, value = key[len(keys.REG_STATE) :], value.partition(SEP)[2]
        else:
            oid = key
        if value[:1] == Code.HELD:
            value = value[1:]
        if value[:1] != Code.ACCEPTED:
            continue
        received = int(rec.split(SEP, 5)[4])
        for loc in {loc for loc, _, _ in allocations(value)} & timeouts.keys():
            out.append((oid, loc, received + timeouts[loc]))
    return out
