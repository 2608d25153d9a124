"""Poison quarantine: an event that makes deciding raise ends as a dead letter, not a crash.

``Decider.process`` never raises for bad input by design (decoding classifies every event,
and every text is validated before it reaches Redis); this is the net under that design. A
batch whose processing raises anything but "Redis is away" is split in halves and each half
processed again, down to the single event that raises: that event becomes a dead letter
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
    second = process(decider, shard, entries[mid:], say)
    if first.records and second.gen not in (-1, first.gen):
        # the halves write in different generations (state/gens.py): the first is written
        # now, without moving the watermark, as Decider._segmented writes a batch's parts
        decider.emit(Decided(shard, "-", first.records, first.dead, first.meter, first.gen))
        return second
    return merge(first, second)


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


def merge(a: Decided, b: Decided) -> Decided:
    """Two consecutive parts of one batch as one (``b`` after ``a``), written in one
    generation (``a``'s records are in ``b``'s, or ``b`` has none)."""
    meter = None
    if a.meter is not None or b.meter is not None:
        zero: tuple[int, int, int, int, list[str]] = (0, 0, 0, 0, [])
        ma, mb = a.meter or zero, b.meter or zero
        if a.meter is None:
            ma = (0, 0, 0, 0, [""] * (len(a.records) // 3))
        if b.meter is None:
            mb = (0, 0, 0, 0, [""] * (len(b.records) // 3))
        meter = (ma[0] + mb[0], ma[1] + mb[1], ma[2] + mb[2], ma[3] + mb[3], ma[4] + mb[4])
    last = b.last_id if b.last_id != "0-0" else a.last_id
    gen = b.gen if b.gen != -1 else a.gen
    return Decided(a.shard, last, a.records + b.records, a.dead + b.dead, meter, gen)
