"""The input: a FixedPartitionedSource over the K input stream shards.

Each partition reads one shard with XRANGE after the last id it returned, which is also its
snapshot, so a resume re-reads exactly what came after the last committed snapshot. It never
blocks: a caught-up shard returns an empty batch and asks to be woken a little later. The
trimming of consumed entries happens in ``emit.lua`` behind the durable outputs, so a resume
from any older snapshot never finds a hole where an undecided event used to be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from state.conn import TRANSIENT, parse_id
from state.store import Store

# Set by the worker's SIGTERM/SIGINT handler: partitions end, in-flight batches finish.
STOP = threading.Event()
STARTED = threading.Event()  # this process's partitions are built: the dataflow runs

Batch = tuple[int, list[tuple[str, bytes]]]  # (shard, [(entry id, raw event), ...])
TICK_S = 0.1  # a caught-up shard still sends an empty batch this often (gift settlement)
BUSY_WAIT = timedelta(milliseconds=1)  # a shard whose last batch is not written yet: ask again


class _ShardPartition(StatefulSourcePartition[Batch, str]):
    def __init__(self, src: ShardSource, shard: int, resume: str | None) -> None:
        self.src = src
        self.shard = shard
        self.last = resume or "0-0"
        self.awake: datetime | None = None
        self.waiting = False
        self.ticked = 0.0
        # The last batch handed out, until the decider wrote its outcomes: a shard's next
        # batch is read only then, so every event meets the outcomes of the batches before
        # it (decided ahead of its sink, a payment, return, cancel, fulfilment or changed
        # copy of an order whose batch was not written yet found no order). Bytewax 0.21.1
        # with one worker per process happens to keep to this; here it is enforced.
        self.unwritten: tuple[int, int] | None = None

    def next_batch(self) -> list[Batch]:
        if STOP.is_set():
            raise StopIteration
        src = self.src
        if self.unwritten is not None:  # the batch handed out last: are its outcomes written?
            if src.written(self.shard) < self.unwritten:
                self.awake = datetime.now(UTC) + BUSY_WAIT
                return []
            self.unwritten = None
        try:
            rows = src.store.shards.read(self.shard, self.last, src.batch_size)
            if not rows and src.until_drained and src.store.shards.drained(self.shard, self.last):
                src.store.campaigns.finished(self.shard)  # (first-N: it holds nothing back)
                raise StopIteration
        except TRANSIENT as exc:
            if not self.waiting:
                src.say(f"shard {self.shard}: Redis is unreachable ({exc}); waiting")
                self.waiting = True
            self.awake = datetime.now(UTC) + timedelta(milliseconds=250)
            return []
        if self.waiting:
            src.say(f"shard {self.shard}: Redis is back; reading on")
            self.waiting = False
        if not rows:
            self.awake = datetime.now(UTC) + src.poll
            now = time.monotonic()
            if now - self.ticked >= TICK_S:  # the decide step settles gifts on it
                self.ticked = now
                return [(self.shard, [])]
            return []
        self.awake = None
        self.last = rows[-1][0]
        self.unwritten = parse_id(self.last)
        return [(self.shard, rows)]

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> str:
        return self.last


class ShardSource(FixedPartitionedSource[Batch, str]):
    def __init__(
        self,
        store_factory: Callable[[], Store],
        shards: int,
        written: Callable[[int], tuple[int, int]],
        *,
        batch_size: int = 500,
        poll_ms: int = 20,
        until_drained: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.store_factory = store_factory
        # the last entry id of a shard whose outcomes are written (``Decider.written``)
        self.written = written
        self.shards = shards
        self.batch_size = batch_size
        self.poll = timedelta(milliseconds=poll_ms)
        self.until_drained = until_drained
        self.say = say
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self.store_factory()
        return self._store

    def list_parts(self) -> list[str]:
        return [str(s) for s in range(self.shards)]

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _ShardPartition:
        STARTED.set()
        # Resume from the snapshot; with none (a new recovery directory over an old dataset),
        # from the shard's watermark: everything up to it already has its outcome.
        shard = int(for_part)
        mark = self.store.shards.watermark(shard) or "0-0"
        if resume_state is not None and parse_id(resume_state) < parse_id(mark):
            mark = resume_state
        return _ShardPartition(self, shard, mark)
