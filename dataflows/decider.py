"""Decide one shard batch: decode, route, one Lua call per hash slot, build the outputs.

Plain Python, no Bytewax: the dataflow's ``decide`` step and the benchmark's bare loop both
call ``Decider.process`` so the ceiling they are compared against does the same Redis work.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis

from dataflows import buckets
from dataflows.aftersale import Aftersale
from dataflows.buckets import BucketPlan
from dataflows.cross_slot import Rules, StaleCatalog, decide_cross
from dataflows.gifts import Settler
from dataflows.refusals import NO_PICKUP, SOLD_OUT, Refusals
from onestock.domain import events, meter
from onestock.domain.records import head, held, pack, rejected
from onestock.domain.routing import Router
from onestock.domain.types import Catalog, Order
from state import keys
from state.conn import Waiter, parse_id
from state.keys import sku_slot
from state.store import Store

# home SKU index, pickup location index (0 = ship), lines, channel index, flags (bit 0: VIP,
# bit 1: store channel), paid_at ms
_HEAD = struct.Struct("<HHHHBQ")
_LINE = struct.Struct("<HI")  # SKU index, qty
# At most this many orders per decide.lua call (a batch's calls still share one round trip):
# each call stays a few ms at most, however large the batch.
CALL_ORDERS = 250


class Decided(msgspec.Struct):
    """What ``emit`` writes for one batch: records and dead letters of shard ``shard``."""

    shard: int
    last_id: str
    records: list[str]  # flat: order_id, registry value, packed record, order_id, ...
    dead: list[list[Any]]  # [entry id, raw text, reason]
    # latency sums and counts (received->decided ms, n, paid->decided ms, n), one metric tag
    # per record (onestock.domain.meter)
    meter: tuple[int, int, int, int, list[str]] | None = None


class _View:
    """The catalog as the decider needs it, rebuilt when the catalog version changes."""

    def __init__(self, catalog: Catalog | None, version: int = 0) -> None:
        catalog = catalog or Catalog(channels=[], locations=[], skus=[])
        self.version = version  # the catalog version, as the scripts check it
        self.router = Router(catalog)
        self.channels = {c.id for c in catalog.channels}
        self.skus = {s.sku for s in catalog.skus}
        # SKUs with rules judged before the stock (per-customer limit, VIP pre-sale, locks)
        self.ruled = {
            s.sku
            for s in catalog.skus
            if s.per_customer_limit is not None
            or s.vip_presale_until is not None
            or s.channel_locks
        }
        self.locations = set(self.router.ids)
        by_id = {loc.id: loc for loc in catalog.locations}
        # units online channels cannot take, per location in router order (store channels can)
        self.safety = [by_id[loc].safety_stock for loc in self.router.ids]
        self.floors = {loc: n for loc, n in zip(self.router.ids, self.safety, strict=True) if n}
        self.store_channels = {c.id for c in catalog.channels if c.kind == "store"}
        self.fewest = int(catalog.routing == "fewest_shipments")
        limits = {s.sku: s.per_customer_limit for s in catalog.skus if s.per_customer_limit}
        presale = {
            s.sku: int(s.vip_presale_until.timestamp() * 1000)
            for s in catalog.skus
            if s.vip_presale_until is not None
        }
        bucketed = frozenset(s.sku for s in catalog.skus if s.buckets > 1)
        self.rules = Rules(
            self.ruled, limits, presale, self.floors, self.store_channels, bool(self.fewest),
            bucketed, version,
        )  # fmt: skip
        self.loc_index = {loc: i + 1 for i, loc in enumerate(self.router.ids)}
        # SKUs with a first-N gift campaign: their accepted orders' records wait for it
        self.campaign_skus = {c.sku for c in catalog.campaigns}
        self.buckets = BucketPlan(catalog, list(self.router.ids), self.floors)


class Decider:
    def __init__(
        self,
        store: Store,
        say: Callable[[str], None] = print,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.wait = Waiter(say, stopping)
        self.version = -1
        self.view = _View(None)
        self.settler = Settler(store, say)
        self.aftersale = Aftersale(store, self.wait, self.settler)
        self._paid: dict[str, int] = {}  # paid_at ms of the batch's orders sent to Lua
        # Hot-SKU buckets: orders that say "short" instead of sold_out in this round, and
        # orders decided in a bucket other than 0 (it holds no safety stock)
        self._retry: set[str] = set()
        self._spread: set[str] = set()
        # (bucketed SKU, pickup store or "" for shipments) whose other buckets had nothing to
        # lend at the last borrowing: such orders skip the first round and go straight to
        # borrowing (sold out: one round, not three)
        self._dry: set[tuple[str, str]] = set()
        # shards whose last emit said no cancel waits for its order (keys.REG_NO_EARLY)
        self._no_early: set[int] = set()
        # per shard: its decide mark as this process last wrote or read it (keys.decide_mark)
        self._mark: dict[int, tuple[int, int]] = {}
        self.refusals = Refusals()  # sold-out orders refused on a batch's first read
        # per shard: the greatest paid_at (ms) of the valid orders this process decided there
        self._seen: dict[int, int] = {}
        # per shard: its watermark (keys.watermark) as this process last read or moved it
        self._wm: dict[int, tuple[int, int]] = {}

    def refresh(self) -> None:
        version = self.wait.call(self.store.catalog_version)
        if version != self.version:
            self.version, catalog = self.wait.call(self.store.catalog)
            self.view = _View(catalog, self.version)
            self._dry.clear()
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
                return self._process(shard, entries)
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

    def _process(self, shard: int, entries: list[tuple[str, bytes]]) -> Decided:
        if not entries:  # a tick from a caught-up shard: only gift settlement to do
            if self.version < 0:
                self.refresh()
            return Decided(shard, "0-0", [], [])
        # Entries at or before the shard's watermark have their outcomes written (a resume
        # from an older snapshot reads them again): never decided again, whatever changed
        # since (a return refused then would find its order now)
        wm = self._wm.get(shard)
        if wm is None:
            stored = self.wait.call(self.store.watermark, shard)
            wm = self._wm[shard] = parse_id(stored) if stored else (0, 0)
        if parse_id(entries[0][0]) <= wm:
            last = entries[-1][0]
            entries = [e for e in entries if parse_id(e[0]) > wm]
            if not entries:
                return Decided(shard, last, [], [])
        self._paid.clear()
        decided = str(int(time.time() * 1000))
        firsts: dict[str, tuple[str, events.Decoded]] = {}
        dead: list[list[Any]] = []
        cancels: dict[str, str] = {}  # order id -> entry id of the (first) cancel in the batch
        returns: list[tuple[str, bytes, events.Return]] = []
        decode, Dead, Valid, Cancel = events.decode, events.Dead, events.Valid, events.Cancel
        now_ms = int(decided)
        for eid, raw in entries:
            d = decode(raw, now_ms)
            cls = d.__class__
            if cls is Dead:
                dead.append([eid, d.raw, d.reason])  # type: ignore[union-attr]
                continue
            if cls is Cancel:
                cancels.setdefault(d.order_id, eid)  # type: ignore[union-attr]
                continue
            if cls is events.Return:
                returns.append((eid, raw, d))  # type: ignore[arg-type]
                continue
            oid = d.order.order_id if cls is Valid else d.order_id  # type: ignore[union-attr]
            if oid not in firsts:  # a later copy in the same batch changes nothing
                firsts[oid] = (eid, d)
        ids = list(firsts)
        # per order id: its registry value (an earlier copy was emitted) and whether a cancel
        # came before it
        # (the catalog version comes in the same round trip: a new catalog applies from here)
        # (while no cancel of the shard waits for its order, as its last emit said, the
        # keys.REG_EARLY_CANCEL lookups are skipped)
        step = 1 if shard in self._no_early else 2
        ec = keys.REG_EARLY_CANCEL
        fields = ids if step == 1 else [f for oid in ids for f in (oid, ec + oid)]
        # (the same round trip reads the SKUs decide.lua last found sold out, and moves the
        # shard's decide mark past this batch before anything of it is decided)
        last_id = entries[-1][0]
        mark = self._mark.get(shard)
        ahead = mark is not None and parse_id(last_id) > mark
        skus, pairs = self.refusals.to_read(firsts, self.view.rules.limits)
        pre = self.wait.call(
            self.store.prelude, shard, fields, skus, pairs, last_id if ahead else None
        )
        if mark is None:  # this process's first batch of the shard: the stored mark
            mark = parse_id(pre.mark)
            if parse_id(last_id) > mark:
                self.wait.call(self.store.set_mark, shard, last_id)
        # Refusals on the read only when every order of the batch comes after the mark (no
        # process ever decided them; a replayed one may hold units, or parts a crashed
        # attempt reserved, that the scripts give back before the batch's later orders),
        # and when the catalog did not change under the read (the view would not be the one
        # the stock was read with)
        refusing = parse_id(entries[0][0]) > mark and pre.version == self.version
        self._mark[shard] = max(mark, parse_id(last_id))
        if pre.version != self.version:
            self.refresh()
        got = pre.registry
        view = self.view
        short = self.refusals.left(pre.skus, view.floors) if refusing else {}
        judge = self.refusals.judge
        channels, bucketed_skus = view.store_channels, view.rules.bucketed
        outcome: dict[str, str] = {}
        held_ids: set[str] = set()
        todo: list[Order] = []
        bucketed: list[Order] = []  # orders of hot SKUs split into buckets, renamed
        plan = view.buckets
        self._retry.clear()
        self._spread.clear()
        seen = self._seen.get(shard, -1)
        # a cancel earlier in this batch than its order: the order is never decided, as when
        # the cancel came in an earlier batch (the outcome must not depend on the batching)
        early = {
            oid
            for oid, at in cancels.items()
            if oid in firsts and parse_id(at) < parse_id(firsts[oid][0])
        }
        for i, oid in enumerate(ids):
            d = firsts[oid][1]
            if d.__class__ is Valid and d.paid_ms > seen:  # type: ignore[union-attr]
                seen = d.paid_ms  # type: ignore[union-attr]
            if got[step * i] is not None:  # replay of an order whose record exists: skip it
                del firsts[oid]
                continue
            if (step == 2 and got[2 * i + 1] is not None) or oid in early:  # cancelled before
                outcome[oid] = "C"  # never decided
                continue
            if d.__class__ is not Valid:
                outcome[oid] = rejected("invalid", d.detail)  # type: ignore[union-attr]
                continue
            o = d.order  # type: ignore[union-attr]
            reason = self._precheck(o)
            if reason is None and short:
                paid_ms = d.paid_ms  # type: ignore[union-attr]
                reason = judge(o, paid_ms, short, pre.bought, channels, bucketed_skus)
            if reason is not None:
                outcome[oid] = reason
                continue
            self._paid[oid] = d.paid_ms  # type: ignore[union-attr]
            if plan.count:
                assigned = plan.assign(o, shard)
                if assigned is not None:
                    o, b = assigned
                    bucketed.append(o)
                    self._retry.add(oid)
                    if b:  # bucket 0 alone holds safety stock
                        self._spread.add(oid)
                    if self._dry and all((t[0], t[2]) in self._dry for t in plan.targets(o)):
                        outcome[oid] = "B"  # sold out at the last look: straight to borrowing
                        continue
            todo.append(o)
        if seen >= 0:
            self._seen[shard] = seen
        self._decide(todo, outcome, held_ids)
        if bucketed:
            again = [o for o in bucketed if buckets.short(outcome[o.order_id])]
            if again:

                def decide(orders: list[Order], retry: set[str]) -> None:
                    self._retry = retry
                    self._decide(orders, outcome, held_ids)

                moved = buckets.borrow_and_decide(
                    self.store, self.wait.call, plan, again, outcome, decide
                )
                for where, units in moved.items():  # none of the SKU's buckets could lend
                    if units:
                        self._dry.discard(where)
                    else:
                        self._dry.add(where)
        gifts = self.view.campaign_skus
        records: list[str] = []
        tags: list[str] = []
        add, tag = records.extend, tags.append
        if cancels:
            out = self.aftersale.cancel(shard, cancels, firsts, outcome, held_ids, decided)
            add(out)
            tags += ["--X" if k.startswith(keys.REG_CANCEL) else "" for k in out[::3]]
        if returns:
            locations = self.view.locations
            out = self.aftersale.returns(shard, returns, firsts, outcome, decided, dead, locations)
            add(out)
            tags += ["--T" if k.startswith(keys.REG_RETURN) else "" for k in out[::3]]
        now = int(decided)
        tag_of = meter.Tagger(now)
        sum_r = sum_p = n_p = 0
        for oid, (eid, d) in firsts.items():
            res = outcome[oid]
            kind = res[0]
            received = eid.partition("-")[0]
            received_ms = int(received)
            sum_r += now - received_ms
            if d.__class__ is Valid:
                o = d.order  # type: ignore[union-attr]
                channel, paid, mode = o.channel, o.paid_at, o.delivery.mode
                paid_ms = d.paid_ms  # type: ignore[union-attr]
                sum_p += now - paid_ms
                n_p += 1
                tag(tag_of(received_ms, paid_ms, res))
                campaign = bool(gifts) and kind == "R" and any(ln.sku in gifts for ln in o.lines)
            else:
                channel, paid, mode = d.channel or "", d.paid_at or "", "ship"  # type: ignore[union-attr]
                tag(tag_of(received_ms, None, res))
                campaign = False
            if oid in held_ids:  # held until its gift is settled; decided at once
                add((oid, "H" + res, held(head(oid, channel, paid, mode, received, decided), res)))
                continue
            rec = pack(oid, channel, paid, mode, received, decided, res)
            if kind == "A":
                add((oid, res, rec))
            elif kind == "C":  # cancelled in this batch (or before it came)
                add((oid, "C", rec))
            elif campaign:  # a rejected campaign order: its decision goes to the decisions stream
                add((oid, "r", rec))
            else:
                add((oid, "R", rec))
        return Decided(shard, last_id, records, dead, (sum_r, len(firsts), sum_p, n_p, tags))

    def _decide(self, orders: list[Order], outcome: dict[str, str], held_ids: set[str]) -> None:
        """Decide valid orders into ``outcome``: one decide.lua call per slot, the orders
        spanning slots slot by slot; first-N candidates go into ``held_ids``."""
        slot_orders: dict[int, list[Order]] = {}  # per slot, in arrival order
        cross: list[Order] = []
        for o in orders:
            lines = o.lines
            slot = sku_slot(lines[0].sku)
            if len(lines) == 1 or all(sku_slot(ln.sku) == slot for ln in lines):
                group = slot_orders.get(slot)
                if group is None:
                    group = slot_orders[slot] = []
                group.append(o)
            else:
                cross.append(o)
        # every order's ranking in one go (numpy's cost is per call, not per customer)
        ranked = dict(zip((o.order_id for o in orders), self._rankings(orders), strict=True))
        if slot_orders:
            # a slot's orders in calls of CALL_ORDERS, in order (one round trip for all)
            groups = [
                g[i : i + CALL_ORDERS]
                for g in slot_orders.values()
                for i in range(0, len(g), CALL_ORDERS)
            ]
            calls = [self._slot_call(group, ranked) for group in groups]
            results = self.wait.call(self.store.decide_slots, calls)
            stale = False  # a call found rules of a newer catalog: it changed nothing
            for group, res in zip(groups, results, strict=True):
                for o, r in zip(group, res, strict=True):
                    text = r.decode()
                    if text == "S":
                        stale = True
                        continue
                    if text[0] == "G":  # accepted and a first-N candidate: record held
                        held_ids.add(o.order_id)
                        text = text[1:]
                    elif text == SOLD_OUT:
                        self.refusals.sold_out(o)
                    outcome[o.order_id] = text
            if stale:
                raise StaleCatalog
        if cross:
            gifts = self.view.campaign_skus
            router = self.view.router
            rankings = [router.decode(ranked[o.order_id]) for o in cross]
            decide_cross(
                self.store, self.wait.call, cross, rankings, outcome, self.view.rules, self._retry,
                paid=self._paid,
            )  # fmt: skip
            candidates: dict[str, list[tuple[str, int]]] = {}
            for o in cross:  # an order reserved whole with a campaign SKU is a candidate
                res = outcome[o.order_id]
                if res[0] == "A" and any(ln.sku in gifts for ln in o.lines):
                    held_ids.add(o.order_id)
                    for sku in {ln.sku for ln in o.lines if ln.sku in gifts}:
                        candidates.setdefault(sku, []).append((o.order_id, self._paid[o.order_id]))
                elif res == SOLD_OUT:  # (the next read keeps only SKUs without the units)
                    self.refusals.sold_out(o)
            for sku, items in candidates.items():  # (only now: every part is reserved)
                self.wait.call(self.store.campaigns.add_candidates, sku, items)

    def emit(self, d: Decided) -> None:
        # Every batch read is emitted, also one that writes nothing new (a retried delivery,
        # a duplicate cancel): its entries have their outcomes, so the watermark moves past
        # them and a drain ends.
        idle = d.last_id == "0-0"  # a tick: the shard has nothing left to read
        if d.records or d.dead or not idle:
            if self.wait.call(self.store.emit, d.shard, d.last_id, d.records, d.dead, d.meter):
                self._no_early.add(d.shard)
            else:
                self._no_early.discard(d.shard)
            if not idle and d.shard in self._wm:
                self._wm[d.shard] = max(self._wm[d.shard], parse_id(d.last_id))
        if self.view.campaign_skus:  # how far the shard read in event time (first-N)
            seen = self._seen.get(d.shard)
            now = int(time.time() * 1000)
            self.wait.call(self.store.campaigns.report, d.shard, seen, idle, now)
        if self.settler.due():
            self.wait.call(self.settler.run)

    # -- helpers ---------------------------------------------------------------------------

    def _precheck(self, o: Order) -> str | None:
        """Rejections that need only the catalog (the Lua script re-checks SKUs atomically)."""
        view = self.view
        if o.channel not in view.channels:
            return rejected("unknown_channel")
        for ln in o.lines:
            if ln.sku not in view.skus:
                return rejected("unknown_sku")
        if o.delivery.mode == "pickup":
            store = o.delivery.store
            if store not in view.locations:
                return rejected(
                    "invalid", f"delivery.store: unknown location {store!r} - at `$.delivery.store`"
                )
            if store not in view.router.pickup:
                return NO_PICKUP
        return None

    def _rankings(self, orders: list[Order]) -> list[bytes]:
        coords = [
            (o.customer.lat, o.customer.lon) if o.customer.lat is not None else None for o in orders
        ]
        return self.view.router.rank_batch(coords)  # type: ignore[arg-type]

    def _slot_call(
        self, orders: list[Order], ranked: dict[str, bytes]
    ) -> tuple[list[str], list[Any]]:
        """(SKUs, ARGV) of one decide.lua call: each order is its id and a binary spec."""
        view = self.view
        sku_index: dict[str, int] = {}
        chan_index: dict[str, int] = {}
        body: list[Any] = [len(orders)]
        paid_of = self._paid
        for o in orders:
            ranking = ranked[o.order_id]
            lines = o.lines
            for ln in lines:
                if ln.sku not in sku_index:
                    sku_index[ln.sku] = len(sku_index) + 1
            # The outcome lives with the order's smallest SKU name: the same key on every replay.
            home = (
                sku_index[min(ln.sku for ln in lines)]
                if len(lines) > 1
                else sku_index[lines[0].sku]
            )
            paid = paid_of[o.order_id]
            chan = chan_index.get(o.channel)
            if chan is None:
                chan = chan_index[o.channel] = len(chan_index) + 1
            flags = o.customer.vip | (2 if o.channel in view.store_channels else 0)
            if self._spread and o.order_id in self._spread:
                flags |= 2
            if self._retry and o.order_id in self._retry:  # a hot SKU's bucket may borrow
                flags |= 4
            if o.delivery.mode == "pickup":
                pickup = view.loc_index[o.delivery.store]  # type: ignore[index]
                head = _HEAD.pack(home, pickup, len(lines), chan, flags, paid)
                ranking = b""
            else:
                head = _HEAD.pack(home, 0, len(lines), chan, flags, paid)
            if len(lines) == 1:
                spec = head + _LINE.pack(sku_index[lines[0].sku], lines[0].qty) + ranking
            else:
                spec = (
                    head + b"".join(_LINE.pack(sku_index[ln.sku], ln.qty) for ln in lines) + ranking
                )
            # (the customer id always goes: the script judges the rules Redis holds, which a
            # catalog loaded since this process's view may have given a per-customer limit)
            body += [o.order_id, spec, o.customer.id]
        skus = list(sku_index)
        ids = view.router.ids
        chans = list(chan_index)
        header = [len(skus), len(ids), len(chans), view.fewest, *skus, *ids, *view.safety, *chans]
        return skus, [*header, *body, view.version]  # (the version last: decide.lua)
