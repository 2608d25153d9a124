"""What keeps the state of a long run bounded (docs/memory.md), called by ``Decider`` after a
batch every ``SWEEP_S`` (``BEHIND_S`` while the fold is behind): delete the generations of
idempotency state no shard can reach any more (state/gens.py), and where anything reads the
output streams (a consumer group, a record subscriber) fold the new records, trim what
every reader is past and settle the orders no version can come for any more
(state/ledger.py). Each process looks; one at a time does the records' part, under a lease
(folding twice would be safe, only wasted)."""

from __future__ import annotations

import math
import os
import time

from onestock.domain import events
from onestock.domain.errors import OnestockError
from state import outbox
from state.conn import Waiter
from state.ledger import LEASE_MS
from state.store import Store

SWEEP_S = min(10.0, events.WINDOW_MS / 4000)
# ONESTOCK_TRIM_RECORDS=0: keep every record in the streams even where readers are past them
TRIM = os.environ.get("ONESTOCK_TRIM_RECORDS", "1").strip() != "0"
# Folding and settling take at most FOLD_BUDGET_S of a look (a batch waits no longer behind
# them); while either is behind, the next look comes after BEHIND_S: at a peak the fold falls
# behind and catches up after, the streams holding the difference meanwhile.
FOLD_BUDGET_S = 0.2
BEHIND_S = 1.0


class Housekeeper:
    def __init__(self, store: Store, wait: Waiter) -> None:
        self.store = store
        self.wait = wait
        self.holder = f"{os.getpid()}-{id(self)}"
        self._next = 0.0  # when this process looks next (time.monotonic())
        self._shard = 0  # the shard the next fold starts at (round robin)
        self._refused = ""  # why folding was refused, as last said
        self._subs: tuple[int, list[str]] = (-1, [])  # (catalog version, record subscribers)

    def look(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next and not force:
            return
        shards = self.wait.call(self.store.shards.shard_count)
        n = self.wait.call(self.store.sweeper.sweep, shards)
        if n:
            self.wait.say(f"idempotency state: {n} keys of generations past the window deleted")
        try:
            behind = self.wait.call(self._records, shards, math.inf if force else FOLD_BUDGET_S)
        except OnestockError as exc:  # (another window: said once, nothing folded)
            if str(exc) != self._refused:
                self.wait.say(f"records: {exc}")
                self._refused = str(exc)
            behind = False
        self._next = time.monotonic() + (BEHIND_S if behind else SWEEP_S)

    def _subscribers(self) -> list[str]:
        """The catalog's record subscribers' ids (read again when its version moves)."""
        version = self.store.catalog_version()
        if version != self._subs[0]:
            _, cat = self.store.catalog()
            self._subs = (version, [s.id for s in cat.record_subscribers] if cat else [])
        return self._subs[1]

    def _records(self, shards: int, budget_s: float) -> bool:
        """Fold (for ``budget_s`` at most), trim, settle, where anything reads the records,
        under the lease (no other process is doing it now; one killed while holding it
        holds the others up a minute); whether the fold is still behind."""
        store = self.store
        if not TRIM:
            return False
        points = outbox.trim_points(store.r, shards, self._subscribers())
        if all(p is None for p in points):
            return False  # nothing reads them: the streams are the records' only copy
        if not store.ledger.lease(self.holder, LEASE_MS):
            return False
        try:
            until = time.monotonic() + budget_s
            behind = self._fold(shards, until)
            for shard, point in enumerate(points):
                if point is not None:
                    store.ledger.trim(shard, point)
            return store.ledger.settle(shards, until) or behind
        finally:
            store.ledger.release(self.holder)

    def _fold(self, shards: int, until: float) -> bool:
        """Fold chunks of the shards in turn until each is folded to its end or the time is
        up; whether any is still behind."""
        done: set[int] = set()
        while len(done) < shards:
            if time.monotonic() >= until:
                return True
            shard = self._shard
            self._shard = (shard + 1) % shards
            if shard not in done and not self.store.ledger.fold_chunk(shard):
                done.add(shard)
        return False
