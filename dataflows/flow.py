"""The onestock dataflow: read shard batches -> decide them in Lua -> emit outcomes.

Records and dead letters of a batch are written by one ``emit.lua`` call on the shard's hash
slot: exactly once (registry of order ids), and with the shard's trim watermark in the same
atomic step. That single atomic write is why dead letters are not a separate ``op.branch``
sink here: two sinks would need two watermarks and could trim behind each other's back.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.decider import Decided, Decider
from dataflows.source import STOP, ShardSource
from onestock.settings import Settings
from state.store import Store


def _say(msg: str) -> None:
    print(f"onestock: {msg}", file=sys.stderr, flush=True)


class _EmitPartition(StatelessSinkPartition[Decided]):
    def __init__(self, decider: Callable[[], Decider]) -> None:
        self.decider = decider

    def write_batch(self, items: list[Decided]) -> None:
        d = self.decider()
        for item in items:
            d.emit(item)


class EmitSink(DynamicSink[Decided]):
    def __init__(self, decider: Callable[[], Decider]) -> None:
        self.decider = decider

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EmitPartition:
        return _EmitPartition(self.decider)


def build_flow(url: str, settings: Settings, *, until_drained: bool = False) -> Dataflow:
    """The dataflow for Redis at ``url``; one Store and Decider per worker process."""

    @functools.cache
    def decider() -> Decider:
        return Decider(Store.connect(url), _say, STOP.is_set)

    source = ShardSource(
        lambda: decider().store,
        settings.shards,
        batch_size=settings.batch_size,
        poll_ms=settings.poll_ms,
        until_drained=until_drained,
        say=_say,
    )
    flow = Dataflow("onestock")
    batches = op.input("read", flow, source)
    # (shard, [(entry id, raw event), ...])
    decided = op.map("decide", batches, lambda b: decider().process(*b))
    # Decided(shard, last_id, records, dead)
    op.output("emit", decided, EmitSink(decider))
    return flow
