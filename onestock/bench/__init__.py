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
- **dataflow with every order accepted** (unless ``--no-accepted``): 1000 x the stock
  (``burst.accepted_catalog``), where the demo burst is mostly refused once its hot SKU
  sells out: what an accepted order costs; and with **every order refused** (no stock,
  ``burst.refused_catalog``): what a refused order costs, most of it refused on a read.
- **what an order costs**: for the last core run and those two runs, Redis's own CPU
  (``INFO cpu``) and time in Lua scripts (``INFO commandstats``; the largest other commands
  shown, which in Redis 6.2 include those the scripts call)
  and the dataflow's processes' CPU (``getrusage`` of the finished children: ``onestock
  run``, its workers, the feed), each per order, less what a drain of the first 2,000
  orders cost (the processes' start and other fixed costs): figures that hold on a shared,
  noisy machine where rates do not.
- **dataflow with a first-N campaign** (unless ``--no-gifts``): a gift for the first 10,000
  buyers of the hot SKU (``burst.campaign_catalog``, lateness 2 s): what settlement costs in
  drain rate and in fulfilment latency (record written - event received).

The ratios dataflow / bare and rules / core are what to watch on a shared, noisy machine;
``--repeat N`` alternates the bare loop, the dataflow and (unless ``--no-rules``) the dataflow
with every rule on N times and reports their medians (the rules / core ratio is the median of
each rules run against the core run just before it).
Every run must end each event exactly once (records + dead letters = events) or the bench
fails.

The package: ``measure`` (the runs, against a scratch Redis), ``summary`` (the figures from
the runs: medians, ratios), ``render`` (the printed tables, the JSON of ``--out``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from onestock.bench import render
from onestock.bench.measure import (
    Run,
    ScalePoint,
    burst_lines,
    check_outcomes,
    measure_bench,
    measure_scale,
)
from onestock.bench.summary import Figures, summarise

__all__ = ["Figures", "Run", "ScalePoint", "check_outcomes", "run_bench", "run_scale"]


def run_bench(
    n: int,
    workers: int,
    out: Path | None,
    rules: bool = True,
    gifts: bool = True,
    repeat: int = 1,
    accepted: bool = True,
) -> Figures:
    """``repeat`` alternations of the bare loop and the dataflow (their medians are the
    figures: on a shared machine a single pair can land in a slow minute), then the rules and
    the campaign once each."""
    console = Console()
    console.print(f"generating {n:,} orders ...")
    lines = burst_lines(n)
    figs = summarise(measure_bench(lines, workers, rules, gifts, repeat, console, accepted))
    console.print(render.bench_table(figs))
    if out is not None:
        render.write_json(out, figs)
    return figs


def run_scale(
    n: int, workers: list[int], masters: list[int], out: Path | None, buckets: Sequence[int] = (1,)
) -> list[ScalePoint]:
    """``onestock bench-scale``: the same N orders drained with each number of dataflow
    processes against each Redis (one server, or a local cluster of M masters), and with the
    hot SKU in each number of hot-SKU buckets, in one invocation. On a 2-core machine
    everything past two busy processes shares the cores: the table shows where this machine
    stops scaling, not where the design does."""
    console = Console()
    console.print(f"generating {n:,} orders ...")
    points = measure_scale(burst_lines(n), workers, masters, buckets, console)
    # (eight columns: wider than a pipe's 80, so that no heading is cut)
    Console(width=max(100, console.width)).print(render.scale_table(n, points))
    if out is not None:
        render.write_json(out, points)
    return points
