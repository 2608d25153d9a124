"""``onestock bench``: drain N pre-pushed orders through the dataflow and through a bare loop.

Both contenders run in the same invocation, on the same orders, against the same fresh Redis:

- **bare loop**: W plain Python processes (W = the dataflow's workers), each looping over
  its shards with redis-py: XRANGE a batch, ``Decider.process`` (decode, rank, one Lua call
  per slot), ``emit.lua``. The same Redis work with no framework: the practical ceiling.
- **dataflow**: ``onestock run --until-drained --workers W``, the real Bytewax pipeline with
  recovery on.
- **dataflow with rules** (unless ``--no-rules``): the same dataflow on the same orders with
  every allocation rule on every SKU (``burst.rules_catalog``): channel locks, per-customer
  limits, a VIP pre-sale, low-stock alerts, beside the demo's safety stock.
- **dataflow with a first-N campaign** (unless ``--no-gifts``): a gift for the first 10,000
  buyers of the hot SKU (``burst.campaign_catalog``, lateness 2 s): what settlement costs in
  drain rate and in fulfilment latency (record written - event received).

The ratios dataflow / bare and rules / core are what to watch on a shared, noisy machine;
``--repeat N`` alternates the bare loop, the dataflow and (unless ``--no-rules``) the dataflow
with every rule on N times and reports their medians (the rules / core ratio is the median of
each rules run against the core run just before it).
Every run must end each event exactly once (records + dead letters = events) or the bench
fails.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from redis.cluster import RedisCluster
from rich.console import Console
from rich.table import Table

from onestock import burst, harness
from onestock.domain.records import packed_records
from onestock.domain.settings import DEFAULT_SHARDS, Settings
from onestock.domain.types import Catalog
from state import keys
from state.store import Store

SLOW_US = 5000  # script calls slower than this are counted (target: well under 10 ms)


class Run(msgspec.Struct):
    """One alternation: the bare loop, then the dataflow (then with every rule on), same
    orders."""

    bare_orders_per_s: float
    dataflow_orders_per_s: float  # process start to exit
    dataflow_drain_orders_per_s: float  # first to last decision
    ratio: float  # dataflow / bare, wall
    # the dataflow with every rule on, right after (unless --no-rules), and / the core drain
    rules_drain_orders_per_s: float | None = None
    rules_ratio: float | None = None


class Figures(msgspec.Struct):
    """The medians of ``runs`` for the core pair; the rest measured once (script figures over
    every core run)."""

    orders: int
    workers: int
    bare_orders_per_s: float
    dataflow_orders_per_s: float
    dataflow_drain_orders_per_s: float
    ratio: float
    rules_drain_orders_per_s: float | None
    rules_ratio: float | None  # median of each run's rules drain / its core drain
    gifts_drain_orders_per_s: float | None
    gifts_ratio: float | None  # drain with a first-N campaign / drain of the core catalog
    core_fulfilment_ms: tuple[int, int]  # p50, p99 of record written - received, hot SKU
    gifts_fulfilment_ms: tuple[int, int] | None  # the same with the campaign on
    memory_growth_mb: float
    script_calls: int
    script_avg_us: float
    script_calls_over_5ms: int
    script_slowest_ms: float
    runs: list[Run] = []


def _bare_worker(url: str, mine: list[int], batch: int) -> None:
    from dataflows.decider import Decider

    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    last = {s: "0-0" for s in mine}
    while True:
        got = 0
        for s in mine:
            rows = store.read(s, last[s], batch)
            if rows:
                last[s] = rows[-1][0]
                got += len(rows)
                d.emit(d.process(s, rows))
        if not got:
            return


def bare_loop(url: str, workers: int, batch: int) -> float:
    """Seconds for W plain processes to drain every shard."""
    ctx = mp.get_context("spawn")
    shards = list(range(DEFAULT_SHARDS))
    procs = [
        ctx.Process(target=_bare_worker, args=(url, shards[i::workers], batch))
        for i in range(workers)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - t0


def _script_stats(store: Store) -> tuple[int, float, int, float]:
    stats = store.r.info("commandstats").get("cmdstat_evalsha", {})
    slow = [e for e in store.r.slowlog_get(10_000) if e["command"].startswith(b"EVALSHA")]
    slowest = max((e["duration"] for e in slow), default=0) / 1000
    return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0)), len(slow), slowest


def _check_outcomes(store: Store, n: int, what: str) -> None:
    """Every event of the burst ended exactly once, as a record or a dead letter (the burst
    has some garbage on purpose): a run that lost or doubled events measured nothing."""
    records, dead = store.outcome_counts(DEFAULT_SHARDS)
    if records + dead != n:
        raise RuntimeError(f"{what}: {records:,} records + {dead:,} dead letters for {n:,} events")


def run_bench(
    n: int,
    workers: int,
    out: Path | None,
    rules: bool = True,
    gifts: bool = True,
    repeat: int = 1,
) -> Figures:
    """``repeat`` alternations of the bare loop and the dataflow (their medians are the
    figures: on a shared machine a single pair can land in a slow minute), then the rules and
    the campaign once each."""
    console = Console()
    console.print(f"generating {n:,} orders ...")
    lines = list(burst.orders(n, burst.demo_catalog(), seed=2026))
    with harness.scratch_redis("onestock-bench-") as (server, home):
        store = Store.connect(server.url)

        def prepare(catalog: Catalog | None = None) -> int:
            harness.reset(store, catalog=catalog)
            store.r.config_set("slowlog-log-slower-than", SLOW_US)
            store.r.slowlog_reset()
            before = store.memory_used()
            harness.push(store, lines)
            store.r.config_resetstat()
            return before

        runs: list[Run] = []
        calls = slow = 0
        usec = slowest = growth = 0.0
        core_latency = (0, 0)
        for i in range(repeat):
            label = f" (run {i + 1} of {repeat})" if repeat > 1 else ""
            console.print(f"bare loop{label} ...")
            prepare()
            bare_s = bare_loop(server.url, workers, Settings.from_env().batch_size)
            _check_outcomes(store, n, "bare loop")
            console.print(f"dataflow{label} ...")
            before = prepare()
            flow_s, drain_s = _drain(store, server.url, home, workers)
            _check_outcomes(store, n, "dataflow")
            c, avg_us, sl, slowest_ms = _script_stats(store)
            calls, usec, slow = calls + c, usec + c * avg_us, slow + sl
            slowest = max(slowest, slowest_ms)
            growth = max(growth, (store.memory_used() - before) / 2**20)
            run = Run(n / bare_s, n / flow_s, n / max(drain_s, 1e-3), bare_s / flow_s)
            if i == repeat - 1:  # (the rules run below replaces these records)
                core_latency = _fulfilment_latency(store)
            if rules:  # beside each core run: the ratio of neighbours in time
                console.print(f"dataflow with every rule on{label} ...")
                prepare(burst.rules_catalog())
                _, rules_drain_s = _drain(store, server.url, home, workers)
                _check_outcomes(store, n, "dataflow with every rule on")
                run.rules_drain_orders_per_s = n / max(rules_drain_s, 1e-3)
                run.rules_ratio = run.rules_drain_orders_per_s / run.dataflow_drain_orders_per_s
            runs.append(run)
        avg_us = usec / calls if calls else 0.0
        gifts_drain_s = None
        gifts_latency = None
        if gifts:
            console.print("dataflow with a first-10,000 gift campaign ...")
            prepare(burst.campaign_catalog(first_n=10_000))
            _, gifts_drain_s = _drain(store, server.url, home, workers)
            _check_outcomes(store, n, "dataflow with a campaign")
            gifts_latency = _fulfilment_latency(store)
    drain = statistics.median(r.dataflow_drain_orders_per_s for r in runs)
    rules_rates = [r.rules_drain_orders_per_s for r in runs if r.rules_drain_orders_per_s]
    rules_ratios = [r.rules_ratio for r in runs if r.rules_ratio is not None]
    rules_drain = statistics.median(rules_rates) if rules_rates else None
    gifts_drain = n / max(gifts_drain_s, 1e-3) if gifts_drain_s is not None else None
    figs = Figures(
        orders=n, workers=workers,
        bare_orders_per_s=statistics.median(r.bare_orders_per_s for r in runs),
        dataflow_orders_per_s=statistics.median(r.dataflow_orders_per_s for r in runs),
        dataflow_drain_orders_per_s=drain,
        ratio=statistics.median(r.ratio for r in runs),
        rules_drain_orders_per_s=rules_drain,
        rules_ratio=statistics.median(rules_ratios) if rules_ratios else None,
        gifts_drain_orders_per_s=gifts_drain,
        gifts_ratio=gifts_drain / drain if gifts_drain is not None else None,
        core_fulfilment_ms=core_latency, gifts_fulfilment_ms=gifts_latency,
        memory_growth_mb=growth, script_calls=calls, script_avg_us=avg_us,
        script_calls_over_5ms=slow, script_slowest_ms=slowest, runs=runs,
    )  # fmt: skip
    median = " (median)" if repeat > 1 else ""
    table = Table(title=f"onestock bench: {n:,} orders, {workers} workers")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if repeat > 1:
        for i, r in enumerate(runs, 1):
            rates = f"{r.bare_orders_per_s:,.0f} / {r.dataflow_drain_orders_per_s:,.0f}"
            table.add_row(
                f"run {i}: bare / dataflow drained, orders/s (ratio, wall)",
                f"{rates} ({r.ratio:.2f})",
            )
            if r.rules_drain_orders_per_s is not None:
                table.add_row(
                    f"run {i}: every rule on, drained, orders/s (ratio to run {i}'s core)",
                    f"{r.rules_drain_orders_per_s:,.0f} ({r.rules_ratio:.2f})",
                )
    table.add_row(f"bare loop (ceiling), orders/s{median}", f"{figs.bare_orders_per_s:,.0f}")
    table.add_row(
        f"dataflow, orders/s (process start to exit){median}", f"{figs.dataflow_orders_per_s:,.0f}"
    )
    table.add_row(
        f"dataflow, orders/s (first to last decision){median}",
        f"{figs.dataflow_drain_orders_per_s:,.0f}",
    )
    table.add_row(f"ratio dataflow / bare (wall){median}", f"{figs.ratio:.2f}")
    if figs.rules_drain_orders_per_s is not None:
        table.add_row(
            f"dataflow with every rule on, orders/s (first to last decision){median}",
            f"{figs.rules_drain_orders_per_s:,.0f}",
        )
        table.add_row(f"ratio rules / core (drain){median}", f"{figs.rules_ratio:.2f}")
    if figs.gifts_drain_orders_per_s is not None and figs.gifts_fulfilment_ms is not None:
        table.add_row(
            "dataflow with a first-N campaign, orders/s (first to last decision)",
            f"{figs.gifts_drain_orders_per_s:,.0f}",
        )
        table.add_row("ratio gifts / core (drain)", f"{figs.gifts_ratio:.2f}")
        core, camp = figs.core_fulfilment_ms, figs.gifts_fulfilment_ms
        table.add_row(
            "hot-SKU fulfilment record p50 / p99 after receipt, ms: core / campaign",
            f"{core[0]:,} / {core[1]:,}  vs  {camp[0]:,} / {camp[1]:,}",
        )
    table.add_row("Redis memory growth, MB", f"{figs.memory_growth_mb:,.1f}")
    table.add_row("Lua calls, mean us", f"{calls:,} x {avg_us:,.0f}")
    table.add_row(f"Lua calls over {SLOW_US // 1000} ms (slowest ms)", f"{slow} ({slowest:.1f})")
    console.print(table)
    if out is not None:
        out.write_bytes(msgspec.json.format(msgspec.json.encode(figs)))
    return figs


def _fulfilment_latency(store: Store, sku: str = "SNEAKER-42") -> tuple[int, int]:
    """p50 and p99 of (record written - event received), ms, for accepted orders of ``sku``
    (a backlog drain: it includes the wait behind the burst, the same in every run)."""
    lat: list[int] = []
    needle = f"\x1f{sku}\x1f"
    for eid, fields in _entries_with_ids(store):
        written = int(eid.split("-")[0])
        for p in packed_records(fields):
            f = p.split("\x1f", 8)
            if f[8].startswith("A") and needle in "\x1f" + f[8] + "\x1f":
                lat.append(written - int(f[4]))
    lat.sort()
    if not lat:
        return (0, 0)
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def _entries_with_ids(store: Store) -> list[tuple[str, dict[bytes, bytes]]]:
    out = []
    for s in range(DEFAULT_SHARDS):
        after = "0-0"
        while True:
            rows: Any = store.r.xrange(keys.outbox(s), min=f"({after}", max="+", count=5000)
            if not rows:
                break
            out += [(eid.decode(), fields) for eid, fields in rows]
            after = rows[-1][0].decode()
    return out


def _drain(store: Store, url: str, home: Path, workers: int) -> tuple[float, float]:
    """Run the dataflow until drained (a flushed Redis is a new instance: no recovery state
    of an earlier run applies): (seconds start to exit, seconds first to last decision)."""
    t0 = time.perf_counter()
    proc = harness.start_dataflow(url, home, workers, until_drained=True)
    if proc.wait() != 0:
        raise RuntimeError(f"the dataflow exited with status {proc.returncode}")
    flow_s = time.perf_counter() - t0
    decided = [
        int(p.split("\x1f")[5])
        for f in store.entries(keys.outbox, DEFAULT_SHARDS)
        for p in packed_records(f)
    ]
    return flow_s, (max(decided) - min(decided)) / 1000 if decided else flow_s


def _nodes(store: Store) -> list[Any]:
    """A client per master: the server itself, or each primary of a cluster."""
    if isinstance(store.r, RedisCluster):
        return [n.redis_connection for n in store.r.get_primaries()]
    return [store.r]


def _busiest_share(store: Store) -> float:
    """The busiest master's share of all Lua script time since the counters were reset (how
    far one master's core caps the whole: 1/M when the work spreads evenly over M)."""
    usec = [
        float(n.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
        for n in _nodes(store)
    ]
    return max(usec) / sum(usec) if sum(usec) else 1.0


class ScalePoint(msgspec.Struct):
    masters: int  # 1: one Redis server; more: a local Redis Cluster of that many masters
    workers: int  # dataflow worker processes
    orders_per_s: float  # drained, first to last decision
    per_worker: float  # orders/s per worker process
    efficiency: float  # per-worker rate / the 1-worker rate on the same Redis
    buckets: int = 1  # hot-SKU buckets of the hot SKU
    busiest_master: float = 1.0  # share of all script time spent on the busiest master


def run_scale(
    n: int, workers: list[int], masters: list[int], out: Path | None, buckets: Sequence[int] = (1,)
) -> list[ScalePoint]:
    """``onestock bench-scale``: the same N orders drained with each number of dataflow
    processes against each Redis (one server, or a local cluster of M masters), and with the
    hot SKU in each number of hot-SKU buckets, in one invocation. On a 2-core machine
    everything past two busy processes shares the cores: the table shows where this machine
    stops scaling, not where the design does."""
    from state.server import LocalCluster

    console = Console()
    console.print(f"generating {n:,} orders ...")
    lines = list(burst.orders(n, burst.demo_catalog(), seed=2026))
    points: list[ScalePoint] = []
    for m in masters:
        with harness.scratch_redis("onestock-scale-") as (server, home):
            cluster = LocalCluster(home / "cluster", m).start() if m > 1 else None
            url = cluster.url if cluster is not None else server.url
            try:
                store = Store.connect(url)
                for b in buckets:
                    cat = burst.bucket_catalog(b) if b > 1 else None
                    base = None
                    for w in workers:
                        console.print(f"{m} Redis master(s), {b} bucket(s), {w} worker(s) ...")
                        harness.reset(store, catalog=cat)
                        harness.push(store, lines)
                        for node in _nodes(store):
                            node.config_resetstat()
                        _, drain_s = _drain(store, url, home / f"m{m}b{b}w{w}", w)
                        rate = n / max(drain_s, 1e-3)
                        base = base or rate / w
                        busiest = _busiest_share(store)
                        points.append(
                            ScalePoint(m, w, rate, rate / w, (rate / w) / base, b, busiest)
                        )
            finally:
                if cluster is not None:
                    cluster.stop()
    table = Table(title=f"onestock bench-scale: {n:,} orders drained")
    cols = ("Redis masters", "hot-SKU buckets", "dataflow workers", "orders/s", "per worker",
            "efficiency", "busiest master")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(str(p.masters), str(p.buckets), str(p.workers), f"{p.orders_per_s:,.0f}",
                      f"{p.per_worker:,.0f}", f"{p.efficiency:.2f}",
                      f"{p.busiest_master:.0%}")  # fmt: skip
    console.print(table)
    if out is not None:
        out.write_bytes(msgspec.json.format(msgspec.json.encode(points)))
    return points
