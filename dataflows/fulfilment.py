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
from onestock.domain import events
from onestock.domain.protocol import INTERNAL, SEP, Code
from onestock.domain.records import iso_ms, pack, rejected
from onestock.domain.routing import Router
from onestock.domain.types import MovedLine, MovementRecord, json_encoder
from state import keys
from state.conn import Waiter
from state.fulfilment import TAKE, UNDO, Reroute
from state.keys import public, sku_slot
from state.payments import OrderState
from state.store import Store

_DUPLICATE = ""  # an event that changes nothing and has no outcome of its own (a copy)
Alloc = tuple[str, str, int]  # (location, SKU or hot-SKU bucket, units)


CLAIMS_LIMIT = 1000  # shipments past their claim timeout re-routed per batch or tick


class Places(NamedTuple):
    """What re-routing needs of the catalog (the decider's view)."""

    router: Router
    coords: dict[str, tuple[float, float] | None]  # location -> its coordinates
    floors: dict[str, int]  # location -> safety stock (units a re-route may not take)
    locations: list[str]
    timeouts: dict[str, int]  # location -> its claim timeout, ms (locations that have one)


# what a location said of its shipment: its last word (shipped, picked_up, rejected) and
# whether it claimed it
Said = tuple[str | None, bool]


def allocations(outcome: str) -> list[Alloc]:
    f = outcome.split(SEP)
    return [(f[i], f[i + 1], int(f[i + 2])) for i in range(1, len(f) - 2, 3)]


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
        return "the order was not accepted" if code != Code.EXPIRED else "the order expired"
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
        oids = [f.order_id for *_, f in items]
        states = self.wait.call(self.store.payments.states, shard, oids)
        pairs = [(oid, loc) for oid in oids for loc in places.locations]
        got = self.wait.call(self.store.shipments.said, shard, pairs)
        n = len(places.locations)
        out: list[str] = []
        for i, ((eid, raw, f), st) in enumerate(zip(items, states, strict=True)):
            said = dict(zip(places.locations, got[i * n : (i + 1) * n], strict=True))
            why = _refusal(st, f, said)
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
            if said.get(loc, (None, False)) != (None, False) or _refusal(st, f, said) is not None:
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
        calls = self._calls(f, version, here, gone, places)
        got = self.wait.call(self.store.shipments.reroute, calls, int(decided))
        if all(r[:1] == Code.ACCEPTED for r in got):
            taken = [a for r in got for a in allocations(r)]
            value = Code.ACCEPTED + "".join(
                f"{SEP}{loc}{SEP}{s}{SEP}{q}" for loc, s, q in rest + taken
            )
        else:  # all or none: what was taken goes back, and the order's other units too
            undo = [
                c._replace(mode=UNDO)
                for c, r in zip(calls, got, strict=True)
                if r[:1] == Code.ACCEPTED
            ]
            if undo:
                self.wait.call(self.store.shipments.reroute, undo, int(decided))
            if rest:
                given = Code.ACCEPTED + "".join(f"{SEP}{loc}{SEP}{s}{SEP}{q}" for loc, s, q in rest)
                self.aftersale.undo([(f.order_id, given)])
            if st.value[:1] == Code.CANDIDATE:  # its first-N gift, if it got one, goes back
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

    @staticmethod
    def _calls(
        f: events.Fulfilment,
        version: str,
        lines: list[tuple[str, int]],
        gone: set[str],
        places: Places,
    ) -> list[Reroute]:
        """One reroute.lua call per slot of the shipment's SKUs; candidates nearest to the
        rejecting location first."""
        ranked = places.router.decode(places.router.rank_batch([places.coords.get(f.location)])[0])
        cands = [loc for loc in ranked if loc not in gone]
        floors = [places.floors.get(loc, 0) for loc in cands]
        by_slot: dict[int, dict[str, int]] = {}
        for sku, q in lines:
            slot = by_slot.setdefault(sku_slot(sku), {})
            slot[sku] = slot.get(sku, 0) + q
        key = f"{keys.DEC_REROUTE}{f.order_id}{SEP}{version}"
        calls = []
        for skus in by_slot.values():
            names = list(skus)
            pairs = [(i + 1, skus[s]) for i, s in enumerate(names)]
            calls.append(Reroute(TAKE, key, names, pairs, cands, floors))
        return calls

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
