"""Rendering: the tables ``onestock bench`` and ``onestock bench-scale`` print, and their
figures as JSON (``--out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from onestock.bench.measure import SLOW_US, Run, ScalePoint
from onestock.bench.summary import Figures


def write_json(out: Path, figures: Any) -> None:
    out.write_bytes(msgspec.json.format(msgspec.json.encode(figures)))


def _run_rows(table: Table, runs: list[Run]) -> None:
    """Each alternation's rates (shown when there are several)."""
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


def _core_rows(table: Table, figs: Figures, median: str) -> None:
    """The bare loop, the dataflow and (unless --no-rules) every rule on."""
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


def _gifts_rows(table: Table, figs: Figures) -> None:
    """The first-N campaign (unless --no-gifts): its drain and the fulfilment latency."""
    if figs.gifts_drain_orders_per_s is None or figs.gifts_fulfilment_ms is None:
        return
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


NOISY_BELOW = 20_000  # orders: the per-order costs below are start-up noise in a small run


def _cost_rows(table: Table, figs: Figures) -> None:
    """Redis's and the dataflow's time per order (less a small drain's): the core burst and,
    unless --no-accepted, a burst with every order accepted and one with every order
    refused."""
    if figs.accepted_drain_orders_per_s is not None:
        table.add_row(
            "dataflow, every order accepted, orders/s (first to last decision)",
            f"{figs.accepted_drain_orders_per_s:,.0f}",
        )
    runs = [(name, c) for name, c in (("core", figs.core_cost), ("all accepted",
            figs.accepted_cost), ("all refused", figs.refused_cost)) if c is not None]  # fmt: skip
    if not runs:
        return
    names = " / ".join(name for name, _ in runs)
    if figs.orders < NOISY_BELOW:
        table.add_row(f"(per-order costs: noise below {NOISY_BELOW:,} orders)", "")
    table.add_row(f"Redis CPU per order, us: {names}",
                  " / ".join(f"{c.redis_cpu_us:.1f}" for _, c in runs))  # fmt: skip
    table.add_row(f"Redis time in Lua scripts per order, us: {names}",
                  " / ".join(f"{c.scripts_us:.1f}" for _, c in runs))  # fmt: skip
    for name, c in runs:
        table.add_row(f"  {name}: other commands (also inside scripts), us per order",
                      ", ".join(f"{cmd} {us:.1f}" for cmd, us in c.commands))  # fmt: skip
    table.add_row(f"dataflow processes' CPU per order, us: {names}",
                  " / ".join(f"{c.python_us:.1f}" for _, c in runs))  # fmt: skip


def bench_table(figs: Figures) -> Table:
    """The table of ``onestock bench``: each run (of several), then the figures, medians
    marked as such."""
    several = len(figs.runs) > 1
    median = " (median)" if several else ""
    table = Table(title=f"onestock bench: {figs.orders:,} orders, {figs.workers} workers")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if several:
        _run_rows(table, figs.runs)
    _core_rows(table, figs, median)
    _gifts_rows(table, figs)
    _cost_rows(table, figs)
    table.add_row("Redis memory growth, MB", f"{figs.memory_growth_mb:,.1f}")
    table.add_row("Lua calls, mean us", f"{figs.script_calls:,} x {figs.script_avg_us:,.0f}")
    table.add_row(
        f"Lua calls over {SLOW_US // 1000} ms (slowest ms)",
        f"{figs.script_calls_over_5ms} ({figs.script_slowest_ms:.1f})",
    )
    return table


def scale_table(n: int, points: list[ScalePoint]) -> Table:
    """The table of ``onestock bench-scale``: one row per Redis, buckets and workers."""
    table = Table(title=f"onestock bench-scale: {n:,} orders drained")
    # start: `onestock run` launched -> its first decision
    cols = ("Redis masters", "hot-SKU buckets", "dataflow workers", "orders/s", "per worker",
            "efficiency", "busiest master", "start, s")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(str(p.masters), str(p.buckets), str(p.workers), f"{p.orders_per_s:,.0f}",
                      f"{p.per_worker:,.0f}", f"{p.efficiency:.2f}",
                      f"{p.busiest_master:.0%}", f"{p.start_s:.2f}")  # fmt: skip
    return table
