"""Fast mode: a history through the real decider in this process, with simulated crashes.

The dataflow is played as ``dataflows.flow`` and ``dataflows.source`` play it: per worker one
``Decider`` over its shards; a step reads a batch per chosen shard (``Store.read``), decides
each (``Decider.process``) and then writes them (``Decider.emit``, which also settles gifts
now and then), as a Bytewax worker step does. Pushes (``ops.push``) and a catalog reload
(``ops.load_catalog``) come from "other processes" between or during the steps.

A crash (``faults``): the workers' Redis clients count commands; at a seeded count the
process "dies" (a private exception, before or after the command reached Redis). A restart is a new
process: fresh clients and Deciders (empty caches), each shard resumed from an older read
position or from its watermark, as ``ShardSource.build_part`` resumes. At the end the
shards are drained and the gift settlement forced, as ``run --until-drained`` finishes.
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from dataflows import quarantine
from dataflows.decider import Decided, Decider
from dataflows.source import ShardSource
from onestock.domain import sharding
from onestock.domain.events import WINDOW_MS
from onestock.domain.protocol import SEP
from onestock.domain.types import Order
from onestock.ops import services as ops
from onestock.sim import observe
from onestock.sim.faults import Crash, Faults, faulty_store
from onestock.sim.history import History, pickups, render_catalog
from onestock.sim.model import Observed
from onestock.sim.rekind import aim_channel, channel_aim
from state import gens, keys
from state.store import Store

DRAIN_S = 15.0  # the settle lease of a crashed worker lasts 3 s; the rest is slack


def load_file(store: Store, cat: dict[str, Any]) -> None:
    """`onestock catalog load` semantics: validated, merged over what is loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.json"
        path.write_bytes(orjson.dumps(cat))
        ops.load_catalog(store, path)


def reload(admin: Store, h: History, anchor: int, cats: list[dict[str, Any]]) -> tuple[int, int]:
    """Load the history's reload with the stock levels of this moment; its wall-ms window."""
    assert h.reload is not None
    start = int(time.time() * 1000)
    time.sleep(0.003)
    cat = render_catalog(h.reload, anchor)
    buckets = {s["sku"]: s.get("buckets", 1) for s in cat["skus"]}  # (a split SKU: them all)
    levels = admin.skus.stock_levels(list(buckets), buckets)
    for sku in cat["skus"]:
        sku["stock"] = {**dict.fromkeys(sku["stock"], 0), **levels.get(sku["sku"], {})}
    load_file(admin, cat)
    cats.append(cat)
    time.sleep(0.003)
    return start, int(time.time() * 1000)


def anchor_of(h: History) -> int:
    """paid_at offsets end a few seconds before now (received after paid, inside the window)."""
    times = [t for e in h.events if isinstance(t := (e.body or {}).get("paid_at"), int)]
    return int(time.time() * 1000) - max(times, default=0) - 5000


class Worker:
    """One dataflow process: its own (faulty) Redis client, Decider and source partitions,
    built by the real ``ShardSource.build_part`` (resume: a snapshot, or None)."""

    def __init__(
        self, url: str, faults: Faults, k: int, resume: dict[int, str | None], aim: str = ""
    ) -> None:
        self.store = faulty_store(url, faults)
        moves = self.store.movements  # a crash now and then inside a movement's two steps
        moves.run = faults.aimed(moves.run)  # type: ignore[method-assign]
        self.decider = Decider(self.store, say=_quiet)
        _aim_payments(self.decider, faults, aim)
        _aim_reroute(self.decider, faults, aim)
        self.decider.settler.last = math.inf  # no wall-clock settling: settle() at seeded points
        self.source = ShardSource(lambda: self.store, k, self.decider.written, say=_quiet)
        self.parts = {s: self.source.build_part("read", str(s), r) for s, r in resume.items()}
        for part in self.parts.values():
            part.ticked = math.inf  # no wall-clock ticks either: the driver ticks


# the payment steps a history may aim a crash at (``_aim_payments``)
PAYMENT_AIMS = ("reserve", "expiry", "expired", "paid")
# ... and the re-route steps (``_aim_reroute``)
SHIP_AIMS = ("reroute_take", "reroute")


