"""Measuring: the runs of ``onestock bench`` and ``onestock bench-scale``, against a scratch
Redis. Each run drains the same pre-pushed orders: the bare loop (the ceiling), the dataflow,
the dataflow with every rule on, the dataflow with a first-N campaign; what a run measures is
kept raw here (seconds, script counters) and turned into figures by ``summary``."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from redis.cluster import RedisCluster
from rich.console import Console

from onestock import burst, harness
from onestock.domain.protocol import SEP, Code
from onestock.domain.records import packed_records
from onestock.domain.settings import DEFAULT_SHARDS, Settings
from onestock.domain.types import Catalog
from state import keys
from state.store import Store

SLOW_US = 5000  # script calls slower than this are counted (target: well under 10 ms)
SMALL = 2000  # orders of the small drain whose costs are subtracted (the fixed start costs)
TOP = 5  # commands shown by their time per order


class Cost(msgspec.Struct):
    """Where a drain's time went, per order, less what a drain of ``SMALL`` orders of the
    same burst cost (the processes' start, catalog reads: fixed costs): Redis's own
    accounting and the dataflow's processes' CPU time."""

    redis_cpu_us: float  # INFO cpu: the server's used_cpu_sys + used_cpu_user
    scripts_us: float  # INFO commandstats: EVALSHA's usec (with the commands scripts call)
    python_us: float  # the dataflow's processes (onestock run, its workers, the feed): CPU
    # the TOP other commands, usec per order, the largest first (Redis 6.2 counts the
    # commands a script calls here too, so they overlap the scripts' time)
    commands: list[tuple[str, float]]


class _Use(NamedTuple):
    """What one drain used: Redis CPU s, command usec by command, the processes' CPU s."""

    redis_cpu_s: float
    commands: dict[str, float]
    python_s: float


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


@dataclass
class Measured:
    """What the runs of one ``onestock bench`` measured, before any median: the script
    figures add up over every core run, the memory growth is the largest of them."""

    orders: int
    workers: int
    runs: list[Run] = field(default_factory=list)
    script_calls: int = 0
    script_usec: float = 0.0  # total: calls x mean us, per run
    script_slow: int = 0  # calls over SLOW_US
    script_slowest_ms: float = 0.0
    memory_growth_mb: float = 0.0
    core_latency: tuple[int, int] = (0, 0)  # the last core run's (the rules run replaces it)
    gifts_drain_s: float | None = None  # the campaign run, unless --no-gifts
    gifts_latency: tuple[int, int] | None = None
    core_cost: Cost | None = None  # the last core run's, less a small drain's
    accepted_drain_s: float | None = None  # every order accepted (``burst.accepted_catalog``)
    accepted_cost: Cost | None = None
    refused_cost: Cost | None = None  # every order refused (``burst.refused_catalog``)

    def add_scripts(self, stats: tuple[int, float, int, float]) -> None:
        """One core run's script counters (``script_stats``)."""
        calls, avg_us, slow, slowest_ms = stats
        self.script_calls += calls
        self.script_usec += calls * avg_us
        self.script_slow += slow
        self.script_slowest_ms = max(self.script_slowest_ms, slowest_ms)


def burst_lines(n: int) -> list[bytes]:
    """The benchmark's orders: the demo burst, the same for every run and invocation."""
    return list(burst.orders(n, burst.demo_catalog(), seed=2026))


def _bare_worker(url: str, mine: list[int], batch: int) -> None:
    from dataflows.decider import Decider
    from dataflows.runner import calm_gc

    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    calm_gc()  # (as a dataflow worker)
    bare_drain(store, d, mine, batch)


def bare_drain(store: Store, decider: Any, shards: list[int], batch: int) -> None:
    """The bare loop: each of ``shards`` read a batch at a time, decided and written by
    ``decider`` (a ``Decider``), in turn, until none has more."""
    last = dict.fromkeys(shards, "0-0")
    while True:
        got = 0
        for s in shards:
            rows = store.shards.read(s, last[s], batch)
            if rows:
                last[s] = rows[-1][0]
                got += len(rows)
                decider.emit(decider.process(s, rows))
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


def script_stats(store: Store) -> tuple[int, float, int, float]:
    """Lua calls since the counters were reset: (calls, mean us, calls over SLOW_US, the
    slowest in ms)."""
    stats = store.r.info("commandstats").get("cmdstat_evalsha", {})
    slow = [e for e in store.r.slowlog_get(10_000) if e["command"].startswith(b"EVALSHA")]
    slowest = max((e["duration"] for e in slow), default=0) / 1000
    return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0)), len(slow), slowest


