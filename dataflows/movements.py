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
  that the movement takes, so all-or-nothing never oversells. The batch's movements are
  applied in parts cut after each such one (``_parts``): its commit comes before any later
  movement of the batch is applied, as if each came in a batch of its own.

A hot SKU split into buckets (docs/buckets.md) takes its movements in bucket 0, after the
units of the movement's locations are gathered there from its other buckets, under the
SKU's mover lease: a movement sees every unit the SKU has there. Units may still come back
into another bucket meanwhile (a cancel, a return: they take no lease), which only matters
to a count (it sets what a location holds): its hold in bucket 0 carries a guard, the other
buckets' change counts (``keys.STOCK_UP``) read after the gathering found them empty there,
and it commits only once a read after the hold finds the same counts; else it holds again
(``rehold``) after another gathering. So at its hold no other bucket held a unit there: the
count takes effect at its hold, whatever came back before it counted, whatever after it
kept. A replay compares with the guard kept with the hold, not with a new one.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import redis

from dataflows.buckets import BucketPlan, Leases
from dataflows.cross_slot import StaleCatalog
from onestock.domain import events, meter
from onestock.domain.events import MOVEMENT_KINDS
from onestock.domain.movements import op_of
from onestock.domain.protocol import MOVE_APPLIED, MOVE_HELD, MOVE_REFUSED, SEP, Code, ProtocolError
from onestock.domain.records import iso_ms
from onestock.domain.types import MovedLine, MovementRecord, json_encoder
from state import keys
from state.conn import Waiter
from state.movements import ABORT, APPLY, COMMIT, HOLD, REHOLD, Answer, Call, MoveLine
from state.store import Store

Item = tuple[str, events.Movement | events.BadMovement]  # (input entry id, the movement)
_STATES = {MOVE_APPLIED, MOVE_HELD, MOVE_REFUSED}
_TRIES = 100  # tries of a count's guard at once; then a pause between tries (said once)
_PAUSE_S = 0.01


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
        self._leases: Leases | None = None  # the mover leases of the batch's hot SKUs, held

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
            plans.append(_plan(m, self.store.slot))
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
        """The batch's parts (``_parts``), each in both rounds of movement.lua calls, under
        the leases of the hot SKUs they touch."""
        named = {ln.sku for p in plans for ls in p.slots.values() for ln in ls}
        hot = sorted(named & set(plan.count))
        with Leases(self.store, self.wait.call, hot) as self._leases:
            answers: list[dict[int, Answer]] = []
            for part in _parts(plans, set(hot)):
                self._leases.renew()  # (the batch may run long: many parts, a count waits)
                # each part sees every unit of its hot SKUs at its locations, also the
                # units that came back into another bucket while an earlier part ran
                touched = sorted({ln.sku for p in part for ls in p.slots.values() for ln in ls}
                                 & set(hot))  # fmt: skip
                if touched:
                    self._gather(part, plan, touched)
                answers += self._rounds(part, plan, touched)
        self._leases = None
        for p, by_slot in zip(plans, answers, strict=True):
            records[p.movement.movement_id] = _record(p, by_slot, decided)

    def _rounds(
        self, plans: list[_Plan], plan: BucketPlan, hot: list[str]
    ) -> list[dict[int, Answer]]:
        """Both rounds of movement.lua calls for a part of the batch (``_parts``): per
        movement and slot its last answer."""
        counted = _counted(plans, set(hot))
        guards = self._guards(plans, plan, hot, counted) if counted else {}
        first = self.wait.call(self.store.movements.run, _first_round(plans, guards))
        answers = _per_slot(plans, first)
        if counted:
            self._hold_still(plans, plan, hot, counted, answers)
        second = _second_round(plans, answers)
        got = self.wait.call(self.store.movements.run, [c for _, c in second])
        for ((i, slot), _), answer in zip(second, got, strict=True):
            answers[i][slot] = answer
        return answers

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

    def _guards(
        self, plans: list[_Plan], plan: BucketPlan, hot: list[str], counted: dict[int, set[str]]
    ) -> dict[int, str]:
        """Per movement counting a hot SKU (index in ``plans``), its guard: the change counts
        of the other buckets of the hot SKUs it counts, read once they hold no unit at the
        counted locations and none is in flight (gathered again until so)."""
        where: dict[str, set[str]] = {}
        for i, skus in counted.items():
            for ls in plans[i].slots.values():
                for ln in ls:
                    if ln.op == "count" and ln.sku in skus:
                        where.setdefault(ln.sku, set()).add(ln.location)
        for tries in itertools.count(1):
            ups = self.wait.call(self.store.buckets.gathered, plan.count, where)
            if ups is not None:
                return {i: _guard(skus, ups) for i, skus in counted.items()}
            self._patience(tries, where)
            self._gather(plans, plan, hot)
        raise AssertionError("unreachable")

    def _hold_still(
        self,
        plans: list[_Plan],
        plan: BucketPlan,
        hot: list[str],
        counted: dict[int, set[str]],
        answers: list[dict[int, Answer]],
    ) -> None:
        """Hold the counts again until the guards they hold with are what the other buckets
        still show (``answers`` updated in place; the module's docstring)."""
        for tries in itertools.count(1):
            ups = self.wait.call(self.store.buckets.change_counts, plan.count, sorted(
                {sku for skus in counted.values() for sku in skus}))  # fmt: skip
            moved = [
                i for i, skus in counted.items()
                if all(a.state == MOVE_HELD for a in answers[i].values())
                and any(a.payload != _guard(skus, ups) for a in answers[i].values())
            ]  # fmt: skip
            if not moved:
                return
            self._patience(tries, {sku for i in moved for sku in counted[i]})
            self._gather(plans, plan, hot)
            guards = self._guards(plans, plan, hot, {i: counted[i] for i in moved})
            calls = [(i, slot, Call(REHOLD, plans[i].movement.movement_id, ls, guards[i]))
                     for i in moved for slot, ls in plans[i].slots.items()]  # fmt: skip
            got = self.wait.call(self.store.movements.run, [c for *_, c in calls])
            for (i, slot, _), answer in zip(calls, got, strict=True):
                answers[i][slot] = answer
        raise AssertionError("unreachable")

    def _patience(self, tries: int, skus: Iterable[str]) -> None:
        """Between two tries of a count's guard: at once at first; after ``_TRIES`` (units
        come back into the SKU's other buckets all the time) said once, then a pause each
        time. Never gives up: the count waits (a stop ends the wait, the batch is replayed)."""
        if self._leases is not None:
            self._leases.renew()
        if tries < _TRIES:
            return
        if tries == _TRIES:
            self.wait.say(f"a count of {sorted(skus)} waits: units keep coming back into "
                          "their other buckets")  # fmt: skip
        if self.wait.stopping():
            raise redis.TimeoutError("stopping while a count waits for its buckets")
        time.sleep(_PAUSE_S)