def _aim_payments(d: Decider, faults: Faults, aim: str) -> None:
    """A crash aimed at one payment step (one per history: each crash costs a restart):
    ``reserve``, the deadlines of new reserved orders recorded (``payments.lua``, before or
    after it reached Redis); ``expiry``, an expiry's give-back (``undo_units.lua``);
    ``expired``, right after that give-back, before the expired records are written;
    ``paid``, right after a payment's acceptance (its first-N candidacy added), before its
    record is written."""
    pay, store = d.lifecycle.payments, d.store.payments
    if aim == "reserve":
        due = store.due
        aimed_due = faults.aimed(due, 0.3, aim)

        def record(shard: int, after: str, new: list[Any], limit: int, gone: Any = None) -> Any:
            return (aimed_due if new else due)(shard, after, new, limit, gone)

        store.due = record  # type: ignore[method-assign]
    elif aim in ("expiry", "expired"):
        pay.aftersale = copy.copy(pay.aftersale)  # (the expiry's own: a cancel's stays)
        after = (lambda _: True) if aim == "expired" else None
        pay.aftersale.undo = faults.aimed(pay.aftersale.undo, 0.5, aim, after)  # type: ignore[method-assign]
    elif aim == "paid":
        pay.paid = faults.aimed(pay.paid, 0.6, aim, after=bool)  # type: ignore[method-assign]


def _aim_reroute(d: Decider, faults: Faults, aim: str) -> None:
    """A crash aimed at a re-route: ``reroute_take``, at its take (``reroute.lua``, before
    or after it reached Redis); ``reroute``, right after the take, before the give-backs
    and the write-off and the new version are written."""
    ship = d.lifecycle.fulfilments
    if aim == "reroute_take":
        ship._place = faults.aimed(ship._place, 0.9, aim)  # type: ignore[method-assign]
    elif aim == "reroute":
        ship._place = faults.aimed(ship._place, 0.9, aim, after=lambda _: True)  # type: ignore[method-assign]


def _aim_pickup(store: Store, faults: Faults, stores: set[str], reload: Callable[[], None]) -> None:
    """A crash aimed (once) right after the first decide.lua call that took units at one of
    ``stores`` for a pickup there, whose pickup the reload ends, with the reload in between:
    the batch's records are not written, and its replay meets a catalog that refuses the
    pickup (it must keep the decision made). The reload empties ``stores``."""
    skus = store.skus
    decide = skus.decide
    at = [f"{SEP}{s}{SEP}".encode() for s in stores]  # (in an outcome's allocations)

    def took(got: list[list[bytes]]) -> bool:  # (then the reload, from another process)
        if not any(r[:1] in b"AGV" and any(a in r for a in at) for res in got for r in res):
            return False
        reload()
        return True

    aimed = faults.aimed(decide, 1.0, "pickup", after=took)

    def call(calls: list[list[Order]], args: Any) -> Any:
        named = any(o.delivery.mode == "pickup" and o.delivery.store in stores
                    for orders in calls for o in orders)  # fmt: skip
        return (aimed if named else decide)(calls, args)

    skus.decide = call  # type: ignore[method-assign]