def check_outcomes(store: Store, n: int, what: str) -> None:
    """Every event of the burst ended exactly once, as a record or a dead letter (the burst
    has some garbage on purpose): a run that lost or doubled events measured nothing."""
    records, dead = store.shards.outcome_counts(DEFAULT_SHARDS)
    if records + dead != n:
        raise RuntimeError(f"{what}: {records:,} records + {dead:,} dead letters for {n:,} events")


def fulfilment_latency(store: Store, sku: str = "SNEAKER-42") -> tuple[int, int]:
    """p50 and p99 of (record written - event received), ms, for accepted orders of ``sku``
    (a backlog drain: it includes the wait behind the burst, the same in every run)."""
    lat: list[int] = []
    needle = f"{SEP}{sku}{SEP}"
    for eid, fields in _entries_with_ids(store):
        written = int(eid.split("-")[0])
        for p in packed_records(fields):
            f = p.split(SEP, 9)
            if f[9].startswith(Code.ACCEPTED) and needle in SEP + f[9] + SEP:
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


def _redis_cpu_s(store: Store) -> float:
    cpu = store.r.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (and theirs, as they waited)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def used(store: Store, url: str, home: Path, workers: int) -> tuple[_Use, tuple[float, float]]:
    """Drain the pushed burst (Redis's counters reset just before): what it used, and
    ``drain``'s seconds."""
    store.r.config_resetstat()
    redis0, py0 = _redis_cpu_s(store), _children_cpu_s()
    seconds = drain(store, url, home, workers)
    stats = store.r.info("commandstats")
    commands = {k.removeprefix("cmdstat_").upper(): float(v["usec"]) for k, v in stats.items()}
    return _Use(_redis_cpu_s(store) - redis0, commands, _children_cpu_s() - py0), seconds


def cost(big: _Use, small: _Use, n: int) -> Cost:
    """Per order of the ``n - SMALL`` orders the big drain had more."""
    more = max(1, n - SMALL)
    per = {c: (us - small.commands.get(c, 0.0)) / more for c, us in big.commands.items()}
    scripts = per.pop("EVALSHA", 0.0) + per.pop("EVAL", 0.0)
    top = sorted(per.items(), key=lambda kv: -kv[1])[:TOP]
    return Cost(
        (big.redis_cpu_s - small.redis_cpu_s) * 1e6 / more, scripts,
        (big.python_s - small.python_s) * 1e6 / more, [(c, round(us, 2)) for c, us in top],
    )  # fmt: skip


def drain(store: Store, url: str, home: Path, workers: int) -> tuple[float, float]:
    """Run the dataflow until drained (a flushed Redis is a new instance: no recovery state
    of an earlier run applies): (seconds start to exit, seconds first to last decision)."""
    t0 = time.perf_counter()
    proc = harness.start_dataflow(url, home, workers, until_drained=True)
    if proc.wait() != 0:
        raise RuntimeError(f"the dataflow exited with status {proc.returncode}")
    flow_s = time.perf_counter() - t0
    decided = decisions_ms(store)
    return flow_s, (decided[1] - decided[0]) / 1000 if decided else flow_s


def decisions_ms(store: Store) -> tuple[int, int] | None:
    """The first and the last decision's time (ms since the epoch) in the records."""
    decided = [
        int(p.split(SEP)[5])
        for f in store.shards.entries(keys.outbox, DEFAULT_SHARDS)
        for p in packed_records(f)
    ]
    return (min(decided), max(decided)) if decided else None


def per_s(n: int, seconds: float) -> float:
    """Orders per second of a drain (first to last decision: at least a millisecond)."""
    return n / max(seconds, 1e-3)


