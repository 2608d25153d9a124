"""The availability change feed's publisher (docs/availability.md "The change feed").

Every status change of a (SKU, channel) — ``in_stock``, ``low_stock``, ``sold_out`` and
back, as ``onestock.ops.availability`` judges it — becomes one transition on the feed
(``state.feed``), once, in order. One publisher at a time holds the feed's lease (any number
may run: ``onestock run`` starts one beside its workers); it judges again:

- the SKUs the deciders marked (``Decider.emit`` marks the SKUs its scripts touched, before
  the batch's records are written, so a crash replays the mark too),
- every SKU when it takes the lease, when the catalog changes, and every ``sweep_s`` (what
  a crash of the publisher itself could have missed),
- the SKUs with channel locks when a lock ends (a lock's end changes what the other
  channels may sell without any script running).

Judging reads the stock now and compares each (SKU, channel)'s status with the one last
published; ``feed_publish.lua`` writes the changes, fenced by the lease, so a publisher that
stalled past its lease never writes behind the next one. Statuses are judged one read after
another by one publisher: the feed follows the stock in time order. A change that is undone
before the publisher reads it (sold out for a millisecond, then a cancel gives a unit back)
is not a transition: the feed carries what a reader of the stock could observe, at most
``ROUND_S`` plus one read apart.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

from onestock.domain.records import iso_ms
from onestock.ops import availability
from onestock.ops.availability import AvailabilityError, Model
from state.feed import Transition
from state.store import Store

# A round every this often: the SKUs marked meanwhile are judged together (one read), so a
# burst costs a round per interval, not one per batch; a transition waits half of it on
# average (docs/performance.md: the propagation figures).
ROUND_S = 0.02
SWEEP_S = 5.0  # every SKU judged again this often
RENEW_S = 1.0  # the lease renewed this often (it lasts state.feed.LEASE_MS)
CHUNK = 2000  # SKUs read per round trip


class Publisher:
    def __init__(
        self, store: Store, say: Callable[[str], None] = print, sweep_s: float = SWEEP_S
    ) -> None:
        self.store = store
        self.say = say
        self.sweep_s = sweep_s
        self.token: str | None = None
        self.renewed = 0.0
        self.model: Model | None = None
        self.published: dict[tuple[str, str], str] = {}  # the status last published
        self.next_sweep = 0.0
        self.lock_ends: list[int] = []  # the catalog's lock ends still ahead (epoch ms)
        self.locked: list[str] = []  # the SKUs with channel locks

    def step(self) -> int:
        """One round: keep the lease, judge what is due, publish the changes. The number of
        transitions published; -1 when another publisher holds the lease."""
        if not self._lead():
            return -1
        model = self._model()
        if model is None:
            return 0
        due = self._due(model)
        if not due:
            return 0
        now = int(time.time() * 1000)
        judged: list[tuple[str, str, str, int]] = []
        for i in range(0, len(due), CHUNK):
            judged += self._judge(model, due[i : i + CHUNK], now)
        if not judged:
            return 0
        assert self.token is not None
        n = self.store.feed.publish(self.token, now, judged)
        if n < 0:  # the lease moved on: the next holder judges everything
            self.token = None
            return -1
        for sku, channel, status, _ in judged:
            self.published[(sku, channel)] = status
        return n

    def run(self, stop: threading.Event, round_s: float = ROUND_S) -> None:
        """Publish until ``stop`` is set; then one last round, and the lease given back."""
        while not stop.is_set():
            due = time.monotonic() + round_s
            self.step()
            stop.wait(max(0.0, due - time.monotonic()))
        self.step()
        if self.token is not None:
            self.store.feed.release(self.token)

    # -- helpers ---------------------------------------------------------------------------

    def _lead(self) -> bool:
        """Take or renew the lease; on taking it, read what was published and sweep."""
        t = time.monotonic()
        if self.token is None or t - self.renewed >= RENEW_S:
            token = self.store.feed.lease(self.token)
            if token is not None and token != self.token:
                self.published = self.store.feed.published()
                self.next_sweep = 0.0
            self.token, self.renewed = token, t
        return self.token is not None

    def _model(self) -> Model | None:
        version = self.store.catalog_version()
        if self.model is None or self.model.version != version:
            try:
                self.model = availability.model_of(self.store)
            except AvailabilityError:  # no catalog yet
                return None
            _, cat = self.store.catalog()
            now = int(time.time() * 1000)
            ends = {
                int(lk.until.timestamp() * 1000) for s in (cat.skus if cat else [])
                for lk in s.channel_locks
            }  # fmt: skip
            self.lock_ends = sorted(e for e in ends if e > now)
            self.locked = [s.sku for s in (cat.skus if cat else []) if s.channel_locks]
            self.next_sweep = 0.0
        return self.model

    def _due(self, model: Model) -> list[str]:
        """The SKUs to judge now."""
        due: set[str] = self.store.feed.take()
        t = time.monotonic()
        if t >= self.next_sweep:
            self.next_sweep = t + self.sweep_s
            return model.skus
        now = int(time.time() * 1000)
        passed = bisect.bisect_right(self.lock_ends, now)
        if passed:
            del self.lock_ends[:passed]
            due.update(self.locked)
        return model.known(due)

    def _judge(self, model: Model, skus: list[str], now: int) -> list[tuple[str, str, str, int]]:
        """(SKU, channel, status, available) of each pair whose status changed."""
        stocks: dict[str, Any] = availability.read_stocks(self.store, model, skus)
        out = []
        last = self.published
        for sku in skus:
            st = stocks.get(sku)
            if st is None:  # not in Redis (a catalog load on its way)
                continue
            low = model.low[sku]
            for channel, online in model.channels:
                n = availability.available(st, channel, online, now)
                status = availability.status(n, low)
                if last.get((sku, channel)) != status:
                    out.append((sku, channel, status, n))
        return out


def transition_json(t: Transition) -> bytes:
    """The contract's transition: ``{"seq", "sku", "channel", "status", "available", "at"}``."""
    return orjson.dumps(
        {"seq": t.seq, "sku": t.sku, "channel": t.channel, "status": t.status,
         "available": t.available, "at": iso_ms(t.at_ms)}
    )  # fmt: skip


def follow(
    store: Store,
    out: IO[bytes],
    after: int | None = None,
    stop: Callable[[], bool] = lambda: False,
    keep: Callable[[Transition], bool] = lambda _t: True,
) -> None:
    """Write the transitions after seq ``after`` (None: from now on) that ``keep`` keeps as
    JSON Lines, as they happen, until ``stop()``."""
    seq = store.feed.last_seq() if after is None else after
    while not stop():
        for t in store.feed.after(seq, count=1000, block_ms=500):
            if keep(t):
                out.write(transition_json(t) + b"\n")
            seq = t.seq
        out.flush()
