"""Stock movements of a shard batch: receipts, sales outside onestock, adjustments,
transfers and counts (docs/movements.md; CONTRACT.md "Stock movements").

A movement arrives on the shard of its movement id (every copy on one shard, in sequence)
and ends as one movement record, registered under ``keys.REG_MOVEMENT`` + its id, so a copy
or a replay after a crash never applies it twice or records it twice. Its lines are applied
by ``movement.lua``, one call per hash slot:

- lines all in one slot (one SKU, or SKUs sharing a slot): one ``apply`` call, atomic;
- lines across slots: ``hold`` in every slot (each takes out what its lines take, or
  refuses, changing nothing), then ``commit`` in every slot if all held, else ``abort`` in
  the slots that held (their units go back). Every step is idempotent and remembered in the
  slot, so a crash between them replays to the same end. Between the two steps the units a
  movement takes are out of stock and the units it adds not yet in: nothing is ever sold
  that the movement takes, so all-or-nothing never oversells.

A hot SKU split into buckets (docs/buckets.md) takes its movements in bucket 0, after the
units of the movement's locations are gathered there from its other buckets, under the
SKU's mover lease: a movement sees every unit the SKU has there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import redis

from dataflows.buckets import BucketPlan
from dataflows.cross_slot import StaleCatalog
from onestock.domain import events, meter
from onestock.domain.events import MOVEMENT_KINDS
from onestock.domain.movements import op_of
from onestock.domain.protocol import MOVE_APPLIED, MOVE_HELD, MOVE_REFUSED, SEP, Code, ProtocolError
from onestock.domain.records import iso_ms
from onestock.domain.types import MovedLine, MovementRecord, json_encoder
from state import keys
from state.conn import Waiter
from state.keys import sku_slot
from state.movements import ABORT, APPLY, COMMIT, HOLD, Answer, Call, MoveLine
from state.store import Store

Item = tuple[str, events.Movement | events.BadMovement]  # (input entry id, the movement)
_STATES = {MOVE_APPLIED, MOVE_HELD, MOVE_REFUSED}


class _Plan(NamedTuple):
    """A movement to apply: its lines per slot, each line's (slot, index in its call)."""

    movement: events.Movement
    slots: dict[int, list[MoveLine]]
    where: list[tuple[int, int]]


class Movements:
    """Applies the movements of a batch (``Decider`` calls ``apply`` once per batch)."""

    def __init__(self, store: Store, wait: Waiter) -> None:
        self.store = store
        self.wait = wait

    def apply(
        self,
        shard: int,
        items: list[Item],
        skus: set[str],
        locations: set[str],
        plan: BucketPlan,
        decided: str,
    ) -> tuple[list[str], list[str]]:
        """The movements' registry triples (key, ``Code.MOVEMENT``, record JSON), flat, for
        those not recorded before (one per movement id), and each one's metric tag:
        ``--M<kind>:<status>`` (``onestock.domain.meter``; kind "invalid" when unreadable)."""
        firsts: dict[str, Item] = {}
        for eid, m in items:
            firsts.setdefault(m.movement_id, (eid, m))
        ids = list(firsts)
        got = self.wait.call(
            self.store.shards.registry, shard, [keys.REG_MOVEMENT + i for i in ids]
        )
        records: dict[str, MovementRecord] = {}
        plans: list[_Plan] = []
        for mid, recorded in zip(ids, got, strict=True):
            if recorded is not None:  # recorded before: a copy, or a replay
                continue
            m = firsts[mid][1]
            if isinstance(m, events.BadMovement):
                records[mid] = _refused(mid, m.kind, m.location, "invalid", m.detail, decided)
                continue
            why = _unknown(m, skus, locations)
            if why is not None:
                records[mid] = _refused(mid, m.kind, m.location, why[0], why[1], decided, m)
                continue
            plans.append(_plan(m))
        if plans:
            self._run(plans, plan, records, decided)
        out: list[str] = []
        tags: list[str] = []
        for mid in ids:
            rec = records.get(mid)
            if rec is not None:
                out += [keys.REG_MOVEMENT + mid, Code.MOVEMENT, json_encoder.encode(rec).decode()]
                kind = rec.kind if rec.kind in MOVEMENT_KINDS else "invalid"
                tags.append(f"{meter.NONE}{meter.NONE}{Code.MOVEMENT}{kind}:{rec.status}")
        return out, tags

    def _run(
        self,
        plans: list[_Plan],
        plan: BucketPlan,
        records: dict[str, MovementRecord],
        decided: str,
    ) -> None:
        """Both rounds of movement.lua calls, under the leases of the hot SKUs they touch."""
        named = {ln.sku for p in plans for ls in p.slots.values() for ln in ls}
        hot = sorted(named & set(plan.count))
        leases = [self.store.buckets.lease(sku) for sku in hot]  # one order of taking
        for lease in leases:
            while not self.wait.call(lease.acquire):
                pass
        try:
            if hot:
                self._gather(plans, plan, hot)
            first = self.wait.call(self.store.movements.run, _first_round(plans))
            answers, second = _second_round(plans, first)
            got = self.wait.call(self.store.movements.run, [c for _, c in second])
            for ((i, slot), _), answer in zip(second, got, strict=True):
                answers[i][slot] = answer
        finally:
            for lease in leases:
                try:
                    self.wait.call(lease.release)
                except redis.exceptions.LockError:  # the lease ran out (a long stall)
                    pass
        for p, by_slot in zip(plans, answers, strict=True):
            records[p.movement.movement_id] = _record(p, by_slot, decided)

    def _gather(self, plans: list[_Plan], plan: BucketPlan, hot: list[str]) -> None:
        """Every unit of the hot SKUs at the movements' locations into their bucket 0."""
        where: dict[str, set[str]] = {sku: set() for sku in hot}
        for p in plans:
            for ls in p.slots.values():
                for ln in ls:
                    if ln.sku in where:
                        where[ln.sku].update(x for x in (ln.location, ln.to) if x)
        targets = [(sku, plan.count[sku], 0, sorted(where[sku])) for sku in hot]
        if (
            self.wait.call(self.store.buckets.borrow, targets, True, plan.floors, plan.version)
            is None
        ):
            raise StaleCatalog  # (a reload changed the buckets: the batch is decided again)