class _Play:
    """One history played: the admin client (the "other processes": pushes, the reload), the
    worker processes and what the checker is given. Every random choice comes from one
    seeded ``rng``, in a fixed order, so a seed replays the same run."""

    def __init__(self, h: History, url: str) -> None:
        self.h, self.url = h, url
        self.rng = rng = random.Random(h.seed * 7919 + 17)
        self.admin = admin = Store.connect(url)
        admin.r.flushall()
        admin.r.set(keys.LAYOUT, h.layout)
        admin.r.script_flush()  # the same commands every time: NOSCRIPT round trips count too
        self.anchor = anchor_of(h)
        self.lines = h.render_events(self.anchor)
        self.cats = [render_catalog(h.catalog, self.anchor)]
        load_file(admin, self.cats[0])
        self.base = {s["sku"]: dict(s["stock"]) for s in self.cats[0]["skus"]}
        k = self.k = h.shards
        self.w = h.workers
        ops.fix_shards(admin, k)
        self.camp = (self.cats[0].get("campaigns") or [None])[0]
        self.faults = Faults(rng, rng.choice([0, 1, 1, 2, 3]))
        self.style = rng.choice(["lockstep", "random", "favour"]) if h.features.skew else "lockstep"
        self.favour = rng.randrange(k)
        aims = (PAYMENT_AIMS if h.features.payments else ()) + (
            SHIP_AIMS if h.features.fulfilment else ()
        )
        self.aim = rng.choice(aims) if aims else ""
        self.seen: list[list[str]] = [[] for _ in range(k)]  # snapshots a resume could start from
        self.procs: list[Worker] = []  # (one list, cleared and refilled by every restart)
        self.problems: list[tuple[str, str]] = []
        self.window: list[tuple[int, int]] = []
        self.before: set[str | None] = set()  # order ids in batches begun before the reload ended
        self.after: set[str | None] = set()  # ... and not before, in batches begun after it
        self.order: dict[tuple[int, str], int] = {}  # (shard, entry id) -> push index
        self.tops = ["0-0"] * k
        self.entry_ms = [0] * len(self.lines)  # per line: its entry id's ms (``push``)
        self.drained: tuple[int, int] | None = None  # (``drain``)
        # another process folds the records now and then (state/ledger.py; its own draws, so
        # the histories' other draws and crash points stay as they were)
        self.fold_rng = random.Random(h.seed * 31 + 5)
        # now and then the driver asks a shard for two batches before it emits the first:
        # the source must hand out nothing until the first is written (a source of its own)
        self.lag_rng = random.Random(h.seed * 31 + 11)
        if h.features.lost_replies:
            self.faults.lose_replies(random.Random(h.seed * 31 + 13))
        # now and then a whole batch raises after deciding (its halves do not): the flow's
        # quarantine splits it and decides the halves again (its own draws)
        self.split_rng = random.Random(h.seed * 31 + 17) if h.features.split_batches else None
        self.splits = 0
        # push indices of orders whose first event makes deciding raise, every time (its own
        # draws): each ends a dead letter, and its later copy must find its decision
        self.poisoned = _poisoned(self.lines, random.Random(h.seed * 31 + 19), self.camp) if (
            h.features.poison) else []  # fmt: skip
        # in half the histories whose reload ends pickup at a store (feature reload_ends_pickup;
        # its own draw), the reload waits for a decide.lua call that took units for a pickup
        # there, and the process dies before the batch's records (``_aim_pickup``)
        ended = pickups(self.cats[0]) - pickups(h.reload or self.cats[0])
        self.ended = ended if random.Random(h.seed * 31 + 23).random() < 0.5 else set()
        # ... and likewise where it removes or re-kinds a channel (reload_changes_channel):
        # a crash after a call that took units for an order of it (``rekind.aim_channel``)
        self.rekind = None if self.ended else channel_aim(h)

    def start(self) -> None:
        """(Re)start every worker process: a crash takes the whole cluster down."""
        procs, rng, seen, k, w = self.procs, self.rng, self.seen, self.k, self.w
        for p in procs:
            p.store.r.close()
        procs.clear()
        while len(procs) < w:
            resume: dict[int, str | None] = {}
            for s in range(len(procs), k, w):  # none, an older snapshot, or the latest
                r = rng.random()
                resume[s] = None if r < 0.3 or not seen[s] else (
                    rng.choice(seen[s]) if r < 0.7 else seen[s][-1])  # fmt: skip
            try:
                procs.append(Worker(self.url, self.faults, k, resume, self.aim))
            except (Crash, redis.ConnectionError):
                procs.clear()
        for p in procs if self.ended else ():
            _aim_pickup(p.store, self.faults, self.ended, self.fire_reload)
        if self.rekind is not None and self.rekind.live:
            for p in procs:
                aim_channel(p.store, self.faults, self.rekind, self.fire_reload)
        self.faults.arm()

    def push(self, i: int, j: int) -> None:
        """`orders push` of lines i..j, and where each landed."""
        admin, lines, k, tops = self.admin, self.lines, self.k, self.tops
        ops.push(admin, lines[i:j], k)
        by_shard: list[list[int]] = [[] for _ in range(k)]
        for n in range(i, j):
            by_shard[sharding.shard_of(lines[n], k)].append(n)
        for x in range(k):
            rows = admin.shards.read(x, tops[x], len(by_shard[x])) if by_shard[x] else []
            self.order.update(((x, eid), n) for (eid, _), n in zip(rows, by_shard[x], strict=True))
            for (eid, _), n in zip(rows, by_shard[x], strict=True):
                self.entry_ms[n] = int(eid.partition("-")[0])
            tops[x] = rows[-1][0] if rows else tops[x]

    def fire_reload(self) -> None:
        if not self.window:  # (once: ``_aim_pickup`` may have fired it before the hook)
            self.ended.clear()  # (no crash aimed after it)
            if self.rekind:
                self.rekind.live = False
            self.window.append(reload(self.admin, self.h, self.anchor, self.cats))

    def step(self) -> bool:
        """One worker step: read a batch of some shards, decide, then write them; False
        when no shard has anything to read."""
        k, w, rng = self.k, self.w, self.rng
        at = {s: self.procs[s % w].parts[s].snapshot() for s in range(k)}
        heads = {s: rows[0][0] for s in range(k) if (rows := self.admin.shards.read(s, at[s], 1))}
        if not heads:
            return False
        if self.style == "lockstep":
            s = min(heads, key=lambda x: self.order[(x, heads[x])])
        else:
            favour = self.favour
            s = favour if self.style == "favour" and favour in heads else rng.choice(list(heads))
        p = self.procs[s % w]
        out = self._decide(p, s, heads)
        for x in p.parts:  # a caught-up shard's tick, as the source sends every 0.1 s
            if x not in heads and rng.random() < 0.5:
                out.append(p.decider.process(x, []))
        for item in out:
            p.decider.emit(item)
        if rng.random() < 0.15:
            settle(p.decider)
        if self.fold_rng.random() < 0.2:
            self.admin.ledger.fold(self.fold_rng.randrange(k), self.fold_rng.randint(1, 3))
        return True

    def _decide(self, p: Worker, s: int, heads: dict[int, str]) -> list[Decided]:
        """Worker ``p`` reads and decides a batch of shard ``s`` and maybe of its other
        shards with something to read."""
        w, rng = self.w, self.rng
        out: list[Decided] = []
        judged_after = bool(self.window)  # batches begun after the reload: judged by its rules
        for x in [s] + [x for x in heads if x != s and x % w == s % w and rng.random() < 0.3]:
            p.source.batch_size = rng.randint(1, 6)
            reads = 2 if self.lag_rng.random() < 0.3 else 1  # (the second: nothing, by design)
            for shard, rows in [b for _ in range(reads) for b in p.parts[x].next_batch()]:
                ids = {_order_id(raw) for _, raw in rows}  # (before deciding: it may crash)
                if judged_after:
                    self.after.update(ids - self.before)
                else:
                    self.before.update(ids)
                split = self.split_rng is not None and self.split_rng.random() < 0.15
                self.splits += split and len(rows) > 1
                order, poisoned = self.order, self.poisoned
                bad = {eid for eid, _ in rows if order.get((shard, eid), -1) in poisoned}
                out.append(_decide_batch(p.decider, shard, rows, split, bad))
            self.seen[x].append(p.parts[x].snapshot())
        return out

    def chunks(self) -> list[tuple[int, int]]:
        """The pushes: lines i..j each, of seeded sizes."""
        chunks = []
        i = 0
        # skew: pushes run ahead
        most = 60 if self.style != "lockstep" and self.rng.random() < 0.6 else 12
        while i < len(self.lines):
            j = min(len(self.lines), i + self.rng.randint(1, most))
            chunks.append((i, j))
            i = j
        return chunks

    def play(self, chunks: list[tuple[int, int]]) -> None:
        """Pushes and worker steps interleaved at random, each crash a restart, until
        everything is pushed and no shard has anything to read; the reload, once, while
        some of the pushes are done (or where ``_aim_pickup`` aims it; at the end if not)."""
        h, faults = self.h, self.faults
        while True:
            try:
                if chunks and (self.rng.random() < 0.4 or not self.step()):
                    i, j = chunks.pop(0)
                    self.push(i, j)
                    due = h.reload is not None and not self.window and j > h.reload_at
                    if due and not self.ended and not (self.rekind and self.rekind.live):
                        faults.set_hook(self.fire_reload, 5)
                elif not chunks and not self.step():
                    break
            except (Crash, redis.ConnectionError):  # (a Redis error the step does not retry:
                self.start()  # the worker process stops, as a crash; restarted)
        if h.reload is not None and not self.window:
            faults.hook = None
            self.fire_reload()

    def observed(self) -> tuple[Observed, dict[str, int]]:
        """What the run produced, read back as users read it."""
        admin, k, camp, problems = self.admin, self.k, self.camp, self.problems

        try:
            pub = observe.public(admin, k, camp["id"] if camp else None, self.cats[-1])
            vers = observe.versions(admin, k)
            ranks = observe.ranks(admin, camp["sku"] if camp else None)
            rank_paid = observe.ranked_at(admin, camp["sku"] if camp else None)
            problems += observe.audit(admin, k, self.base)
            cap = observe.capacity(admin, self.cats[-1])
        except Exception as exc:
            problems.append(("read.exception", _where(exc)))
            pub = {"fulfilments": [], "deadletters": [], "returns": [], "stock": {}, "gifts": None,
                   "alerts": [], "movements": [], "availability": {}}  # fmt: skip
            vers, ranks, rank_paid, cap = [], [], {}, {}
        for p in self.procs:
            p.store.r.close()
        window, faults = self.window, self.faults
        ob = Observed(lines=self.lines, shards=k, catalogs=self.cats, base=self.base,
                      reload_window=window[0] if window else None, versions=vers, ranks=ranks,
                      after_reload={a for a in self.after if a}, first_crash_ms=faults.first_ms,
                      problems=problems, entry_ms=self.entry_ms, rank_paid=rank_paid,
                      drained=self.drained, capacity=cap, poisoned=self.poisoned,
                      kept=self.rekind.kept if self.rekind else set(),
                      **pub)  # fmt: skip
        n = faults.crashes + faults.lost + self.splits + len(window) + len(self.poisoned)
        return ob, {"events": len(self.lines), "faults": n}


