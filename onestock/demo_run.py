"""``onestock demo``: a flash-sale burst through the real pipeline on a fresh machine."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onestock import burst, harness
from onestock.domain.settings import DEFAULT_SHARDS
from onestock.ops import services as ops
from state.store import Store


def _pct(values: list[int], q: float) -> int:
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_demo(n: int, workers: int) -> int:
    console = Console()
    if n < 1:
        from onestock.domain.errors import OnestockError

        raise OnestockError(f"--orders must be at least 1, not {n}")
    console.print(f"[bold]onestock demo[/]: {n:,} flash-sale orders, {workers} dataflow workers")
    with harness.scratch_redis("onestock-demo-") as (server, home):
        store = Store.connect(server.url)
        campaign = burst.campaign_catalog()
        loaded = harness.reset(store, catalog=campaign)
        lines = list(burst.orders(n, burst.demo_catalog()))
        proc = harness.start_dataflow(server.url, home, workers, until_drained=False)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            pushed = bar.add_task("pushed ", total=n)
            decided = bar.add_task("decided", total=n)
            t0 = time.monotonic()
            harness.push(store, lines, progress=lambda k: bar.advance(pushed, k))
            harness.wait_outcomes(store, n, proc, tick=lambda d: bar.update(decided, completed=d))
            elapsed = time.monotonic() - t0
        rc = harness.stop(proc)
        audit = ops.audit(store, DEFAULT_SHARDS, loaded)
    table = Table(title=f"flash sale: {n:,} orders")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("accepted", f"{audit.accepted:,}")
    for reason, count in audit.rejected.most_common():
        table.add_row(f"rejected: {reason}", f"{count:,}")
    table.add_row("dead letters", f"{audit.dead:,}")
    c = campaign.campaigns[0]
    table.add_row(
        f"gifts awarded ({c.id}: a {c.gift_sku} for the first {c.first_n:,} buyers of {c.sku})",
        f"{audit.gifts:,}",
    )
    table.add_row("orders/s (push to last decision)", f"{n / elapsed:,.0f}")
    table.add_row(
        "latency p50 / p99, received -> decided (incl. queueing behind the burst)",
        f"{_pct(audit.latencies_ms, 0.5)} ms / {_pct(audit.latencies_ms, 0.99)} ms",
    )
    table.add_row("duplicate records", str(audit.duplicates))
    table.add_row("oversell", str(audit.oversold))
    console.print(table)
    ok = (
        rc == 0
        and audit.oversold == 0
        and audit.duplicates == 0
        and audit.records + audit.dead == n
    )
    if not ok:
        console.print("[red]demo failed: see the figures above[/]")
    return 0 if ok else 1