def _unknown(m: events.Movement, skus: set[str], locations: set[str]) -> tuple[str, str] | None:
    """(reason, detail) when the movement names a SKU or location the catalog lacks."""
    for path, loc in (("location", m.location), ("to", m.to)):
        if loc is not None and loc not in locations:
            return "unknown_location", f"{loc!r} is not a location of the catalog - at `$.{path}`"
    for i, ln in enumerate(m.lines):
        if ln.sku not in skus:
            return "unknown_sku", f"{ln.sku!r} is not in the catalog - at `$.lines[{i}].sku`"
    return None


def _plan(m: events.Movement, slot_of: Callable[[str], int]) -> _Plan:
    """The movement's lines per group of script calls (``Store.slot``)."""
    slots: dict[int, list[MoveLine]] = {}
    where = []
    for ln in m.lines:
        op, units = op_of(m.kind, ln.qty)
        slot = slot_of(ln.sku)
        lines = slots.setdefault(slot, [])
        where.append((slot, len(lines)))
        lines.append(MoveLine(ln.sku, op, m.location, units, m.to or ""))
    return _Plan(m, slots, where)


def _parts(plans: list[_Plan], hot: set[str]) -> list[list[_Plan]]:
    """The batch's movements cut after each one that holds between its rounds (lines across
    slots, a count of a hot SKU): it is committed before a later movement of the batch is
    applied (else a later count's hold found its units held, a later sale found none, and a
    rehold took a later receipt's)."""
    out: list[list[_Plan]] = [[]]
    for p in plans:
        out[-1].append(p)
        if len(p.slots) > 1 or _counted([p], hot):
            out.append([])
    return [part for part in out if part]


def _counted(plans: list[_Plan], hot: set[str]) -> dict[int, set[str]]:
    """Per movement that counts a hot SKU (index in ``plans``): the hot SKUs it counts."""
    out: dict[int, set[str]] = {}
    for i, p in enumerate(plans):
        skus = {ln.sku for ls in p.slots.values() for ln in ls if ln.op == "count"} & hot
        if skus:
            out[i] = skus
    return out


def _guard(skus: set[str], ups: dict[str, list[str]]) -> str:
    """A count's guard: the change counts of the other buckets of the hot SKUs it counts, in
    the order of their names (a bucket count changed by a reload changes it too)."""
    return "|".join(",".join(ups[sku]) for sku in sorted(skus))


def _first_round(plans: list[_Plan], guards: dict[int, str]) -> list[Call]:
    """Per movement: one ``apply`` (one slot) or a ``hold`` per slot; a ``hold`` with its
    guard for a count of a hot SKU (committed only once its guard still holds)."""
    calls = []
    for i, p in enumerate(plans):
        guard = guards.get(i)
        mode = APPLY if len(p.slots) == 1 and guard is None else HOLD
        calls += [Call(mode, p.movement.movement_id, ls, guard or "") for ls in p.slots.values()]
    return calls


def _per_slot(plans: list[_Plan], first: Iterable[Answer]) -> list[dict[int, Answer]]:
    """The first round's answers per movement and slot."""
    it = iter(first)
    return [{slot: next(it) for slot in p.slots} for p in plans]


def _second_round(
    plans: list[_Plan], answers: list[dict[int, Answer]]
) -> list[tuple[tuple[int, int], Call]]:
    """The second round: ``commit`` in the slots of a movement held everywhere, ``abort`` in
    those that held when another refused (with that refusal's reason); with (movement index,
    slot) of each call."""
    second: list[tuple[tuple[int, int], Call]] = []
    for i, p in enumerate(plans):
        by_slot = answers[i]
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
    return second


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
