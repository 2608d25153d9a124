"""``onestock loadtest SCENARIO``: start what a Double-Eleven load scenario needs (a fresh
Redis, the scenario's catalog, ``onestock serve``, ``onestock run``), run the Locust scenario
headless against it, and print the report: results table, the gate's verdict, and where the
CSV/HTML reports and the plot are. Exit status: Locust's (1 when the gate failed)."""

from __future__ import annotations

import csv
import math
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

import loadtest
from onestock import harness
from onestock.domain.errors import OnestockError
from onestock.domain.types import Catalog
from state.server import free_port
from state.store import Store

SCENARIO_DIR = Path(loadtest.__file__).parent
NOT_SCENARIOS = {"__init__", "checks", "common", "gate", "users"}


def scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.py") if p.stem not in NOT_SCENARIOS)


class Described(msgspec.Struct):
    catalog: Catalog
    default_rate: float
    default_seconds: int
    http: list[str]  # its HTTP user classes
    stream: list[str]  # its straight-to-stream user classes


_DESCRIBE = """
import sys, msgspec, importlib
from loadtest.users import StreamOrders
m = importlib.import_module("loadtest." + sys.argv[1])
users = [n for n, c in vars(m).items() if isinstance(c, type) and c.__module__ == m.__name__
         and getattr(c, "abstract", True) is False and hasattr(c, "tasks")]
stream = [n for n in users if issubclass(getattr(m, n), StreamOrders)]
sc = m.SCENARIO
sys.stdout.buffer.write(msgspec.json.encode({"catalog": sc.catalog(),
    "default_rate": sc.default_rate, "default_seconds": sc.default_seconds,
    "http": [n for n in users if n not in stream], "stream": stream}))
"""


def describe(name: str) -> Described:
    """A scenario's catalog, defaults and user classes, read in a child process: importing
    Locust monkey-patches the process (gevent), which this one must not be."""
    proc = subprocess.run([sys.executable, "-c", _DESCRIBE, name], capture_output=True)
    if proc.returncode != 0:
        raise OnestockError(f"loadtest/{name}.py: {proc.stderr.decode()[-1500:]}")
    return msgspec.json.decode(proc.stdout, type=Described)