def _unknown(m: events.Movement, skus: set[str], locations: set[str]) -> tuple[str, str] | None:
    """(reason, detail) when the movement names a SKU or location the catalog lacks."""
    for path, loc in (("location", m.location), ("to", m.to)):
        if loc is not None and loc not in locations:
            return "unknown_location", f"{loc!r} is not a location of the catalog - at `$.{path}`"
    for i, ln in enumerate(m.lines):
        if ln.sku not in skus:
            return "unknown_sku", f"{ln.sku!r} is not in the catalog - at `$.lines[{i}].sku`"
    return None


def _plan(m: events.Movement) -> _Plan:
    slots: dict[int, list[MoveLine]] = {}
    where = []
    for ln in m.lines:
        op, units = op_of(m.kind, ln.qty)
        slot = sku_slot(ln.sku)
        lines = slots.setdefault(slot, [])
        where.append((slot, len(lines)))
        lines.append(MoveLine(ln.sku, op, m.location, units, m.to or ""))
    return _Plan(m, slots, where)


def _first_round(plans: list[_Plan]) -> list[Call]:
    """Per movement: one ``apply`` (one slot) or a ``hold`` per slot."""
    calls = []
    for p in plans:
        mode = APPLY if len(p.slots) == 1 else HOLD
        calls += [Call(mode, p.movement.movement_id, ls) for ls in p.slots.values()]
    return calls


def _second_round(
    plans: list[_Plan], first: Iterable[Answer]
) -> tuple[list[dict[int, Answer]], list[tuple[tuple[int, int], Call]]]:
    """The first round's answers per movement and slot, and the second round: ``commit`` in
    the slots of a movement held everywhere, ``abort`` in those that held when another
    refused (with that refusal's reason); with (movement index, slot) of each call."""
    it = iter(first)
    answers: list[dict[int, Answer]] = []
    second: list[tuple[tuple[int, int], Call]] = []
    for i, p in enumerate(plans):
        by_slot = {slot: next(it) for slot in p.slots}
        answers.append(by_slot)
        refused = next((a for a in by_slot.values() if a.state == MOVE_REFUSED), None)
        mid = p.movement.movement_id
        states = {a.state for a in by_slot.values()}
        if not states <= _STATES or (refused is not None and MOVE_APPLIED in states):
            raise ProtocolError(f"movement {mid!r} answered {sorted(states)}")
        for slot, a in by_slot.items():
            if a.state != MOVE_HELD:
                continue
            if refused is None:
                second.append(((i, slot), Call(COMMIT, mid, p.slots[slot])))
            else:
                second.append(((i, slot), Call(ABORT, mid, p.slots[slot], refused.payload)))
    return answers, second


def _record(p: _Plan, by_slot: dict[int, Answer], decided: str) -> MovementRecord:
    m = p.movement
    refused = next((a for a in by_slot.values() if a.state == MOVE_REFUSED), None)
    if refused is not None:
        reason, _, detail = refused.payload.partition(SEP)
        return _refused(m.movement_id, m.kind, m.location, reason, detail, decided, m)
    fields = {slot: a.payload.split(SEP) for slot, a in by_slot.items()}
    lines = []
    for ln, (slot, k) in zip(m.lines, p.where, strict=True):
        on_hand, at_to, disc = fields[slot][3 * k : 3 * k + 3]
        lines.append(MovedLine(ln.sku, ln.qty, int(on_hand), _num(at_to), _num(disc)))
    total = sum(ln.discrepancy or 0 for ln in lines) if m.kind == "count" else None
    return MovementRecord(
        m.movement_id, "applied", None, None, m.kind, m.location, m.to, lines, total, m.at,
        iso_ms(int(decided)),
    )  # fmt: skip


def _num(text: str) -> int | None:
    return int(text) if text else None


def _refused(
    mid: str,
    kind: str | None,
    location: str | None,
    reason: str,
    detail: str,
    decided: str,
    m: events.Movement | None = None,
) -> MovementRecord:
    lines = [MovedLine(ln.sku, ln.qty) for ln in m.lines] if m is not None else []
    return MovementRecord(
        mid, "refused", reason, detail, kind, location, m.to if m else None, lines, None,
        m.at if m else None, iso_ms(int(decided)),
    )  # fmt: skip
