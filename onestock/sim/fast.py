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

import math
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from dataflows.decider import Decided, Decider
from dataflows.source import ShardSource
from onestock.domain import sharding
from onestock.ops import services as ops
from onestock.sim import observe
from onestock.sim.faults import Crash, Faults, faulty_store
from onestock.sim.history import History, render_catalog
from onestock.sim.model import Observed
from state import keys
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
    levels = admin.stock_levels([s["sku"] for s in cat["skus"]])
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

    def __init__(self, url: str, faults: Faults, k: int, resume: dict[int, str | None]) -> None:
        self.store = faulty_store(url, faults)
        self.decider = Decider(self.store, say=_quiet)
        self.decider.settler.last = math.inf  # no wall-clock settling: settle() at seeded points
        self.source = ShardSource(lambda: self.store, k, say=_quiet)
        self.parts = {s: self.source.build_part("read", str(s), r) for s, r in resume.items()}
        for part in self.parts.values():
            part.ticked = math.inf  # no wall-clock ticks either: the driver ticks


def run_fast(h: History, url: str) -> tuple[Observed, dict[str, int]]:
    rng = random.Random(h.seed * 7919 + 17)
    admin = Store.connect(url)
    admin.r.flushall()
    admin.r.script_flush()  # the same commands every time: NOSCRIPT round trips count too
    anchor = anchor_of(h)
    lines = h.render_events(anchor)
    cats = [render_catalog(h.catalog, anchor)]
    load_file(admin, cats[0])
    base = {s["sku"]: dict(s["stock"]) for s in cats[0]["skus"]}
    k, w = h.shards, h.workers
    ops.fix_shards(admin, k)
    camp = (cats[0].get("campaigns") or [None])[0]
    faults = Faults(rng, rng.choice([0, 1, 1, 2, 3]))
    style = rng.choice(["lockstep", "random", "favour"]) if h.features.skew else "lockstep"
    favour = rng.randrange(k)
    seen: list[list[str]] = [[] for _ in range(k)]  # snapshots a resume could start from
    procs: list[Worker] = []
    problems: list[tuple[str, str]] = []
    window: list[tuple[int, int]] = []
    before: set[str | None] = set()  # order ids in batches begun before the reload ended
    after: set[str | None] = set()  # ... and not before, in batches begun after it

    def start() -> None:
        """(Re)start every worker process: a crash takes the whole cluster down."""
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
                procs.append(Worker(url, faults, k, resume))
            except Crash:
                procs.clear()
        faults.arm()

    order: dict[str, int] = {}  # entry id -> push index (ids of two shards do not compare)
    tops = ["0-0"] * k

    def push(i: int, j: int) -> None:
        """`orders push` of lines i..j, and where each landed."""
        ops.push(admin, lines[i:j], k)
        by_shard: list[list[int]] = [[] for _ in range(k)]
        for n in range(i, j):
            by_shard[sharding.shard_of(lines[n], k)].append(n)
        for x in range(k):
            rows = admin.read(x, tops[x], len(by_shard[x])) if by_shard[x] else []
            order.update(zip((eid for eid, _ in rows), by_shard[x], strict=True))
            tops[x] = rows[-1][0] if rows else tops[x]

    def fire_reload() -> None:
        window.append(reload(admin, h, anchor, cats))

    def step() -> bool:
        """One worker step: read a batch of some shards, decide, then write them; False
        when no shard has anything to read."""
        at = {s: procs[s % w].parts[s].snapshot() for s in range(k)}
        heads = {s: rows[0][0] for s in range(k) if (rows := admin.read(s, at[s], 1))}
        if not heads:
            return False
        if style == "lockstep":
            s = min(heads, key=lambda x: order[heads[x]])
        else:
            s = favour if style == "favour" and favour in heads else rng.choice(list(heads))
        p = procs[s % w]
        out: list[Decided] = []
        judged_after = bool(window)  # batches begun after the reload: judged by its rules
        for x in [s] + [x for x in heads if x != s and x % w == s % w and rng.random() < 0.3]:
            p.source.batch_size = rng.randint(1, 6)
            for shard, rows in p.parts[x].next_batch():
                ids = {_order_id(raw) for _, raw in rows}  # (before deciding: it may crash)
                if judged_after:
                    after.update(ids - before)
                else:
                    before.update(ids)
                out.append(p.decider.process(shard, rows))
            seen[x].append(p.parts[x].snapshot())
        for x in p.parts:  # a caught-up shard's tick, as the source sends every 0.1 s
            if x not in heads and rng.random() < 0.5:
                out.append(p.decider.process(x, []))
        for item in out:
            p.decider.emit(item)
        if rng.random() < 0.15:
            settle(p.decider)
        return True

    chunks = []
    i = 0
    most = 60 if style != "lockstep" and rng.random() < 0.6 else 12  # skew: pushes run ahead
    while i < len(lines):
        j = min(len(lines), i + rng.randint(1, most))
        chunks.append((i, j))
        i = j
    start()
    try:
        while True:
            try:
                if chunks and (rng.random() < 0.4 or not step()):
                    i, j = chunks.pop(0)
                    push(i, j)
                    if h.reload is not None and not window and j > h.reload_at:
                        faults.set_hook(fire_reload, 5)
                elif not chunks and not step():
                    break
            except Crash:
                start()
        if faults.hook is not None:
            faults.hook = None
            fire_reload()
        drain(procs, step, start, problems)
    except Exception as exc:  # a product failure: a real worker would die here too
        problems.append(("run.exception", _where(exc)))
    try:
        pub = observe.public(admin, k, camp["id"] if camp else None)
        vers = observe.versions(admin, k)
        ranks = observe.ranks(admin, camp["sku"] if camp else None)
    except Exception as exc:
        problems.append(("read.exception", _where(exc)))
        pub = {"fulfilments": [], "deadletters": [], "returns": [], "stock": {}, "gifts": None,
               "alerts": []}  # fmt: skip
        vers, ranks = [], []
    for p in procs:
        p.store.r.close()
    ob = Observed(lines=lines, shards=k, catalogs=cats, base=base,
                  reload_window=window[0] if window else None, versions=vers, ranks=ranks,
                  after_reload={a for a in after if a}, first_crash_ms=faults.first_ms,
                  problems=problems, **pub)  # fmt: skip
    return ob, {"events": len(lines), "faults": faults.crashes + len(window)}


def drain(
    procs: list[Worker],
    step: Callable[[], bool],
    start: Callable[[], None],
    problems: list[tuple[str, str]],
) -> None:
    """Read everything, tick every shard and force the gift settlement until every source
    partition ends as ``run --until-drained`` ends it (``Store.drained``); a hang is a
    violation."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        try:
            if step():
                continue
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
            if done:
                return
        except Crash:
            start()
            continue
        if time.monotonic() > deadline:
            stuck = [(s, p.store.watermark(s), p.parts[s].snapshot(), p.store.r.xlen(keys.inbox(s)))
                     for p in procs for s in p.parts]  # fmt: skip
            problems.append(("drain.hang", f"not drained after {DRAIN_S:.0f} s: (shard, "
                             f"watermark, read to, backlog) {stuck}"))  # fmt: skip
            return
        time.sleep(0.05)


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


def _quiet(_msg: str) -> None:
    pass


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}"[:300] + at
