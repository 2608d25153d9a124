"""Generations of the idempotency state (docs/memory.md): the shards' registries, the SKUs'
decision hashes and the units sold per customer live in keys of one generation each, a
window of the stream clock (``events.WINDOW_MS``) long; ``Gen`` says which one this process
writes in now. A script reads an order's state in its batch's generation, the one before
and the one after, so an event finds every event of the shard and of every SKU that came at
most a window before it (and what a step it replays, or a shard ahead, wrote a generation
up); ``sweep`` deletes a whole generation (UNLINK: one key, no per-order work) once no shard
can act before the start of the generation two after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from onestock.domain.events import WINDOW_MS
from state import keys, wire
from state.conn import Redis, lua
from state.outbox import Outbox

_SWEEP_SCAN = 1000  # keys per SCAN step
# Where generations start: at multiples of the window after the epoch, moved by this (ms).
# Only the randomized check moves it (every process of a history alike), to put a
# generation's end inside a history of a few seconds.
OFFSET_MS = int(os.environ.get("ONESTOCK_GENERATION_OFFSET_MS") or 0)


def of_ms(ms: int) -> int:
    """The generation of a stream time (epoch ms)."""
    return (ms + OFFSET_MS) // WINDOW_MS


def of_id(entry_id: str) -> int:
    """The generation of an input entry (its id's milliseconds)."""
    return of_ms(int(entry_id.partition("-")[0]))


class Gen:
    """The generation this process's scripts write in: the decider sets it before each
    part of a batch (whose entries share one generation) and before each timer tick."""

    def __init__(self) -> None:
        self.now = of_ms(int(time.time() * 1000))

    def pair(self) -> tuple[int, int]:
        """(the generation written in, the one before)."""
        return self.now, self.now - 1

    def read(self) -> tuple[int, int, int]:
        """The generations read, newest first: the one after (a shard ahead, or the crashed
        attempt of a step this one replays a generation lower, may have written there),
        the one written in, the one before."""
        return self.now + 1, self.now, self.now - 1


def registries(shard: int, gen: Gen) -> tuple[str, str, str]:
    """The shard's registry of ``gen``'s generation (written), of the one before and of the
    one after (read): scripts' KEYS in that order."""
    return (
        keys.emitted(shard, gen.now),
        keys.emitted(shard, gen.now - 1),
        keys.emitted(shard, gen.now + 1),
    )


def newer_first(*replies: list[Any]) -> list[Any]:
    """HMGET replies of generations, newest first, merged: per field the newest value."""
    n = len(replies[0])
    if any(len(r) != n for r in replies):
        raise ValueError("newer_first: replies of different lengths")
    held = [r for r in replies if r.count(None) != n]
    if len(held) < 2:  # (the usual: one generation holds the batch's fields, or none)
        return list(held[0]) if held else [None] * n
    return [next((v for v in vs if v is not None), None) for vs in zip(*held, strict=True)]


class Sweeper:
    """Deletes the generations no shard can reach any more."""

    def __init__(self, client: Redis) -> None:
        self.r = client
        self._horizon = client.register_script(lua("horizon", "lib_clock"))
        self._mark_script = client.register_script(lua("sweep_mark"))

    def horizon(self, shards: int) -> int:
        """The least stream time (ms) any shard may still act at (horizon.lua, per shard)."""
        jobs: list[tuple[Any, list[str], list[Any]]] = [
            (self._horizon, [keys.inbox(s), keys.watermark(s), keys.deadlines(s), keys.claims(s)],
             [])
            for s in range(shards)
        ]  # fmt: skip
        return min(int(ms) for ms in wire.scripts(self.r, jobs))

    def due(self, shards: int) -> int:
        """The newest generation that may be deleted now (-1: none)."""
        return of_ms(self.horizon(shards)) - 2 if shards else -1

    def sweep(self, shards: int) -> int:
        """Delete every key of every generation older than the one before the horizon's;
        the number of keys deleted. Cheap when nothing is due (one script per shard)."""
        upto = self.due(shards)
        swept = self.r.get(keys.GEN_SWEPT)
        if upto < 0 or (swept is not None and int(swept) >= upto):
            return 0
        n = 0
        batch: list[bytes] = []
        for key in self._old_keys(upto):
            batch.append(key)
            if len(batch) == _SWEEP_SCAN:
                n += self._unlink(batch)
        n += self._unlink(batch)
        self.mark(upto, shards)
        self.r.set(keys.GEN_SWEPT, upto)
        return n

    def mark(self, upto: int, shards: int) -> None:
        """Say that generations up to ``upto`` are swept, with each shard's newest output
        entry id read now (sweep_mark.lua): every version of an order of those generations
        was written at or before it (no event finds the order any more)."""
        ids = Outbox(self.r, shards).last_ids()
        self._mark_script(keys=[keys.GEN_SWEPT_OUTBOX], args=[upto, *ids])

    def _unlink(self, batch: list[bytes]) -> int:
        """UNLINK the keys (one per call: they live in many slots)."""
        if not batch:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for key in batch:
            pipe.unlink(key)
        done = sum(pipe.execute())
        batch.clear()
        return done

    def _old_keys(self, upto: int) -> Iterator[bytes]:
        """Every generation key of a generation <= ``upto`` (SCAN over every master)."""
        for family in keys.GEN_FAMILIES:
            for key in self.r.scan_iter(match=f"{keys.PREFIX}:*}}{family}*", count=_SWEEP_SCAN):
                gen = generation(key, family)
                if gen is not None and gen <= upto:
                    yield key


def generation(key: bytes, family: str) -> int | None:
    """The generation number of a key of ``family`` (None: not one of its keys)."""
    head, sep, tail = key.decode(errors="replace").rpartition(family)
    if not sep or not head.endswith("}") or not tail.isdigit():
        return None
    return int(tail)
