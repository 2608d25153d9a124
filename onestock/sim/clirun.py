"""CLI mode: a history through the real command line, with kill -9 and Redis restarts.

Per history: a persistent embedded Redis server (AOF) and ONESTOCK_HOME in a temp dir;
`onestock catalog load`, `orders push -`, `run
--until-drained --workers W` killed with SIGKILL (its whole process group) at random times
and started again, the Redis server restarted with a clean shutdown (SIGTERM: nothing
acknowledged is lost) while a run goes on, then a last run that must drain, and every
output read back with the commands users run. Every call has a timeout: a hang is a
violation, never a hung check.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from onestock.domain import sharding
from onestock.sim import observe
from onestock.sim.fast import anchor_of, boundary_offset
from onestock.sim.history import History, iso, render_catalog
from onestock.sim.model import Observed, ms
from state.server import RedisServer
from state.store import Store

ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 45.0
CALL_TIMEOUT_S = 60.0


class Cli:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.tmp = tmp
        self.problems: list[tuple[str, str]] = []
        self.runs = 0

    def call(self, *args: str, stdin: bytes | None = None) -> bytes:
        """One command; a timeout, a traceback or a failure is recorded as a problem."""
        what = "onestock " + " ".join(args)
        try:
            p = subprocess.run([sys.executable, "-m", "onestock", *args], input=stdin,
                               capture_output=True, env=self.env, cwd=ROOT,
                               timeout=CALL_TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            self.problems.append(("cli.hang", f"`{what}` did not finish in {CALL_TIMEOUT_S} s"))
            return b""
        err = p.stderr.decode(errors="replace")
        if "Traceback" in err:
            self.problems.append(("cli.traceback", f"`{what}`: {err.strip().splitlines()[-1]}"))
        elif p.returncode != 0:
            self.problems.append(("cli.failed", f"`{what}` exited {p.returncode}: {err[-300:]}"))
        return p.stdout

    def start_run(self, workers: int) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = open(self.tmp / f"run{self.runs}.log", "wb")  # noqa: SIM115 (closed with the run)
        return subprocess.Popen(
            [sys.executable, "-m", "onestock", "run", "--until-drained", "--workers", str(workers)],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        """The run's last messages and the last line of each traceback it printed."""
        text = (self.tmp / f"run{self.runs}.log").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "Traceback"))]
        return " | ".join(lines[-6:])


