"""What must hold after a load run, read back from Redis (no Locust here: the tests and
``onestock loadtest`` import this without Locust's gevent monkey-patching)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from onestock.domain.types import Catalog, FulfilmentRecord
from onestock.ops import services as ops
from onestock.ops.metrics import Figures, Reader, quantile
from state import keys
from state.store import Store

ACKED = keys.LOADTEST_ACKED  # SET of order ids the intake acknowledged (202 or 200)
ACKED_DEAD = keys.LOADTEST_ACKED_DEAD  # acknowledged events that can only be dead letters


class Check(msgspec.Struct):
    name: str
    ok: bool
    detail: str


class Verdict(msgspec.Struct):
    scenario: str
    passed: bool
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    checks: list[Check]


@dataclass
class Outcome:
    """What the pipeline made of the run, for the scenario's own checks."""

    figures: Figures
    records: dict[str, FulfilmentRecord]
    acked: set[str]
    catalog: Catalog | None


@dataclass
class Scenario:
    """A scenario file's description: its catalog and rate, and what must hold after it."""

    name: str
    catalog: Callable[[], Catalog]
    rate: Callable[[float, Any], float]  # orders/s at t seconds into the run, all users
    default_rate: float = 200.0
    default_seconds: int = 30
    checks: Callable[[Outcome], list[Check]] = field(default=lambda _o: [])


def _wait_drained(store: Store, timeout: float) -> tuple[Figures, set[str], bool]:
    """Until nothing is waiting (backlog, held records) and every acked id has a decision."""
    reader = Reader(store)
    time.sleep(1.2)  # the intake processes add their counts to Redis every second
    deadline = time.monotonic() + timeout
    before = -1
    while True:
        f = reader.read()
        acked = {m.decode() for m in store.r.smembers(ACKED)}  # type: ignore[union-attr]
        # (in a distributed run the workers' users add their acks as they stop: wait for
        # the set to stop growing too)
        quiet = sum(f.backlog) == 0 and f.held == 0 and f.decided >= len(acked) == before
        if quiet or time.monotonic() > deadline:
            return f, acked, quiet
        before = len(acked)
        time.sleep(0.5)


def invariants(scenario: Scenario, store: Store, timeout: float) -> list[Check]:
    f, acked, quiet = _wait_drained(store, timeout)
    p50, p99 = (quantile(q, f.received) for q in (0.5, 0.99))
    checks = [Check(
        "pipeline drained", quiet,
        f"backlog {sum(f.backlog)}, held {f.held}, {f.decided:,} decided; received -> decided "
        f"p50 {_ms(p50)}, p99 {_ms(p99)} (bucket-interpolated)",
    )]  # fmt: skip
    checks.append(Check("nothing oversold", f.oversold == 0, f"{f.oversold} units"))
    for c in f.campaigns:
        checks.append(Check(f"gifts of {c.id} <= first_n", c.awarded <= c.first_n,
                            f"{c.awarded:,} awarded, first_n {c.first_n:,}"))  # fmt: skip
    k = f.shards
    final: dict[str, FulfilmentRecord] = {}
    for rec in ops.records(store, k):
        final[rec.order_id] = rec
    audit_dups = ops.audit(store, k, {}).duplicates if k else 0
    missing = [oid for oid in acked if oid not in final]
    checks.append(Check(
        "every acked order has exactly one outcome", not missing and audit_dups == 0,
        f"{len(acked):,} acked, {len(missing):,} without a record"
        + (f" (e.g. {missing[0]})" if missing else "") + f", {audit_dups} duplicate records",
    ))  # fmt: skip
    dead_acked = int(store.r.get(ACKED_DEAD) or 0)
    checks.append(Check(
        "acked events without an order id are dead letters",
        f.dead >= dead_acked, f"{dead_acked} acked, {f.dead} dead letters",
    ))  # fmt: skip
    _, cat = store.catalog()
    checks += scenario.checks(Outcome(f, final, acked, cat))
    return checks


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"