def run_fast(h: History, url: str) -> tuple[Observed, dict[str, int]]:
    saved = gens.OFFSET_MS
    try:
        play = _Play(h, url)
        chunks = play.chunks()
        play.start()
        if h.features.generations:  # (every Decider of the history is in this process)
            gens.OFFSET_MS = boundary_offset(h)
        try:
            play.play(chunks)
            play.drained = drain(play.procs, play.step, play.start, play.problems)
        except Exception as exc:  # a product failure: a real worker would die here too
            play.problems.append(("run.exception", _where(exc)))
        return play.observed()
    finally:
        gens.OFFSET_MS = saved


def boundary_offset(h: History, within_ms: tuple[int, int] = (5, 250)) -> int:
    """A ``gens.OFFSET_MS`` that ends a generation a seeded while from now (the history plays
    across it: its scripts move from one generation's keys to the next's)."""
    at = int(time.time() * 1000) + random.Random(h.seed * 7919 + 11).randint(*within_ms)
    return (-at) % WINDOW_MS


def drain(
    procs: list[Worker],
    step: Callable[[], bool],
    start: Callable[[], None],
    problems: list[tuple[str, str]],
) -> tuple[int, int] | None:
    """Read everything, tick every shard and force the gift settlement until every source
    partition ends as ``run --until-drained`` ends it (``Store.drained``); a hang is a
    violation. Returns wall ms before the last pass and after it: every payment deadline
    before the first had been applied (the pass found none due), none after the second."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        try:
            if step():
                continue
            before = int(time.time() * 1000)
            if _drained(procs):
                return before, int(time.time() * 1000)
        except (Crash, redis.ConnectionError):
            start()
            continue
        if time.monotonic() > deadline:
            inbox = keys.inbox
            stuck = [
                (s, p.store.shards.watermark(s), p.parts[s].snapshot(), p.store.r.xlen(inbox(s)))
                for p in procs
                for s in p.parts
            ]
            problems.append(("drain.hang", f"not drained after {DRAIN_S:.0f} s: (shard, "
                             f"watermark, read to, backlog) {stuck}"))  # fmt: skip
            return None
        time.sleep(0.05)


def _drained(procs: list[Worker]) -> bool:
    """One pass of every worker over its partitions until drained, then a forced gift
    settlement: True when every partition had ended."""
    done = True
    for p in procs:
        p.source.until_drained = True
        for s, part in p.parts.items():
            try:
                for shard, rows in part.next_batch() or [(s, [])]:
                    p.decider.emit(p.decider.process(shard, rows))
                done = False
            except StopIteration:
                pass
    for p in procs:  # (a worker whose shards are all drained has to load it)
        if p.decider.version < 0:
            p.decider.refresh()
        settle(p.decider, force=True)
    return done


def settle(d: Decider, force: bool = False) -> None:
    """A settlement round, as the emit step runs one every 0.1 s (here at seeded points)."""
    d.settler.run(force)
    d.settler.last = math.inf


def _order_id(raw: bytes) -> str | None:
    try:
        oid = orjson.loads(raw).get("order_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return oid if isinstance(oid, str) else None


class _Split(Exception):
    """A whole batch made to raise after deciding (feature ``split_batches``), or every
    batch that decides a poisoned event (feature ``poison``)."""


def _poisoned(lines: list[bytes], rng: random.Random, camp: dict[str, Any] | None) -> list[int]:
    """Now and then (at most two per history) an order's first event whose order id no other
    event names but its exact copies, one of them later: no payment, cancel, return or
    fulfilment of it meets it while it has no record. Not one of the campaign's SKU (a
    candidate's held record is settled apart)."""
    out: list[int] = []
    gift_sku = camp["sku"] if camp else None
    for i, raw in enumerate(lines):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if (not isinstance(body, dict) or "type" in body or "payment" in body
                or not isinstance(body.get("order_id"), str)
                or not isinstance(body.get("lines"), list)):  # fmt: skip
            continue
        if any(isinstance(ln, dict) and ln.get("sku") == gift_sku for ln in body["lines"]):
            continue
        name = orjson.dumps(body["order_id"])
        named = [j for j, other in enumerate(lines) if name in other]
        if named[0] != i or len(named) < 2 or any(lines[j] != raw for j in named):
            continue
        if rng.random() < 0.6:
            out.append(i)
            if len(out) == 2:
                break
    return out