def kill9(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_cli(h: History, tmp: Path) -> tuple[Observed, dict[str, int]]:
    rng = random.Random(h.seed * 104729 + 3)
    server = RedisServer(tmp / "r", persistent=True).start()
    k = h.shards if h.features.skew or not h.features.campaign else 1  # no skew: one shard
    w = min(h.workers, k)
    env = {"ONESTOCK_REDIS_URL": server.url, "ONESTOCK_HOME": str(tmp / "home"),
           "ONESTOCK_SHARDS": str(k), "ONESTOCK_BATCH_SIZE": str(rng.choice([1, 2, 5, 20])),
           "ONESTOCK_SNAPSHOT_MS": str(rng.choice([200, 500, 1000])),
           "ONESTOCK_LAYOUT": h.layout}  # fmt: skip
    if h.features.generations:  # a generation ends a few seconds in (every run alike)
        env["ONESTOCK_GENERATION_OFFSET_MS"] = str(boundary_offset(h, (1000, 6000)))
    cli = Cli(env, tmp)
    faults = 0
    first_kill: int | None = None
    try:
        anchor = anchor_of(h)
        lines = h.render_events(anchor)
        cats = [render_catalog(h.catalog, anchor)]
        base = {s["sku"]: dict(s["stock"]) for s in cats[0]["skus"]}
        (tmp / "catalog.json").write_bytes(orjson.dumps(cats[0]))
        cli.call("catalog", "load", str(tmp / "catalog.json"))
        # everything at once: a later push after an idle, drained run would make its
        # orders rightly "late" for the campaign (the burst was over), muddling the check
        cli.call("orders", "push", "-", stdin=b"\n".join(lines) + b"\n")
        entry_ms = _entries(server.url, lines, k)  # (no run has read, or trimmed, any yet)
        window: tuple[int, int] | None = None
        for n in range(rng.randint(1, 3)):
            proc = cli.start_run(w)
            started = _progress(server.url, k, rng.randint(1, max(1, len(lines) // 2)), proc)
            time.sleep(rng.uniform(0, 0.3))
            if started and rng.random() < 0.4 and proc.poll() is None:  # Redis restarted under it
                first_kill = first_kill or int(time.time() * 1000)
                server.stop()
                time.sleep(rng.uniform(0.1, 1.0))
                server.start()
                faults += 1
                time.sleep(rng.uniform(0.2, 2.0))
            if proc.poll() is None:
                faults += 1
                first_kill = first_kill or int(time.time() * 1000)
            elif proc.returncode != 0:
                cli.problems.append(("run.failed", f"run {n + 1} exited {proc.returncode}: "
                                     f"{cli.log()[-600:]}"))  # fmt: skip
            kill9(proc)
            if n == 0 and h.reload is not None:  # the reload, while no run goes on
                window = _reload(h, anchor, server.url, tmp, cli, cats)
                faults += 1
        started_ms = int(time.time() * 1000)
        proc = cli.start_run(w)
        drained: tuple[int, int] | None = None
        try:
            rc = proc.wait(timeout=DRAIN_TIMEOUT_S)
            drained = started_ms, int(time.time() * 1000)  # (its last look came in between)
            if rc != 0:
                cli.problems.append(("run.failed", f"last run exited {rc}: {cli.log()[-600:]}"))
        except subprocess.TimeoutExpired:
            cli.problems.append(("drain.hang", f"`run --until-drained` still running after "
                                 f"{DRAIN_TIMEOUT_S:.0f} s: {cli.log()[-600:]}"))  # fmt: skip
            kill9(proc)
        ob = _read(cli, server.url, lines, k, cats, base, window)
        ob.first_crash_ms = first_kill
        ob.entry_ms, ob.drained = entry_ms, drained
    finally:
        server.stop()
    return ob, {"events": len(lines), "faults": faults}


def _entries(url: str, lines: list[bytes], k: int) -> list[int]:
    """Per line pushed, the ms of its input entry id, read back from the streams."""
    store = Store.connect(url)
    out = [0] * len(lines)
    try:
        by_shard: list[list[int]] = [[] for _ in range(k)]
        for n, raw in enumerate(lines):
            if raw.strip():  # (`orders push` skips blank lines)
                by_shard[sharding.shard_of(raw, k)].append(n)
        for x, ns in enumerate(by_shard):
            rows = store.shards.read(x, "0-0", len(ns)) if ns else []
            if len(rows) == len(ns):
                for n, (eid, _) in zip(ns, rows, strict=True):
                    out[n] = int(eid.partition("-")[0])
    finally:
        store.r.close()
    return out


def _progress(url: str, k: int, more: int, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until the run wrote ``more`` outcomes (or ended, or 20 s passed): a kill then
    lands mid-burst, not while the workers still start. True: the run is under way."""
    store = Store.connect(url)
    deadline = time.monotonic() + 20
    try:
        before = sum(store.shards.outcome_counts(k))
        while proc.poll() is None and time.monotonic() < deadline:
            if sum(store.shards.outcome_counts(k)) >= before + more:
                return True
            time.sleep(0.02)
        return False
    finally:
        store.r.close()


def _reload(
    h: History, anchor: int, url: str, tmp: Path, cli: Cli, cats: list[dict[str, Any]]
) -> tuple[int, int]:
    assert h.reload is not None
    start = int(time.time() * 1000)
    cat = render_catalog(h.reload, anchor)
    store = Store.connect(url)
    buckets = {s["sku"]: s.get("buckets", 1) for s in cat["skus"]}  # (a split SKU: them all)
    levels = store.skus.stock_levels(list(buckets), buckets)
    store.r.close()
    for sku in cat["skus"]:
        sku["stock"] = {**dict.fromkeys(sku["stock"], 0), **levels.get(sku["sku"], {})}
    (tmp / "reload.json").write_bytes(orjson.dumps(cat))
    cli.call("catalog", "load", str(tmp / "reload.json"))
    cats.append(cat)
    return start, int(time.time() * 1000)


def _read(
    cli: Cli,
    url: str,
    lines: list[bytes],
    k: int,
    cats: list[dict[str, Any]],
    base: dict[str, dict[str, int]],
    window: tuple[int, int] | None,
) -> Observed:
    camp = (cats[-1].get("campaigns") or [None])[0]
    gifts = cli.call("gifts", camp["id"], "--json") if camp else b""
    # `stock --json --at T`: while every lock holds, and after them all (at ms as read back)
    stocks = {ms(t := iso(at)) or 0: orjson.loads(cli.call("stock", "--json", "--at", t) or b"{}")
              for at in observe.reading_times(cats[-1], few=True)}  # fmt: skip
    printed = {
        what: observe.jsonl(cli.call(what))
        for what in ("fulfilments", "deadletters", "returns", "alerts", "movements")
    }
    store = Store.connect(url)
    try:  # (last: the audit check ends by trimming the records)
        vers, ranks = observe.versions(store, k), observe.ranks(store, camp and camp["sku"])
        rank_paid = observe.ranked_at(store, camp and camp["sku"])
        cli.problems += observe.audit(store, k, base)
    except Exception as exc:
        cli.problems.append(("read.exception", f"{type(exc).__name__}: {exc}"))
        vers, ranks, rank_paid = [], [], {}
    store.r.close()
    return Observed(
        lines=lines, shards=k, catalogs=cats, base=base, reload_window=window,
        fulfilments=printed["fulfilments"],
        versions=vers,
        deadletters=printed["deadletters"],
        returns=printed["returns"],
        stock=next(iter(stocks.values())),
        gifts=orjson.loads(gifts) if gifts.strip() else None,
        alerts=printed["alerts"],
        ranks=ranks, rank_paid=rank_paid, problems=cli.problems, skew_ms=2000,
        movements=printed["movements"],
        availability={at: observe.from_stock(doc) for at, doc in stocks.items()},
    )  # fmt: skip