class _Bench:
    """One scratch Redis and the burst: each run starts from a fresh database with the
    burst pushed and the counters reset."""

    def __init__(self, url: str, home: Path, lines: list[bytes], m: Measured, say: Console):
        self.store = Store.connect(url)
        self.url, self.home, self.lines, self.m, self.say = url, home, lines, m, say

    def prepare(self, catalog: Catalog | None = None, lines: list[bytes] | None = None) -> int:
        """A fresh database with the burst (or ``lines``) pushed; the memory used before the
        push."""
        store = self.store
        harness.reset(store, catalog=catalog)
        store.r.config_set("slowlog-log-slower-than", SLOW_US)
        store.r.slowlog_reset()
        before = store.memory_used()
        harness.push(store, self.lines if lines is None else lines)
        store.r.config_resetstat()
        return before

    def drained(self, what: str, catalog: Catalog | None = None) -> tuple[float, float]:
        """The dataflow drains the burst (with ``catalog``), every event ended once."""
        self.prepare(catalog)
        seconds = drain(self.store, self.url, self.home, self.m.workers)
        check_outcomes(self.store, self.m.orders, what)
        return seconds

    def alternation(self, label: str, rules: bool, last: bool) -> Run:
        """The bare loop, the dataflow, then (``rules``) the dataflow with every rule on."""
        m, store, n = self.m, self.store, self.m.orders
        self.say.print(f"bare loop{label} ...")
        self.prepare()
        bare_s = bare_loop(self.url, m.workers, Settings.from_env().batch_size)
        check_outcomes(store, n, "bare loop")
        self.say.print(f"dataflow{label} ...")
        before = self.prepare()
        use, (flow_s, drain_s) = used(store, self.url, self.home, m.workers)
        check_outcomes(store, n, "dataflow")
        m.add_scripts(script_stats(store))
        m.memory_growth_mb = max(m.memory_growth_mb, (store.memory_used() - before) / 2**20)
        run = Run(n / bare_s, n / flow_s, per_s(n, drain_s), bare_s / flow_s)
        if last:  # (the runs below replace these records)
            m.core_latency = fulfilment_latency(store)
            m.core_cost = cost(use, self.small(None), n)
        if rules:  # beside each core run: the ratio of neighbours in time
            self.say.print(f"dataflow with every rule on{label} ...")
            _, rules_drain_s = self.drained("dataflow with every rule on", burst.rules_catalog())
            run.rules_drain_orders_per_s = per_s(n, rules_drain_s)
            run.rules_ratio = run.rules_drain_orders_per_s / run.dataflow_drain_orders_per_s
        return run

    def small(self, catalog: Catalog | None) -> _Use:
        """What a drain of the burst's first ``SMALL`` orders uses (with ``catalog``)."""
        self.prepare(catalog, self.lines[:SMALL])
        use, _ = used(self.store, self.url, self.home, self.m.workers)
        check_outcomes(self.store, min(SMALL, self.m.orders), "small drain")
        return use

    def accepted(self) -> None:
        """The dataflow with every order accepted (1000 x the stock), once: its drain rate
        and costs."""
        self.say.print("dataflow, every order accepted ...")
        catalog = burst.accepted_catalog()
        small = self.small(catalog)
        self.prepare(catalog)
        use, (_, self.m.accepted_drain_s) = used(self.store, self.url, self.home, self.m.workers)
        check_outcomes(self.store, self.m.orders, "dataflow, every order accepted")
        self.m.accepted_cost = cost(use, small, self.m.orders)

    def refused(self) -> None:
        """The dataflow with no stock (every order refused), once: its costs."""
        self.say.print("dataflow, every order refused ...")
        catalog = burst.refused_catalog()
        small = self.small(catalog)
        self.prepare(catalog)
        use, _ = used(self.store, self.url, self.home, self.m.workers)
        check_outcomes(self.store, self.m.orders, "dataflow, every order refused")
        self.m.refused_cost = cost(use, small, self.m.orders)

    def campaign(self) -> None:
        """The dataflow with a first-10,000 gift campaign on the hot SKU, once."""
        self.say.print("dataflow with a first-10,000 gift campaign ...")
        catalog = burst.campaign_catalog(first_n=10_000)
        _, self.m.gifts_drain_s = self.drained("dataflow with a campaign", catalog)
        self.m.gifts_latency = fulfilment_latency(self.store)


