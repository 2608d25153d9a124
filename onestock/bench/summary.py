"""Summarising: the figures of ``onestock bench`` from its runs. The core pair's figures are
the medians of the alternations (the rules / core ratio: the median of each rules run against
the core run just before it); the campaign run and the script figures are measured once (the
script figures over every core run)."""

from __future__ import annotations

import statistics

import msgspec

from onestock.bench.measure import Cost, Measured, Run, per_s


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
    # per order, less a small drain's (measure.Cost): the last core run, every order accepted
    core_cost: Cost | None = None
    accepted_drain_orders_per_s: float | None = None
    accepted_cost: Cost | None = None
    refused_cost: Cost | None = None


def _median(values: list[float]) -> float | None:
    """The median, or None when no run measured it (--no-rules)."""
    return statistics.median(values) if values else None


def summarise(m: Measured) -> Figures:
    """The figures of the runs ``m`` holds."""
    runs = m.runs
    drain = statistics.median(r.dataflow_drain_orders_per_s for r in runs)
    rules_rates = [r.rules_drain_orders_per_s for r in runs if r.rules_drain_orders_per_s]
    rules_ratios = [r.rules_ratio for r in runs if r.rules_ratio is not None]
    gifts_drain = per_s(m.orders, m.gifts_drain_s) if m.gifts_drain_s is not None else None
    return Figures(
        orders=m.orders, workers=m.workers,
        bare_orders_per_s=statistics.median(r.bare_orders_per_s for r in runs),
        dataflow_orders_per_s=statistics.median(r.dataflow_orders_per_s for r in runs),
        dataflow_drain_orders_per_s=drain,
        ratio=statistics.median(r.ratio for r in runs),
        rules_drain_orders_per_s=_median(rules_rates),
        rules_ratio=_median(rules_ratios),
        gifts_drain_orders_per_s=gifts_drain,
        gifts_ratio=gifts_drain / drain if gifts_drain is not None else None,
        core_fulfilment_ms=m.core_latency, gifts_fulfilment_ms=m.gifts_latency,
        memory_growth_mb=m.memory_growth_mb, script_calls=m.script_calls,
        script_avg_us=m.script_usec / m.script_calls if m.script_calls else 0.0,
        script_calls_over_5ms=m.script_slow, script_slowest_ms=m.script_slowest_ms, runs=runs,
        core_cost=m.core_cost, accepted_cost=m.accepted_cost, refused_cost=m.refused_cost,
        accepted_drain_orders_per_s=(
            per_s(m.orders, m.accepted_drain_s) if m.accepted_drain_s is not None else None),
    )  # fmt: skip