def _decide_batch(
    d: Decider, shard: int, rows: list[tuple[str, bytes]], split: bool, bad: set[str]
) -> Decided:
    """The flow's step (``quarantine.process``); with ``split`` the batch (two or more events)
    raises once, when its orders are decided (at its first ``_aftersale``, before its cancels
    and returns), as a bug its halves do not meet would: the quarantine decides the halves.
    A batch that decides an event of ``bad`` (entry ids) raises so every time: the quarantine
    makes that event a dead letter."""
    if (not split or len(rows) < 2) and not bad:
        return quarantine.process(d, shard, rows, _quiet)
    real, armed = d._aftersale, [True] if split and len(rows) > 1 else []

    def raising(sh: int, batch: Any, *args: Any) -> Any:
        if armed:
            armed.clear()
            raise _Split("a whole batch made to raise after deciding")
        if bad and any(eid in bad for eid, _ in batch.firsts.values()):
            raise _Split("a poisoned event made to raise after deciding")
        return real(sh, batch, *args)

    d._aftersale = raising  # type: ignore[method-assign,assignment]
    try:
        return quarantine.process(d, shard, rows, _quiet)
    finally:
        d._aftersale = real  # type: ignore[method-assign]


def _quiet(_msg: str) -> None:
    pass


def _where(exc: BaseException) -> str:
    """The exception, where it was raised and the project's innermost frame on the way
    (a library's frame alone, e.g. redis-py's connection.py, does not say which call)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename]
    places = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in [*ours[-1:], *frames[-1:]]]
    at = "".join(f" at {x}" for x in dict.fromkeys(places))
    return f"{type(exc).__name__}: {exc}"[:300] + at
