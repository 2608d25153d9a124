"""Decide one shard batch: decode, route, one Lua call per hash slot, build the outputs.

Plain Python, no Bytewax: the dataflow's ``decide`` step and the benchmark's bare loop both
call ``Decider.process`` so the ceiling they are compared against does the same Redis work.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import redis

from dataflows import buckets
from dataflows.admission import precheck, room
from dataflows.aftersale import Aftersale
from dataflows.batch import Batch, Entry, by_generation, decode, decoded, triples
from dataflows.borrowing import Borrowing
from dataflows.cross_slot import StaleCatalog, decide_cross
from dataflows.gifts import Settler
from dataflows.housekeeping import Housekeeper
from dataflows.lifecycle import Lifecycle
from dataflows.movements import Movements
from dataflows.payments import segments
from dataflows.refusals import NO_PICKUP, SOLD_OUT, Left, Refusals
from dataflows.view import CatalogView
from onestock.domain import events, meter
from onestock.domain.protocol import Code, ProtocolError
from onestock.domain.records import rejected
from onestock.domain.types import Order
from state import gens, keys
from state.conn import Waiter, parse_id
from state.keys import sku_slot
from state.skus import DecideArgs
from state.store import Store

# At most this many orders per decide.lua call (a batch's calls still share one round trip):
# each call stays a few ms at most, however large the batch.
CALL_ORDERS = 250
# how often a dataflow process looks for generations to delete (state/gens.py)
# decide.lua's answers that are the order's outcome as they stand (besides CANDIDATE + an
# accepted outcome, and STALE)
_FINAL = frozenset(c.value for c in (Code.ACCEPTED, Code.REJECTED, Code.BUCKET_SHORT))
# the metric tags of after-sale records (onestock.domain.meter: no latency buckets)
_CANCEL_TAG = f"{meter.NONE}{meter.NONE}{Code.CANCELLATION}"
_RETURN_TAG = f"{meter.NONE}{meter.NONE}{Code.RETURN}"


class Decided(msgspec.Struct):
    """What ``emit`` writes for one batch: records and dead letters of shard ``shard``."""

    shard: int
    last_id: str
    records: list[str]  # flat: order_id, registry value, packed record, order_id, ...
    dead: list[list[Any]]  # [entry id, raw text, reason]
    # latency sums and counts (received->decided ms, n, paid->decided ms, n), one metric tag
    # per record (onestock.domain.meter)
    meter: tuple[int, int, int, int, list[str]] | None = None
    gen: int = -1  # the generation its registry writes go to (state/gens.py; -1: as it is)
    # (first record, how many, none held): records of orders the batch's prelude found in no
    # registry generation, which emit.lua need not look up again (nothing else writes them
    # between: one owner per shard, one batch of it in flight; ``Shards.emit``), and whether
    # none of them waits for its gift (Code.HELD)
    known: tuple[int, int, bool] = (0, 0, False)


class _Prelude(NamedTuple):
    """The batch's first round trip (``Decider._prelude``)."""

    ids: list[str]  # the batch's order ids, in the order of ``registry``
    registry: list[bytes | None]  # per order: its registry value[, its early cancel]
    step: int  # values per order in ``registry``: 1, or 2 with the early-cancel lookups
    short: dict[str, Left]  # SKUs read that can refuse an order on the read
    bought: dict[tuple[str, str], int]  # units sold so far per (SKU, customer) read
    # the shard's decide mark before this batch: an order at or before it may have been
    # decided by a run that died before its record was written (decide.lua holds its units)
    mark: tuple[int, int]
    fresh: bool = False  # the batch is wholly after the mark, no quarantine near


class _Judged(NamedTuple):
    """The orders judged before deciding (``Decider._judge``)."""

    outcome: dict[str, str]  # order id -> outcome, for the orders judged without Redis
    todo: list[Order]  # the orders to decide, in arrival order
    bucketed: list[Order]  # orders of hot SKUs, renamed to their bucket (may borrow)


