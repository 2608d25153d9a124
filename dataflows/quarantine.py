"""Poison quarantine: an event that makes deciding raise ends as a dead letter, not a crash.

``Decider.process`` never raises for bad input by design (decoding classifies every event,
and every text is validated before it reaches Redis); this is the net under that design. A
batch whose processing raises anything but "Redis is away" is split in halves and each half
processed again and written in turn (the second half's events meet the first's outcomes, as
in any batch), down to the single event that raises: that event becomes a dead letter
with the exception as its reason (said once on stderr), and every other event of the batch
gets its usual outcome. Processing again is safe: the decide mark has moved past the batch,
so every order goes to the scripts, which answer a replay with its stored outcome. The
culprit may have been decided before it raised, with no record: the shard says so
(``Decider.quarantined``), so that for two generations a later copy of it, whatever batch it
comes in, goes to the scripts too and finds that decision.

Since the culprit is quarantined in the same step, the same event cannot stop the dataflow
again on the next start: a crash loop on restart is impossible by construction.
"""

from __future__ import annotations

from collections.abc import Callable

from dataflows.decider import Decided, Decider
from onestock.domain.events import text_of
from state.conn import TRANSIENT


def process(
    decider: Decider, shard: int, entries: list[tuple[str, bytes]], say: Callable[[str], None]
) -> Decided:
    """``decider.process(shard, entries)``, with every event that raises quarantined."""
    try:
        return decider.process(shard, entries)
    except TRANSIENT:
        raise  # Redis is away and the worker is stopping: the next start decides the batch
    except Exception as exc:  # noqa: BLE001 - any other failure is the batch's, not the flow's
        if len(entries) <= 1:
            decider.quarantined(shard)
            return _quarantined(shard, entries, exc, say, decider.store.gen.now)
    mid = len(entries) // 2
    first = process(decider, shard, entries[:mid], say)
    # written before the second half is decided, as Decider._segmented writes a batch's parts
    # (an event of the second half meets the outcomes of the first: a payment its order), in
    # the first half's generation, without moving the watermark (the second half's last does)
    decider.emit(Decided(shard, "-", first.records, first.dead, first.meter, first.gen))
    return process(decider, shard, entries[mid:], say)


def _quarantined(
    shard: int,
    entries: list[tuple[str, bytes]],
    exc: Exception,
    say: Callable[[str], None],
    gen: int,
) -> Decided:
    if not entries:
        return Decided(shard, "0-0", [], [])
    eid, raw = entries[0]
    why = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
    say(f"shard {shard}: entry {eid} made deciding raise ({why}): quarantined as a dead letter")
    dead = [[eid, text_of(raw), f"quarantined: deciding it raised {why}"]]
    return Decided(shard, eid, [], dead, gen=gen)
