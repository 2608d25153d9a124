"""What keeps the state of a long run bounded (docs/memory.md), called by ``Decider`` after a
batch, at most every ``SWEEP_S``: delete the generations of idempotency state no shard can
reach any more (state/gens.py), and where anything reads the output streams (a consumer
group, a record subscriber) fold the new records, trim what every reader is past and settle
the orders no version can come for any more (state/ledger.py). Each process looks; one
holds the lease for the records' part at a time (folding twice would be safe, only wasted)."""

from __future__ import annotations

import os
import time

from onestock.domain import events
from state import outbox
from state.conn import Waiter
from state.store import Store

SWEEP_S = min(10.0, events.WINDOW_MS / 4000)
# records folded per shard and look: at a peak the fold falls behind and catches up after
# (a batch is not held up by more than one chunk's folding)
FOLD_PER_LOOK = 20_000
LEASE_MS = 60_000


class Housekeeper:
    def __init__(self, store: Store, wait: Waiter) -> None:
        self.store = store
        self.wait = wait
        self.holder = f"{os.getpid()}-{id(self)}"
        self._looked = -SWEEP_S  # when this process last looked

    def look(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._looked < SWEEP_S and not force:
            return
        self._looked = now
        shards = self.wait.call(self.store.shards.shard_count)
        n = self.wait.call(self.store.sweeper.sweep, shards)
        if n:
            self.wait.say(f"idempotency state: {n} keys of generations past the window deleted")
        self.wait.call(self._records, shards)

    def _records(self, shards: int) -> None:
        """Fold, trim, settle, where anything reads the records, under the lease (no other
        process is doing it now; one killed while holding it holds up the others a minute)."""
        store = self.store
        _, cat = store.catalog()
        subs = [s.id for s in cat.record_subscribers] if cat else []
        points = outbox.trim_points(store.r, shards, subs)
        if all(p is None for p in points):
            return  # nothing reads them: the streams are the records' only copy
        if not store.ledger.lease(self.holder, LEASE_MS):
            return
        try:
            for shard, point in enumerate(points):
                store.ledger.fold_all(shard, FOLD_PER_LOOK)
                if point is not None:
                    store.ledger.trim(shard, point)
            store.ledger.settle(shards)
        finally:
            store.ledger.release(self.holder)