def measure_bench(
    lines: list[bytes], workers: int, rules: bool, gifts: bool, repeat: int, say: Console,
    accepted: bool = True,
) -> Measured:  # fmt: skip
    """``repeat`` alternations of the bare loop and the dataflow (on a shared machine a single
    pair can land in a slow minute), then the campaign once."""
    m = Measured(len(lines), workers)
    with harness.scratch_redis("onestock-bench-") as (server, home):
        bench = _Bench(server.url, home, lines, m, say)
        for i in range(repeat):
            label = f" (run {i + 1} of {repeat})" if repeat > 1 else ""
            m.runs.append(bench.alternation(label, rules, last=i == repeat - 1))
        if accepted:
            bench.accepted()
            bench.refused()
        if gifts:
            bench.campaign()
    return m


# -- bench-scale -------------------------------------------------------------------------------


class ScalePoint(msgspec.Struct):
    masters: int  # 1: one Redis server; more: a local Redis Cluster of that many masters
    workers: int  # dataflow worker processes
    orders_per_s: float  # drained, first to last decision
    per_worker: float  # orders/s per worker process
    efficiency: float  # per-worker rate / the 1-worker rate on the same Redis
    buckets: int = 1  # hot-SKU buckets of the hot SKU
    busiest_master: float = 1.0  # share of all script time spent on the busiest master
    start_s: float = 0.0  # `onestock run` launched -> its first decision


def nodes(store: Store) -> list[Any]:
    """A client per master: the server itself, or each primary of a cluster."""
    if isinstance(store.r, RedisCluster):
        return [n.redis_connection for n in store.r.get_primaries()]
    return [store.r]


def busiest_share(store: Store) -> float:
    """The busiest master's share of all Lua script time since the counters were reset (how
    far one master's core caps the whole: 1/M when the work spreads evenly over M)."""
    usec = [
        float(n.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
        for n in nodes(store)
    ]
    return max(usec) / sum(usec) if sum(usec) else 1.0


def _scale_points(
    store: Store, url: str, home: Path, lines: list[bytes], m: int, b: int,
    workers: list[int], say: Console,
) -> list[ScalePoint]:  # fmt: skip
    """One Redis (``m`` masters), the hot SKU in ``b`` buckets: the burst drained by each
    number of workers."""
    n = len(lines)
    cat = burst.bucket_catalog(b) if b > 1 else None
    base = None
    points = []
    for w in workers:
        say.print(f"{m} Redis master(s), {b} bucket(s), {w} worker(s) ...")
        harness.reset(store, catalog=cat)
        harness.push(store, lines)
        for node in nodes(store):
            node.config_resetstat()
        launched = time.time()
        _, drain_s = drain(store, url, home / f"m{m}b{b}w{w}", w)
        rate = per_s(n, drain_s)
        base = base or rate / w
        busiest = busiest_share(store)
        start_s = (decisions_ms(store) or (0, 0))[0] / 1000 - launched
        points.append(ScalePoint(m, w, rate, rate / w, (rate / w) / base, b, busiest, start_s))
    return points


def measure_scale(
    lines: list[bytes], workers: list[int], masters: list[int], buckets: Sequence[int],
    say: Console,
) -> list[ScalePoint]:  # fmt: skip
    """The burst drained with each number of workers, against each Redis (one server, or a
    local cluster of M masters), with the hot SKU in each number of buckets."""
    from state.server import LocalCluster

    points: list[ScalePoint] = []
    for m in masters:
        with harness.scratch_redis("onestock-scale-") as (server, home):
            cluster = LocalCluster(home / "cluster", m).start() if m > 1 else None
            url = cluster.url if cluster is not None else server.url
            try:
                store = Store.connect(url)
                for b in buckets:
                    points += _scale_points(store, url, home, lines, m, b, workers, say)
            finally:
                if cluster is not None:
                    cluster.stop()
    return points