def _wait_http(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise OnestockError(f"{what} did not come up")
        time.sleep(0.1)


def _stall(url: str, at_s: float, ms: int) -> None:
    """Pause Redis writes for ``ms`` at ``at_s`` seconds into the run (CLIENT PAUSE WRITE):
    what a stalled store looks like to each load model."""
    time.sleep(at_s)
    Store.connect(url).r.execute_command("CLIENT", "PAUSE", ms, "WRITE")


@dataclass
class _Run:
    """One load test: the scenario and its settings, defaults filled in."""

    name: str
    scenario: Described
    rate: float
    seconds: int
    processes: int
    users: int
    model: str
    via: str
    user_class: str
    out: Path
    scale: float
    max_p99_ms: float
    max_failure_ratio: float
    workers: int
    stall_ms: int
    orders_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    shopify_secret: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def prefix(self) -> Path:
        """Where Locust writes its reports (CSV, HTML), and the log and plot beside them."""
        return self.out / self.name

    @property
    def verdict(self) -> Path:
        return self.out / f"{self.name}_verdict.json"

    @property
    def log(self) -> Path:
        return self.out / f"{self.name}_locust.log"


def _plan(
    name: str, rate: float | None, seconds: int | None, processes: int, users: int | None,
    model: str, via: str, **rest: Any,
) -> _Run:  # fmt: skip
    """The scenario and the settings of its run, checked (``rest``: taken as they are)."""
    if name not in scenarios():
        raise OnestockError(f"unknown scenario {name!r}: one of {', '.join(scenarios())}")
    sc = describe(name)
    rate = rate if rate is not None else sc.default_rate
    seconds = seconds if seconds is not None else sc.default_seconds
    if seconds < 1 or processes < 1 or rate < 0:
        raise OnestockError("--seconds and --processes must be >= 1, --rate >= 0")
    classes = sc.stream if via == "stream" else sc.http
    if not classes:
        raise OnestockError(f"scenario {name} has no {via} users")
    if users is None:  # open: one arrival loop per process; closed: enough users to pace
        users = processes if model == "open" else max(processes, min(200, math.ceil(rate / 20)))
    return _Run(name, sc, rate, seconds, processes, users, model, via, classes[0], **rest)


def _env(run: _Run, url: str, home: Path) -> dict[str, str]:
    """The environment of ``onestock serve`` and of Locust."""
    return {
        **os.environ, "ONESTOCK_REDIS_URL": url, "ONESTOCK_HOME": str(home),
        "ONESTOCK_ORDERS_SECRET": run.orders_secret,
        "ONESTOCK_SHOPIFY_SECRET": run.shopify_secret, "ONESTOCK_SHOPIFY_CHANNEL": "app",
    }  # fmt: skip


def _locust_cmd(run: _Run, port: int, url: str) -> list[str]:
    """Locust, headless, against the intake on ``port`` (and Redis at ``url`` for its
    checks), writing its reports and the gate's verdict."""
    prefix, users = run.prefix, run.users
    cmd = [
        sys.executable, "-m", "locust", "-f", str(SCENARIO_DIR / f"{run.name}.py"),
        "--headless", "--only-summary", "-u", str(users), "-r", str(max(users, 1)),
        "-t", f"{run.seconds}s", "--stop-timeout", "5",
        "-H", f"http://127.0.0.1:{port}",
        "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html",
        "--onestock-redis", url, "--orders-secret", run.orders_secret,
        "--shopify-secret", run.shopify_secret, "--target-rate", str(run.rate),
        "--model", run.model, "--scale", str(run.scale), "--max-p99-ms", str(run.max_p99_ms),
        "--max-failure-ratio", str(run.max_failure_ratio), "--verdict", str(run.verdict),
    ]  # fmt: skip
    if run.processes > 1:
        cmd += ["--processes", str(run.processes)]
    cmd.append(run.user_class)
    return cmd


def _locust(run: _Run, port: int, url: str, env: dict[str, str], console: Console) -> int:
    """Run the scenario (with a stall half-way through, if asked); Locust's exit status."""
    console.print(
        f"[bold]onestock loadtest {run.name}[/]: {run.user_class} ({run.via}, {run.model} "
        f"model), {run.seconds} s, {run.users} user(s) on {run.processes} process(es), "
        + (f"scale {run.scale}" if run.name == "double_eleven_day" else f"target {run.rate:g}/s")
    )
    if run.stall_ms:
        threading.Thread(
            target=_stall, args=(url, run.seconds / 2, run.stall_ms), daemon=True
        ).start()
    with open(run.log, "wb") as log:
        cmd = _locust_cmd(run, port, url)
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _against_pipeline(run: _Run, console: Console) -> int:
    """A fresh Redis with the scenario's catalog, ``onestock serve`` and ``onestock run``,
    and the scenario against them; Locust's exit status."""
    with harness.scratch_redis("onestock-loadtest-") as (server, home):
        store = Store.connect(server.url)
        harness.reset(store, catalog=run.scenario.catalog)
        env = _env(run, server.url, home)
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "onestock", "serve", "--port", str(port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        flow = harness.start_dataflow(server.url, home, run.workers, until_drained=False)
        try:
            _wait_http(port, serve, "onestock serve")
            return _locust(run, port, server.url, env, console)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            harness.stop(flow)


def run_loadtest(
    name: str,
    *,
    rate: float | None,
    seconds: int | None,
    processes: int,
    users: int | None,
    model: str,
    via: str,
    out: Path,
    scale: float,
    max_p99_ms: float,
    max_failure_ratio: float,
    workers: int,
    stall_ms: int = 0,
    plot: bool = True,
    console: Console | None = None,
) -> int:
    console = console or Console()
    run = _plan(
        name, rate, seconds, processes, users, model, via, out=out, scale=scale,
        max_p99_ms=max_p99_ms, max_failure_ratio=max_failure_ratio, workers=workers,
        stall_ms=stall_ms,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    run.verdict.unlink(missing_ok=True)
    rc = _against_pipeline(run, console)
    if not run.verdict.exists():
        tail = run.log.read_text(errors="replace")[-3000:]
        raise OnestockError(f"locust ended ({rc}) without a verdict:\n{tail}")
    verdict = msgspec.json.decode(run.verdict.read_bytes())
    prefix = run.prefix
    _print_report(console, prefix, verdict)
    if plot:
        png = _plot(prefix, name)
        if png is not None:
            console.print(f"plot: {png}")
    console.print(f"reports: {prefix}_stats.csv, {prefix}.html, {prefix}_locust.log")
    return rc


def _print_report(console: Console, prefix: Path, verdict: dict[str, Any]) -> None:
    table = Table(title="results (latency from the intended send time in the open model)")
    cols = ["Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%", "100%"]
    for c in ("request", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(c, justify="left" if c == "request" else "right")
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"] if row["Name"] != "Aggregated" else "all"
            table.add_row(*(name if c == "Name" else _num(row[c]) for c in cols),
                          style="bold" if name == "all" else None)  # fmt: skip
    console.print(table)
    ok = verdict["passed"]
    console.print(f"gate: [{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/]")
    for c in verdict["checks"]:
        mark = "[green]ok[/]  " if c["ok"] else "[red]FAIL[/]"
        console.print(f"  {mark} {c['name']}: {c['detail']}")


def _num(text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return text
    return f"{v:,.1f}" if v != int(v) and v < 100 else f"{v:,.0f}"


def _plot(prefix: Path, name: str) -> Path | None:
    """Throughput and latency percentiles over the run, from Locust's stats history."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = []
    with open(f"{prefix}_stats_history.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"]
    if not rows:
        return None
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]

    def col(c: str) -> list[float]:
        return [float(r[c]) if r[c] not in ("N/A", "") else math.nan for r in rows]

    def per_second(c: str) -> list[float]:
        """From the running totals, over 3 s (distributed workers report every 3 s)."""
        total = col(c)
        return [
            (total[i] - total[max(0, i - 3)]) / max(1, t[i] - t[max(0, i - 3)])
            for i in range(len(t))
        ]

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.plot(t, per_second("Total Request Count"), label="requests/s")
    a.plot(t, per_second("Total Failure Count"), label="failures/s")
    a.set_ylabel("per second")
    a.legend()
    a.set_title(f"onestock loadtest {name}")
    for q in ("50%", "95%", "99%"):
        b.plot(t, col(q), label=f"p{q[:-1]}")
    b.set_ylabel("ms (last 10 s)")
    b.set_xlabel("seconds into the run")
    b.legend()
    fig.tight_layout()
    png = Path(f"{prefix}.png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
