"""``onestock bench-availability``: SKU reads/s of ``GET /availability``, and its latency at a
fixed rate, idle and while a burst of orders is being decided.

One invocation, one fresh Redis (AOF on, as a deciding Redis runs), a catalog of many SKUs
(the demo's five and generated ones: a lock for douyin on every tenth, a low-stock threshold
on every third, the demo's safety stock), one ``onestock serve``, and two load generators:

1. **throughput** (closed loop): ``wrk`` (a C program) on ``--connections`` keep-alive
   connections, each request one channel's availability of ``--per-request`` random SKUs;
2. **latency at a fixed rate** (open loop): requests sent at ``--rate`` SKU reads/s
   (``--rate / --per-request`` requests/s) whatever the answers take, each timed from its
   *intended* send time (no coordinated omission); every answer is checked (200, and as many
   SKUs as asked for).

Both run first with nothing else going on, then while ``onestock run`` decides ``--orders``
pre-pushed demo orders as fast as it can (after a first window without reads: the decision
rate they cost is the difference), once it has run for ``SETTLE_S``; with ``--nice N``, the
same windows again with the dataflow's processes reniced to N (Redis and ``onestock serve``
then preempt the deciders on the shared cores). The decision rate in each window is counted
from the outcomes written. With ``--replica``, a replica of
the deciding Redis and a second ``onestock serve`` reading it
(``ONESTOCK_AVAILABILITY_REDIS_URL``) are measured beside them. After the burst, both
servers' figures must equal a direct read.

Everything shares the machine's cores: the load average when the run started is printed with
the figures, since another busy process moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import msgspec
import orjson
import uvloop
from rich.console import Console
from rich.table import Table

from intake.bench import _free_port, _pct, _wait_healthy, _wrk, ensure_wrk, paced
from onestock import burst, harness
from onestock.domain.errors import OnestockError
from onestock.domain.types import Catalog, ChannelLock, Sku
from onestock.ops import availability, availability_http
from state.server import RedisServer
from state.store import Store

SETTLE_S = 2.0  # the burst's windows start this long after its first decision
WRK_LUA = r"""
local paths, n = {}, 0
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
function request()
  n = n + 1
  return wrk.format("GET", paths[n % #paths + 1])
end
"""


class Window(msgspec.Struct):
    """One measured window."""

    name: str
    seconds: float
    requests_per_s: float = 0.0
    sku_reads_per_s: float = 0.0
    p50_ms: float | None = None  # open loop only
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0  # non-2xx, wrong answers, broken connections
    decisions_per_s: float | None = None  # during the burst only
    burst_running: bool | None = None  # the burst was still being decided at its end


class Figures(msgspec.Struct):
    skus: int
    channels: int
    per_request: int
    server_workers: int
    connections: int
    rate: int  # open loop, SKU reads/s
    orders: int
    windows: list[Window]
    checked: int  # SKUs whose served figures matched a direct read after the burst
    load_average: float = 0.0  # of the machine, 1 minute, when the run started
    cores: int = 0
    nice: int = 0  # the dataflow's niceness in the second part of the burst (0: none)


def bench_catalog(skus: int, seed: int = 2026) -> Catalog:
    """The demo catalog and generated SKUs up to ``skus`` in all."""
    cat = burst.demo_catalog()
    rnd = random.Random(seed)
    locations = [loc.id for loc in cat.locations]
    until = burst.T0 + timedelta(days=3650)  # active for the whole run
    for i in range(skus - len(cat.skus)):
        locks = [ChannelLock(channel="douyin", qty=5, until=until)] if i % 10 == 0 else []
        stock = {loc: rnd.randint(0, 60) for loc in rnd.sample(locations, 4)}
        low = 12 if i % 3 == 0 else None
        cat.skus.append(
            Sku(sku=f"ITEM-{i:05d}", stock=stock, low_stock_threshold=low, channel_locks=locks)
        )
    return cat


def request_paths(cat: Catalog, per_request: int, n: int = 1000, seed: int = 7) -> list[str]:
    """``n`` distinct requests: an online channel's availability of ``per_request`` SKUs."""
    rnd = random.Random(seed)
    names = [s.sku for s in cat.skus]
    online = [c.id for c in cat.channels if c.kind == "online"]
    return [
        f"/availability?channel={online[i % len(online)]}&skus="
        + ",".join(rnd.sample(names, per_request))
        for i in range(n)
    ]


# -- open loop -------------------------------------------------------------------------------


async def _open_loop(port: int, paths: list[str], rate: float, seconds: float) -> Window:
    """``rate`` requests/s for ``seconds`` on keep-alive connections (opened beforehand, more
    when all are busy). Each latency runs from the request's intended send time, or from its
    actual one when the sender, woken early (its timers have 1 ms steps), sent it sooner."""
    clock = time.perf_counter
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
    wanted = [p.count(",") + 1 for p in paths]
    raw = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths]
    latencies: list[float] = []
    errors = 0

    async def fire(i: int, due: float) -> None:
        nonlocal errors
        try:
            conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            sent = min(clock(), due)
            writer.write(raw[i % len(raw)])
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(m.group(1)) if m else 0)
            took = clock() - sent
            idle.append(conn)
            if head[9:12] != b"200" or len(orjson.loads(body)["skus"]) != wanted[i % len(raw)]:
                errors += 1
                return
            latencies.append(took)
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
            errors += 1

    total = int(rate * seconds)
    start = clock() + 0.1
    await paced(fire, total, rate, start, clock, 0.002)
    elapsed = clock() - start
    for _, writer in idle:
        writer.close()
    per = sum(wanted) / len(wanted)
    return Window(
        "open loop", elapsed, len(latencies) / elapsed, len(latencies) * per / elapsed,
        _pct(latencies, 0.5), _pct(latencies, 0.99), _pct(latencies, 0.999),
        max(latencies) * 1000 if latencies else None, errors,
    )  # fmt: skip