def _by_slot(orders: list[Order], one: bool) -> tuple[dict[int, list[Order]], list[Order]]:
    """The orders per slot of their first line, in arrival order; and the orders spanning
    slots. ``one``: the dataset's layout lets a call span slots (``Store.layout``): no order
    spans, a basket is decided with its first line's slot (the calls' SKUs stay few)."""
    slot_orders: dict[int, list[Order]] = {}
    cross: list[Order] = []
    for o in orders:
        lines = o.lines
        slot = sku_slot(lines[0].sku)
        if one or len(lines) == 1 or all(sku_slot(ln.sku) == slot for ln in lines):
            group = slot_orders.get(slot)
            if group is None:
                group = slot_orders[slot] = []
            group.append(o)
        else:
            cross.append(o)
    return slot_orders, cross


class Decider:
    def __init__(
        self,
        store: Store,
        say: Callable[[str], None] = print,
        stopping: Callable[[], bool] = lambda: False,
        sweeping: bool = False,
    ) -> None:
        self.store = store
        self.wait = Waiter(say, stopping)
        # this process keeps the state bounded (the dataflow's deciders do): deletes past
        # generations, trims the records every reader is past (dataflows/housekeeping.py)
        self.housekeeper = Housekeeper(store, self.wait) if sweeping else None
        self.version = -1
        self.one = False  # the dataset's layout decides a basket in one call (Store.layout)
        # One server: a crash loses its last writes together (one AOF), the decide mark with
        # the decisions after it; a Cluster's masters fail over apart, and a shard's node may
        # lose its mark while a SKU's keeps the decisions. Only on one server may a batch
        # after the mark skip the stored outcomes (``_prelude``).
        self._alone = isinstance(store.r, redis.Redis)
        self.view = CatalogView(None)
        self.settler = Settler(store, say)
        self.aftersale = Aftersale(store, self.wait, self.settler)
        self.movements = Movements(store, self.wait)
        self.lifecycle = Lifecycle(store, self.wait, self.aftersale)
        # per order id: the location indices its ranking leaves out (their day is full)
        self._skip: dict[str, frozenset[int]] = {}
        self._pending: dict[str, int] = {}  # the batch's pending orders -> deadline ms
        self._after: dict[int, str] = {}  # per shard: the last entry id this process decided
        self._paid: dict[str, int] = {}  # paid_at ms of the batch's orders sent to Lua
        # orders the catalog refuses that may have been decided (``_judge``): their reasons,
        # given where the scripts find no stored outcome (FLAG_STORED)
        self._refused: dict[str, str] = {}
        # shards whose last emit said no cancel waits for its order (keys.REG_NO_EARLY)
        self._no_early: set[int] = set()
        # per shard: its decide mark as this process last wrote or read it (keys.decide_mark)
        self._mark: dict[int, tuple[int, int]] = {}
        # per shard: the generation of its last quarantine (keys.quarantined), when it had one
        self._quarantined: dict[int, int] = {}
        self._fresh = False  # no order of the batch was ever decided (``_prelude``)
        self._journal: str | None = None  # its shard's journal, on one server (keys.journal)
        self.refusals = Refusals()  # sold-out orders refused on a batch's first read
        self.borrowing = Borrowing(store, self.wait.call, self.refusals)  # hot-SKU buckets
        # per shard: the greatest paid_at (ms) of the valid orders this process decided there
        self._seen: dict[int, int] = {}
        # per shard: its watermark (keys.watermark) as this process last read or moved it
        self._wm: dict[int, tuple[int, int]] = {}
        # per shard: the last entry id whose outcomes this process wrote (``written``)
        self._written: dict[int, tuple[int, int]] = {}

    def quarantined(self, shard: int) -> None:
        """An event of ``shard`` was quarantined (dataflows/quarantine.py): its order may have
        been decided with no record, so no batch of the shard is fresh until a later copy
        can no longer find that decision (two generations on)."""
        gen = self.store.gen.now
        self.wait.call(self.store.shards.quarantine, shard, gen)
        self._quarantined[shard] = gen

    def written(self, shard: int) -> tuple[int, int]:
        """The last entry id of ``shard`` whose outcomes this process wrote ((0, 0): none):
        the source reads a shard's next batch only once its last one is written
        (``dataflows.source``)."""
        return self._written.get(shard, (0, 0))

    def refresh(self) -> None:
        self.one = self.wait.call(self.store.layout) == keys.LAYOUT_ONE
        version = self.wait.call(self.store.catalog_version)
        if version != self.version:
            self.version, catalog = self.wait.call(self.store.catalog)
            self.view = CatalogView(catalog, self.version)
            self.borrowing.dry.clear()
            if catalog is not None:
                self.settler.load(catalog)
                buckets.reconcile(self.store, self.wait.call, self.view.buckets)

    def process(self, shard: int, entries: list[tuple[str, bytes]]) -> Decided:
        """Outcomes for a batch read from ``shard`` (entry id, raw event).

        A script that finds rules newer than this process's catalog changes nothing and
        says so (``StaleCatalog``): the catalog is read again and the batch decided again
        (what was decided stands: the scripts answer a replay with its stored outcome), so
        every order is judged by one catalog. A load writes its version last: until then
        its SKUs' orders wait (a load killed half way holds them until the next load)."""
        waited = 0
        while True:
            try:
                return self._segmented(shard, entries)
            except StaleCatalog:
                before = self.version
                self.refresh()
                if self.version != before:
                    continue
                if self.wait.stopping():
                    raise redis.TimeoutError(
                        "stopping while a catalog load is unfinished"
                    ) from None
                if waited == 50:  # a second
                    self.wait.say(f"a catalog newer than version {before} is being loaded: "
                                  "orders of its SKUs wait for it")  # fmt: skip
                waited += 1
                time.sleep(0.02)

    def _segmented(self, shard: int, entries: list[tuple[str, bytes]]) -> Decided:
        """The batch's parts (``payments.segments``) in order: each but the last written
        at once (emit.lua without moving the watermark: the last part moves it)."""
        if not entries:
            return self._tick(shard)
        now = int(time.time() * 1000)
        parts = [p for same in by_generation(decoded(entries, now)) for p in segments(same)]
        for part in parts[:-1]:
            self.store.gen.now = gens.of_id(part[0][0])
            d = self._process(shard, part)
            self.emit(Decided(d.shard, "-", d.records, d.dead, d.meter, d.gen, d.known))
        self.store.gen.now = gens.of_id(parts[-1][0][0])
        return self._process(shard, parts[-1])

    def _tick(self, shard: int) -> Decided:
        """A caught-up shard: gift settlement (in ``emit``) and the payment deadlines due."""
        if self.version < 0:
            self.refresh()
        after = self._after.get(shard)
        if after is None:
            after = self._after[shard] = self.wait.call(self.store.shards.watermark, shard) or ""
        decided = str(int(time.time() * 1000))
        # the shard's timers read the generation of its last event (a reserved order or a
        # shipment waiting there came at most a window before it: state/gens.py)
        self.store.gen.now = gens.of_id(after) if after else gens.of_ms(int(decided))
        later = self.lifecycle.tick(shard, after, self.view.places, decided)
        meter = (0, 0, 0, 0, later.tags) if later.records else None
        return Decided(shard, "0-0", later.records, [], meter, self.store.gen.now)

    def _process(self, shard: int, entries: list[Entry]) -> Decided:
        """The batch's phases, each named by what it hands on (every phase is one call per
        batch: the loops over orders stay inside them)."""
        last_id = entries[-1][0]
        entries = self._after_watermark(shard, entries)
        # [(entry id, raw event, decoded), ...]: only entries no outcome was written for
        if not entries:
            return Decided(shard, last_id, [], [])
        self._paid.clear()
        self._pending.clear()
        self._refused.clear()
        decided = str(int(time.time() * 1000))
        batch = decode(entries)
        # Batch(firsts {order id: (entry id, Decoded)}, cancels, returns, dead, seen)
        pre = self._prelude(shard, batch.firsts, entries[0][0], last_id)
        # _Prelude(ids, registry values, step, SKUs short on the read, bought), catalog fresh
        judged = self._judge(shard, batch, pre)
        # _Judged({order id: outcome} so far, [Order] to decide, [Order] of hot-SKU buckets);
        # batch.firsts without the replays
        if batch.seen > self._seen.get(shard, -1):
            self._seen[shard] = batch.seen
        outcome = judged.outcome
        held_ids: set[str] = set()
        self._skip.clear()
        if self.view.places.capacity and judged.todo and self._calm(shard):
            self._room(batch.firsts, judged, pre.mark)  # full days: left out (new orders)
        self._decide(judged.todo, outcome, held_ids)
        if judged.bucketed:
            self.borrowing.borrow(
                self.view, judged.bucketed, outcome,
                lambda orders: self._decide(orders, outcome, held_ids), self._ranking, self._paid,
            )  # fmt: skip
        new = self.lifecycle.route(
            batch.firsts, outcome, held_ids, self._pending, self.view.places, self._ranking,
            decided,
        )  # fmt: skip
        # orders moved off locations whose day is full; pending ones reserved (the new ones)
        # outcome: every order's; held_ids: first-N candidates (their records are held)
        records, tags = self._aftersale(shard, batch, outcome, held_ids, decided)
        # registry triples and metric tags of the cancels and returns; outcome says which
        # orders of the batch were cancelled
        if batch.movements:
            moved, moved_tags = self.movements.apply(
                shard, batch.movements, self.view.skus, self.view.locations, self.view.buckets,
                decided,
            )  # fmt: skip
            records += moved  # registry triples of the movements' records
            tags += moved_tags
        known = (len(records) // 3, len(batch.firsts), not held_ids)  # the orders' triples next
        sums = triples(
            batch.firsts, outcome, held_ids, decided, records, tags, self.view.campaign_skus
        )
        # records, tags: with each order's registry triple and tag
        busy = {*batch.firsts, *batch.cancels, *(r.order_id for *_, r in batch.returns)}
        later = self.lifecycle.after(
            shard, batch.paids, batch.fulfilments, busy, records, new, self.view.places,
            self.view.campaign_skus, last_id, decided, batch.dead,
        )  # fmt: skip
        # payments, fulfilment feedback, claim timeouts, expiries: later versions' triples
        records += later.records
        tags += later.tags
        if later.paid_ms > self._seen.get(shard, -1):  # (first-N: payments rank by paid_at)
            self._seen[shard] = later.paid_ms
        self._after[shard] = last_id
        return Decided(shard, last_id, records, batch.dead, sums, self.store.gen.now, known)

    # -- the phases of a batch ---------------------------------------------------------------

    def _after_watermark(self, shard: int, entries: list[Entry]) -> list[Entry]:
        """The entries after the shard's watermark. Entries at or before it have their
        outcomes written (a resume from an older snapshot reads them again): never decided
        again, whatever changed since (a return refused then would find its order now)."""
        wm = self._wm.get(shard)
        if wm is None:
            stored = self.wait.call(self.store.shards.watermark, shard)
            wm = self._wm[shard] = parse_id(stored) if stored else (0, 0)
        if parse_id(entries[0][0]) > wm:
            return entries
        return [e for e in entries if parse_id(e[0]) > wm]

    def _prelude(
        self,
        shard: int,
        firsts: dict[str, tuple[str, events.Decoded]],
        first_id: str,
        last_id: str,
    ) -> _Prelude:
        """The batch's first round trip: per order id its registry value (an earlier copy
        was emitted) and whether a cancel came before it; the catalog version (a new catalog
        applies from here); the stock of the SKUs decide.lua last found sold out (refusals
        on the read); and the shard's decide mark moved past this batch before anything of
        it is decided. (While no cancel of the shard waits for its order, as its last emit
        said, the keys.REG_EARLY_CANCEL lookups are skipped.)"""
        ids = list(firsts)
        step = 1 if shard in self._no_early else 2
        ec = keys.REG_EARLY_CANCEL
        fields = ids if step == 1 else [f for oid in ids for f in (oid, ec + oid)]
        mark = self._mark.get(shard)
        ahead = mark is not None and parse_id(last_id) > mark

        def after(m: tuple[int, int]) -> bool:  # the batch is wholly after mark m (below)
            return parse_id(first_id) > m and self._calm(shard)

        # A fresh batch known so before the read: the batch before it was written, so the
        # journal's outcomes are in the registry (deleted here: it holds one batch's calls)
        forget = self._alone and mark is not None and after(mark)
        rules = self.view.rules
        skus, pairs, whole = self.refusals.to_read(firsts, rules.limits, rules.bucketed)
        pre = self.wait.call(
            self.store.shards.prelude, shard, fields, skus, pairs, last_id if ahead else None,
            forget,
        )  # fmt: skip
        if mark is None:  # this process's first batch of the shard: the stored mark
            mark = parse_id(pre.mark)  # type: ignore[arg-type]
            if pre.quarantined is not None:
                self._quarantined[shard] = pre.quarantined
            if parse_id(last_id) > mark:
                # fresh: every entry up to the mark is at or before the watermark (the source
                # resumes there at the latest and reads on in order), so written: the journal
                # of the process before goes too (else each start would leave its batch there)
                forget = self._alone and after(mark)
                self.wait.call(self.store.shards.set_mark, shard, last_id, forget)
        # Fresh: every order of the batch comes after the mark, so no process ever decided
        # it (a replayed one may hold units, or parts a crashed attempt reserved, that the
        # scripts give back before the batch's later orders); an earlier copy of one has its
        # record written (the source hands out one batch of a shard at a time), which the
        # registry read found; unless a quarantine left a decision without its record.
        # Such a batch's orders are refused on the read where the catalog did not change
        # under it (the view would not be the one the stock was read with); on one server
        # (``_alone``) the batch is fresh: decide.lua reads no stored outcome for it, and its
        # outcomes go to the shard's journal, which a replay reads (it is kept while a
        # quarantine keeps batches from being fresh: the quarantined event's may be there).
        fresh = after(mark)
        self._fresh = fresh and self._alone
        self._journal = keys.journal(shard) if self._alone else None
        refusing = fresh and pre.version == self.version
        self._mark[shard] = max(mark, parse_id(last_id))
        if pre.version != self.version:
            self.refresh()
        short = self.refusals.left(pre.skus, self.view.floors) if refusing else {}
        if refusing and whole:  # hot SKUs split into buckets: every bucket read at one moment
            counts = self.view.buckets.count
            read = self.wait.call(
                self.store.buckets.snapshot, {s: counts[s] for s in whole if s in counts},
                self.version,
            )  # fmt: skip
            short.update(self.refusals.pooled(read, self.view.floors))
        return _Prelude(ids, pre.registry, step, short, pre.bought, mark, fresh)

    def _calm(self, shard: int) -> bool:
        """No quarantine of the shard in this generation or the two before (its event may
        have been decided with no record: no batch of the shard is fresh meanwhile)."""
        q = self._quarantined.get(shard)
        return q is None or self.store.gen.now > q + 2

    def _judge(self, shard: int, batch: Batch, pre: _Prelude) -> _Judged:
        """Every order judged before deciding: a replay of an order whose record exists is
        skipped (dropped from ``batch.firsts``); one a cancel came before is cancelled, never
        decided; an invalid one, or one the catalog (``admission.precheck``) or the read
        (``Refusals.judge``) refuses, is rejected; the rest go to the scripts, those of hot
        SKUs renamed to their bucket (``Borrowing.assign``)."""
        firsts, got, step = batch.firsts, pre.registry, pre.step
        view = self.view
        short, bought = pre.short, pre.bought
        judge, paid = self.refusals.judge, self._paid
        channels = view.store_channels
        Valid, cancelled = events.Valid, Code.CANCELLED
        calm, mark = self._calm(shard), pre.mark

        def maybe(eid: str) -> bool:  # the order may have been decided (_Prelude.mark)
            return not calm or parse_id(eid) <= mark

        outcome: dict[str, str] = {}
        todo: list[Order] = []
        # a cancel earlier in this batch than its order: the order is never decided, as when
        # the cancel came in an earlier batch (the outcome must not depend on the batching)
        early = {
            oid
            for oid, at in batch.cancels.items()
            if oid in firsts and parse_id(at) < parse_id(firsts[oid][0])
        }
        for i, oid in enumerate(pre.ids):
            if got[step * i] is not None:  # replay of an order whose record exists: skip it
                del firsts[oid]
                continue
            if (step == 2 and got[2 * i + 1] is not None) or oid in early:  # cancelled before
                outcome[oid] = cancelled  # never decided
                continue
            d = firsts[oid][1]
            if d.__class__ is not Valid:
                outcome[oid] = rejected("invalid", d.detail)  # type: ignore[union-attr]
                continue
            o = d.order  # type: ignore[union-attr]
            reason = precheck(view, o)
            if reason is not None:
                if maybe(firsts[oid][0]):
                    # a run that died before its record may have decided it (its units
                    # taken) by the catalog before: only its stored outcome is asked
                    self._refused[oid] = reason
                    reason = None
            elif short and (len(o.lines) > 1 or o.lines[0].sku in short):
                paid_ms = d.paid_ms  # type: ignore[union-attr]
                reason = judge(o, paid_ms, short, bought, channels)
            if reason is not None:
                outcome[oid] = reason
                continue
            paid[oid] = d.paid_ms  # type: ignore[union-attr]
            if d.deadline_ms:  # type: ignore[union-attr]
                self._pending[oid] = self._deadline(firsts[oid][0], d.deadline_ms)  # type: ignore[union-attr]
            todo.append(o)
        self.borrowing.retry.clear()
        self.borrowing.spread.clear()
        if not view.buckets.count:
            return _Judged(outcome, todo, [])
        # (an order an earlier run may have decided: its replay goes to the bucket that holds
        # its outcome, which the catalog's bucket choice may no longer name)
        maybe_ids = (
            set() if pre.fresh else {o.order_id for o in todo if maybe(firsts[o.order_id][0])}
        )
        return _Judged(outcome, *self.borrowing.assign(view, shard, todo, outcome, maybe_ids))

    def _aftersale(
        self,
        shard: int,
        batch: Batch,
        outcome: dict[str, str],
        held_ids: set[str],
        decided: str,
    ) -> tuple[list[str], list[str]]:
        """The batch's cancels, then its returns (``Aftersale``): their registry triples
        (flat) and a metric tag per triple ("": not counted)."""
        records: list[str] = []
        tags: list[str] = []
        firsts = batch.firsts
        if batch.cancels:
            out = self.aftersale.cancel(shard, batch.cancels, firsts, outcome, held_ids, decided)
            records += out
            tags += [_CANCEL_TAG if k.startswith(keys.REG_CANCEL) else "" for k in out[::3]]
        if batch.returns:
            locations = self.view.locations
            out = self.aftersale.returns(
                shard, batch.returns, firsts, outcome, decided, batch.dead, locations
            )
            records += out
            tags += [_RETURN_TAG if k.startswith(keys.REG_RETURN) else "" for k in out[::3]]
        return records, tags

    # -- deciding --------------------------------------------------------------------------

    def _decide(self, orders: list[Order], outcome: dict[str, str], held_ids: set[str]) -> None:
        """Decide valid orders into ``outcome``: one decide.lua call per slot, the orders
        spanning slots slot by slot; first-N candidates go into ``held_ids``."""
        slot_orders, cross = _by_slot(orders, self.one)
        # every order's ranking in one go (numpy's cost is per call, not per customer)
        ranked = dict(zip((o.order_id for o in orders), self._rankings(orders), strict=True))
        if slot_orders:
            self._decide_slots(slot_orders, ranked, outcome, held_ids)
        if cross:
            self._decide_cross(cross, ranked, outcome, held_ids)

    def _decide_slots(
        self,
        slot_orders: dict[int, list[Order]],
        ranked: dict[str, bytes],
        outcome: dict[str, str],
        held_ids: set[str],
    ) -> None:
        """The orders of one slot each: decide.lua, a slot's orders in calls of CALL_ORDERS,
        in order, the slots in ascending order (one round trip for all; a basket decided with
        its first line's slot meets the other slots' orders in an order easy to state). An
        answer the protocol does not know raises."""
        groups = [
            g[i : i + CALL_ORDERS]
            for g in (slot_orders[slot] for slot in sorted(slot_orders))
            for i in range(0, len(g), CALL_ORDERS)
        ]
        results = self.wait.call(self.store.skus.decide, groups, self._decide_args(ranked))
        stale = False  # a call found rules of a newer catalog: it changed nothing
        final, candidate, sold_out = _FINAL, Code.CANDIDATE, self.refusals.sold_out
        for group, res in zip(groups, results, strict=True):
            for o, r in zip(group, res, strict=True):
                text = r.decode()
                code = text[:1]
                if code in final:
                    if text == SOLD_OUT:
                        sold_out(o)
                    elif text == NO_PICKUP:
                        self.refusals.no_pickup(o)
                elif code == candidate:  # accepted and a first-N candidate: record held
                    held_ids.add(o.order_id)
                    text = text[1:]
                elif text == Code.STALE:
                    stale = True
                    continue
                elif text == Code.UNDECIDED and o.order_id in self._refused:
                    text = self._refused[o.order_id]  # never decided: the catalog's reason
                else:
                    raise ProtocolError(f"decide.lua answered {text[:40]!r} for {o.order_id!r}")
                outcome[o.order_id] = text
        if stale:
            raise StaleCatalog

    def _decide_cross(
        self,
        cross: list[Order],
        ranked: dict[str, bytes],
        outcome: dict[str, str],
        held_ids: set[str],
    ) -> None:
        """The orders spanning slots (``cross_slot.decide_cross``); an order reserved whole
        with a campaign SKU becomes a first-N candidate of it (only then: every part is
        reserved)."""
        gifts = self.view.campaign_skus
        router = self.view.router
        rankings = [router.decode(ranked[o.order_id]) for o in cross]
        decide_cross(
            self.store, self.wait.call, cross, rankings, outcome, self.view.rules,
            self.borrowing.retry, paid=self._paid, refused=self._refused,
        )  # fmt: skip
        candidates: dict[str, list[tuple[str, int]]] = {}
        for o in cross:
            res = outcome[o.order_id]
            if (
                res[0] == Code.ACCEPTED
                and o.order_id not in self._pending  # (a payment makes it a candidate)
                and any(ln.sku in gifts for ln in o.lines)
            ):
                held_ids.add(o.order_id)
                for sku in {ln.sku for ln in o.lines if ln.sku in gifts}:
                    candidates.setdefault(sku, []).append((o.order_id, self._paid[o.order_id]))
            elif res == SOLD_OUT:  # (the next read keeps only SKUs without the units)
                self.refusals.sold_out(o)
            elif res == NO_PICKUP:
                self.refusals.no_pickup(o)
        for sku, items in candidates.items():
            self.wait.call(self.store.campaigns.add_candidates, sku, items)

    def emit(self, d: Decided) -> None:
        # Every batch read is emitted, also one that writes nothing new (a retried delivery,
        # a duplicate cancel): its entries have their outcomes, so the watermark moves past
        # them and a drain ends.
        idle = d.last_id == "0-0"  # a tick: the shard has nothing left to read
        if d.gen >= 0:
            self.store.gen.now = d.gen
        elif d.records:  # (they would land in whichever generation this process last used)
            raise ProtocolError(f"records of shard {d.shard} without their generation")
        self._changed()
        if d.records or d.dead or not idle:
            if self.wait.call(
                self.store.shards.emit, d.shard, d.last_id, d.records, d.dead, d.meter, d.known
            ):
                self._no_early.add(d.shard)
            else:
                self._no_early.discard(d.shard)
            if not idle and d.last_id != "-":
                done = parse_id(d.last_id)
                if d.shard in self._wm:
                    self._wm[d.shard] = max(self._wm[d.shard], done)
                if done > self._written.get(d.shard, (0, 0)):
                    self._written[d.shard] = done
        if self.view.campaign_skus:  # how far the shard read in event time (first-N)
            seen = self._seen.get(d.shard)
            now = int(time.time() * 1000)
            self.wait.call(self.store.campaigns.report, d.shard, seen, idle, now)
        if self.settler.due():
            self.wait.call(self.settler.run)
            self._changed()
        if self.housekeeper is not None:
            self.housekeeper.look()

    def close(self) -> None:
        """The dataflow completes: keep the state tidy once more (a drained run's records
        are trimmed where their readers are past them)."""
        if self.housekeeper is not None:
            self.housekeeper.look(force=True)

    def _changed(self) -> None:
        """Tell the availability feed which SKUs this process's scripts changed since it
        last did (``Store.touched``). Before the batch's records are written: a crash
        between the two replays the batch, whose scripts touch the SKUs again."""
        touched = self.store.touched
        if touched:
            names = list(touched)
            touched.clear()
            self.wait.call(self.store.feed.mark, names)

    # -- helpers ---------------------------------------------------------------------------

    def _deadline(self, eid: str, deadline_ms: int) -> int:
        """A pending order's deadline: its own, or the catalog's default after it came; at
        most events.STALE_MS after it came (its state lives a window: docs/memory.md)."""
        came = int(eid.partition("-")[0])
        if deadline_ms == events.DEFAULT_DEADLINE:
            deadline_ms = came + self.view.payment_deadline_ms
        return min(deadline_ms, came + events.STALE_MS)

    def _ranking(self, o: Order) -> list[str]:
        """The locations of an order, nearest first."""
        return self.view.router.decode(self._rankings([o])[0])

    def _rankings(self, orders: list[Order]) -> list[bytes]:
        coords = [
            (o.customer.lat, o.customer.lon) if o.customer.lat is not None else None for o in orders
        ]
        out = self.view.router.rank_batch(coords)  # type: ignore[arg-type]
        if self._skip:  # (locations whose day is full)
            for i, o in enumerate(orders):
                drop = self._skip.get(o.order_id)
                if drop:
                    kept = [x for x in array("H", out[i]) if x not in drop]
                    out[i] = array("H", kept).tobytes()
        return out

    def _room(
        self, firsts: dict[str, tuple[str, events.Decoded]], judged: _Judged, mark: tuple[int, int]
    ) -> None:
        """The daily capacities on the read (``admission.room``): full locations left out of
        the new orders' rankings, pickups at a full store rejected."""
        skip, turned = room(self.view, self.store, self.wait.call, firsts, judged.todo, mark)
        self._skip.update(skip)
        if turned:
            judged.outcome.update(turned)
            judged.todo[:] = [o for o in judged.todo if o.order_id not in turned]
            judged.bucketed[:] = [o for o in judged.bucketed if o.order_id not in turned]

    def _decide_args(self, ranked: dict[str, bytes]) -> DecideArgs:
        """What the batch's decide.lua calls take besides their orders (``state.skus`` packs
        them): the catalog as this process's view has it, and the orders' rankings, paid_at
        and hot-SKU bucket flags."""
        view, hot = self.view, self.borrowing
        return DecideArgs(
            view.router.ids, view.loc_index, view.safety, view.fewest, view.store_channels,
            view.version, ranked, self._paid, hot.spread, hot.retry, self._pending.keys(),
            self._fresh, self._journal, self._refused.keys(),
        )  # fmt: skip
