"""The onestock dataflow: read shard batches -> decide them in Lua -> emit outcomes.

Records and dead letters of a batch are written by one ``emit.lua`` call on the shard's hash
slot: exactly once (registry of order ids), and with the shard's trim watermark in the same
atomic step. That single atomic write is why dead letters are not a separate ``op.branch``
sink here: two sinks would need two watermarks and could trim behind each other's back.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Histogram

from dataflows import quarantine
from dataflows.decider import Decided, Decider
from dataflows.source import STOP, ShardSource
from onestock.domain.settings import Settings
from state.store import Store

# This worker process's own figures, in prometheus_client's default registry: Bytewax's
# dataflow API serves them beside its own (`onestock run --metrics-port`).
BATCH_SECONDS = Histogram(
    "onestock_worker_batch_seconds",
    "Time this worker took to decide one shard batch (decode, route, Lua calls).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_EVENTS = Counter("onestock_worker_events", "Events this worker decided.")


def _say(msg: str) -> None:
    print(f"onestock: {msg}", file=sys.stderr, flush=True)


class _EmitPartition(StatelessSinkPartition[Decided]):
    def __init__(self, decider: Callable[[], Decider]) -> None:
        self.decider = decider

    def write_batch(self, items: list[Decided]) -> None:
        d = self.decider()
        for item in items:
            d.emit(item)

    def close(self) -> None:
        """The dataflow completes (``--until-drained``): one last housekeeping look."""
        self.decider().close()


class EmitSink(DynamicSink[Decided]):
    def __init__(self, decider: Callable[[], Decider]) -> None:
        self.decider = decider

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EmitPartition:
        return _EmitPartition(self.decider)


def build_flow(url: str, settings: Settings, *, until_drained: bool = False) -> Dataflow:
    """The dataflow for Redis at ``url``; one Store and Decider per worker process."""

    @functools.cache
    def decider() -> Decider:
        return Decider(Store.connect(url), _say, STOP.is_set, sweeping=True)

    source = ShardSource(
        lambda: decider().store,
        settings.shards,
        lambda shard: decider().written(shard),
        batch_size=settings.batch_size,
        poll_ms=settings.poll_ms,
        until_drained=until_drained,
        say=_say,
    )
    flow = Dataflow("onestock")
    batches = op.input("read", flow, source)

    # (shard, [(entry id, raw event), ...])
    def decide(batch: tuple[int, list[tuple[str, bytes]]]) -> Decided:
        started = time.perf_counter()
        out = quarantine.process(decider(), batch[0], batch[1], _say)
        if batch[1]:  # (an empty batch is a caught-up shard's tick)
            BATCH_SECONDS.observe(time.perf_counter() - started)
            BATCH_EVENTS.inc(len(batch[1]))
        return out

    decided = op.map("decide", batches, decide)
    # Decided(shard, last_id, records, dead)
    op.output("emit", decided, EmitSink(decider))
    return flow