# -- the run ---------------------------------------------------------------------------------


class Bench:
    """A fresh Redis with the catalog loaded, ``onestock serve`` (one reading the deciding
    Redis, "primary", and with ``--replica`` one reading its replica), the load generators."""

    def __init__(self, url: str, home: Path, cat: Catalog, per_request: int, say: Console):
        self.url, self.home, self.say = url, home, say
        self.store = Store.connect(url)
        self.cat = cat
        self.paths = request_paths(cat, per_request)
        self.per_request = per_request
        try:
            self.wrk = ensure_wrk()
        except OnestockError:
            raise OnestockError("bench-availability needs wrk (apt-get install wrk)") from None
        self.files = home / "paths.txt", home / "paths.lua"
        self.files[0].write_text("\n".join(self.paths) + "\n")
        self.files[1].write_text(WRK_LUA)
        self.servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}

    def serve(self, name: str, workers: int, read_url: str | None = None) -> None:
        """``onestock serve`` whose GET /availability reads ``read_url`` (default: the
        deciding Redis)."""
        port = _free_port()
        env = {**os.environ, "ONESTOCK_REDIS_URL": self.url, "ONESTOCK_HOME": str(self.home)}
        env.pop(availability_http.REPLICA_ENV, None)
        if read_url is not None:
            env[availability_http.REPLICA_ENV] = read_url
        proc = subprocess.Popen(
            [sys.executable, "-m", "onestock", "serve", "--port", str(port),
             "--workers", str(workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.servers[name] = port, proc
        _wait_healthy(port, proc)

    def closed(self, name: str, server: str, connections: int, seconds: float) -> Window:
        self.say.print(f"{name}: wrk -c{connections} for {seconds:g} s ...")
        args = ["-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "-s", str(self.files[1])]
        url = f"http://127.0.0.1:{self.servers[server][0]}/"
        rate, _, bad = _wrk(self.wrk, [*args, url, "--", str(self.files[0])])
        return Window(name, seconds, rate, rate * self.per_request, errors=bad)

    def open(self, name: str, server: str, rate: int, seconds: float) -> Window:
        self.say.print(f"{name}: {rate:,} SKU reads/s for {seconds:g} s ...")
        port = self.servers[server][0]
        w = uvloop.run(_open_loop(port, self.paths, rate / self.per_request, seconds))
        w.name = name
        return w

    def check(self) -> int:
        """The first 50 SKUs, every server: served = read directly (nothing moves any more;
        a replica is given 5 s to catch up)."""
        import http.client

        names = [s.sku for s in self.cat.skus[:50]]
        direct = availability.read(self.store, None, names)
        for server, (port, _) in self.servers.items():
            deadline = time.time() + 5
            while True:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/availability?skus=" + ",".join(names))
                if orjson.loads(conn.getresponse().read()) == direct:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"GET /availability ({server}) != a direct read")
                time.sleep(0.1)
        return len(names)

    def stop(self) -> None:
        for _, proc in self.servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.servers.values():
            proc.wait(timeout=60)


class Step(NamedTuple):
    """One step of a run: a measured window, or (``renice``) the dataflow's niceness set."""

    name: str
    kind: str  # quiet (no reads) | open | closed | renice
    server: str = "primary"  # primary | replica
    seconds: float = 0.0
    nice: int = 0


def _measure(b: Bench, step: Step, rate: int, connections: int) -> Window:
    if step.kind == "quiet":
        time.sleep(step.seconds)
        return Window(step.name, step.seconds)
    if step.kind == "open":
        return b.open(step.name, step.server, rate, step.seconds)
    return b.closed(step.name, step.server, connections, step.seconds)


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` and of its descendants to niceness ``nice`` (on Linux a
    thread's own; raising it needs no privilege)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # (a thread that ended meanwhile)
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                renice(int(child), nice)


def _in_burst(b: Bench, plan: list[Step], orders: int, run_workers: int, rate: int,
              connections: int) -> list[Window]:  # fmt: skip
    """Push the orders, start the dataflow, and take each step of ``plan`` while it decides
    (each window with the decisions made meanwhile)."""
    b.say.print(f"pushing {orders:,} demo orders ...")
    harness.push(b.store, list(burst.orders(orders, burst.demo_catalog(), seed=2026)))
    proc = harness.start_dataflow(b.url, b.home, run_workers, until_drained=True)
    windows = []
    try:
        deadline = time.time() + 60
        while harness.outcomes(b.store) == 0:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the dataflow decided nothing in 60 s")
            time.sleep(0.05)
        time.sleep(SETTLE_S)  # past its start: the workers' first batches, Bytewax's set-up
        for step in plan:
            if step.kind == "renice":
                b.say.print(f"the dataflow's processes to nice {step.nice} ...")
                renice(proc.pid, step.nice)
                continue
            before, t0 = harness.outcomes(b.store), time.perf_counter()
            w = _measure(b, step, rate, connections)
            done = harness.outcomes(b.store)
            w.decisions_per_s = (done - before) / (time.perf_counter() - t0)
            w.burst_running = done < orders
            windows.append(w)
        harness.wait_outcomes(b.store, orders, proc)
    finally:
        harness.stop(proc)
    return windows


@contextmanager
def _servers(replica: bool) -> Iterator[tuple[str, str | None, Path]]:
    """A deciding Redis (AOF on) and, with ``replica``, a replica of it: (its URL, the
    replica's, a scratch home)."""
    home = Path(tempfile.mkdtemp(prefix="onestock-availability-bench-"))
    port = _free_port()
    primary = RedisServer(home / "redis", persistent=True, extra=["--port", str(port)])
    copy = RedisServer(home / "replica", persistent=False,
                       extra=["--replicaof", "127.0.0.1", str(port)])  # fmt: skip
    try:
        primary.start()
        if replica:
            copy.start()
        yield primary.url, copy.url if replica else None, home
    finally:
        copy.stop()
        primary.stop()
        shutil.rmtree(home, ignore_errors=True)


def _plan(seconds: float, replica: bool, nice: int) -> tuple[list[Step], list[Step]]:
    """The idle windows, and the burst's: at the dataflow's own niceness, then (``nice``)
    with the dataflow reniced."""
    servers = ["primary", "replica"] if replica else ["primary"]
    idle = [Step("idle: closed loop", "closed", "primary", seconds)] + [
        Step("idle: open loop" + (", replica" if s == "replica" else ""), "open", s, seconds)
        for s in servers
    ]

    def burst(label: str) -> list[Step]:
        steps = [Step(f"{label}, no reads", "quiet", seconds=seconds / 2)]
        for kind in ("open", "closed"):
            steps += [
                Step(f"{label}: {kind} loop" + (", replica" if s == "replica" else ""), kind, s,
                     seconds)
                for s in servers
            ]  # fmt: skip
        return steps

    busy = burst("burst")
    if nice:
        busy += [Step("", "renice", nice=nice), *burst(f"burst, dataflow at nice {nice}")]
    return idle, busy


def run_availability_bench(
    skus: int, per_request: int, rate: int, seconds: float, workers: int, connections: int,
    orders: int, run_workers: int, replica: bool, nice: int, out: Path | None,
) -> Figures:  # fmt: skip
    say = Console()
    load = os.getloadavg()[0]
    cat = bench_catalog(skus)
    idle, busy = _plan(seconds, replica, nice)
    with _servers(replica) as (url, replica_url, home):
        store = Store.connect(url)
        harness.reset(store, catalog=cat)
        b = Bench(url, home, cat, per_request, say)
        try:
            b.serve("primary", workers)
            if replica_url is not None:
                b.serve("replica", workers, replica_url)
            for server in b.servers:  # every server process reads the catalog once
                b.closed(f"warming {server} up", server, connections, 1)
            windows = [_measure(b, step, rate, connections) for step in idle]
            windows += _in_burst(b, busy, orders, run_workers, rate, connections)
            checked = b.check()
        finally:
            b.stop()
    figs = Figures(skus, len(cat.channels), per_request, workers, connections, rate, orders,
                   windows, checked, load, os.cpu_count() or 0, nice)  # fmt: skip
    render(figs, say)
    if out is not None:
        out.write_bytes(msgspec.json.format(msgspec.json.encode(figs)))
    return figs


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def render(figs: Figures, say: Console) -> None:
    table = Table(
        title=f"onestock bench-availability: {figs.skus:,} SKUs, {figs.per_request} per request, "
        f"{figs.server_workers} server process(es), wrk -c{figs.connections}, "
        f"open loop at {figs.rate:,} SKU reads/s"
    )
    for col in ("window", "requests/s", "SKU reads/s", "p50 / p99 / p99.9 / max ms", "errors",
                "decisions/s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "window" else "right")
    for w in figs.windows:
        lat = "" if w.p50_ms is None else " / ".join(
            _ms(v) for v in (w.p50_ms, w.p99_ms, w.p999_ms, w.max_ms)
        )  # fmt: skip
        decided = "" if w.decisions_per_s is None else f"{w.decisions_per_s:,.0f}"
        if w.burst_running is False:
            decided += " (burst over)"
        table.add_row(w.name, f"{w.requests_per_s:,.0f}", f"{w.sku_reads_per_s:,.0f}", lat,
                      str(w.errors), decided)  # fmt: skip
    say.print(table)
    say.print(f"after the burst: GET /availability = a direct read for {figs.checked} SKUs; "
              f"{figs.cores} cores, load average {figs.load_average:.2f} at the start")  # fmt: skip
