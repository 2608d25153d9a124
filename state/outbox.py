"""The fulfilment records' output streams (``keys.outbox``, one per input shard) read
downstream: plainly from an entry id, or by a Redis consumer group (each entry handed to one
consumer of the group and pending until it is acknowledged; a consumer's pending entries
read again after a crash, or claimed by another once idle), and how far each stream could be
trimmed.

Every stream lives in its own shard's slot: each call here names one stream (several are
pipelined, never one multi-key command), so the same code runs on a Redis Cluster. What an
entry holds (field ``v``: packed records joined by RS; ``n``: how many) is ``emit.lua``'s;
what a record is, ``onestock.domain.records``'.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

from onestock.domain.protocol import SEP
from state import keys
from state.conn import Redis, lua, parse_id

START = "0-0"  # a group or a read from the first entry on


class Entry(NamedTuple):
    """One output stream entry (one decided batch of records)."""

    shard: int
    id: str
    fields: dict[bytes, bytes]  # {} for an entry deleted while it was pending


class GroupState(NamedTuple):
    """A consumer group on one shard's stream (``XINFO GROUPS``, ``XPENDING``)."""

    name: str
    consumers: int
    pending: int
    first_pending: str | None  # the oldest entry not yet acknowledged by the consumer it went to
    last_delivered: str  # entries after it were handed to no consumer yet


class Outbox:
    """The K output streams (``keys.outbox(0..K-1)``)."""

    def __init__(self, client: Redis, shards: int) -> None:
        self.r = client
        self.k = shards
        self.keys = [keys.outbox(s) for s in range(shards)]
        self._forget = client.register_script(lua("outbox_forget"))

    def _each(self, call: Any, shards: Iterable[int] | None = None) -> list[Any]:
        """``call(pipe, shard, key)`` for every shard (or those given), one round trip (a
        cluster pipeline sends each to its slot's node); the answers in that order."""
        pipe = self.r.pipeline(transaction=False)
        for s in range(self.k) if shards is None else shards:
            call(pipe, s, self.keys[s])
        return list(pipe.execute(raise_on_error=False))

    # -- plain reads -----------------------------------------------------------------------

    def last_ids(self) -> list[str]:
        """Each stream's newest entry id (``START`` for an empty one): "from now on"."""
        got = self._each(lambda p, _s, key: p.xrevrange(key, "+", "-", count=1))
        return [rows[0][0].decode() if rows else START for rows in _checked(got)]

    def read(self, after: list[str], count: int) -> list[Entry]:
        """Up to ``count`` entries of each stream after ``after[shard]`` (no waiting)."""
        got = self._each(lambda p, s, key: p.xrange(key, min=f"({after[s]}", count=count))
        return [
            Entry(s, eid.decode(), f) for s, rows in enumerate(_checked(got)) for eid, f in rows
        ]

    # -- consumer groups -------------------------------------------------------------------

    def create_group(self, group: str, start: list[str]) -> list[bool]:
        """Create ``group`` on every stream (and the stream, when it has no entry yet),
        starting after ``start[shard]``; per shard, whether it was created (False: it
        exists, and keeps its position)."""
        got = self._each(lambda p, s, key: p.xgroup_create(key, group, start[s], mkstream=True))
        out = []
        for answer in got:
            if isinstance(answer, redis.ResponseError) and "BUSYGROUP" in str(answer):
                out.append(False)
            elif isinstance(answer, Exception):
                raise answer
            else:
                out.append(True)
        return out

    def read_group(self, group: str, consumer: str, ids: dict[int, str], count: int) -> list[Entry]:
        """``XREADGROUP`` on the shards of ``ids``: ``">"`` hands ``consumer`` entries no
        consumer of the group had yet (they become its pending ones); an entry id reads the
        consumer's own pending entries after it (a crashed consumer's restart)."""
        got = self._each(
            lambda p, s, key: p.xreadgroup(group, consumer, {key: ids[s]}, count=count), ids
        )
        out = []
        for s, streams in zip(ids, _checked(got), strict=True):
            for _key, rows in streams or []:
                out += [Entry(s, eid.decode(), f or {}) for eid, f in rows if eid is not None]
        return out

    def claim(self, group: str, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Take over, for ``consumer``, every entry pending longer than ``idle_ms`` with
        another consumer of ``group`` (one that crashed, or stalls), up to ``count`` per
        stream and call (``XAUTOCLAIM``, Redis 6.2+)."""
        got = self._each(
            lambda p, _s, key: p.xautoclaim(key, group, consumer, idle_ms, START, count=count)
        )
        out = []
        for s, answer in enumerate(_checked(got)):
            out += [Entry(s, eid.decode(), f or {}) for eid, f in answer[1] if eid is not None]
        return out

    def ack(self, group: str, entries: Iterable[tuple[int, str]]) -> None:
        """Acknowledge entries (shard, id) for ``group``: done, never handed out again."""
        by_shard: dict[int, list[str]] = {}
        for shard, eid in entries:
            by_shard.setdefault(shard, []).append(eid)
        if by_shard:
            _checked(self._each(lambda p, s, key: p.xack(key, group, *by_shard[s]), by_shard))

    def forget_idle(self, group: str, idle_ms: int) -> int:
        """Delete the consumers of ``group`` with nothing pending and idle longer than
        ``idle_ms`` (each crashed consumer's name would stay listed forever; a live one that
        is deleted is made again by its next read). How many."""
        got = _checked(self._each(lambda p, _s, key: p.xinfo_consumers(key, group)))
        idle = [
            (s, c["name"]) for s, consumers in enumerate(got) for c in consumers
            if c["pending"] == 0 and c["idle"] > idle_ms
        ]  # fmt: skip
        # (each deleted only if still nothing is pending with it: outbox_forget.lua)
        return sum(int(self._forget(keys=[self.keys[s]], args=[group, name])) for s, name in idle)

    def groups(self) -> list[list[GroupState]]:
        """Per shard, its stream's consumer groups (none for a stream that does not exist)."""
        infos = self._each(lambda p, _s, key: p.xinfo_groups(key))
        for info in infos:  # (a missing stream has none; any other error is not "none")
            if isinstance(info, Exception) and "no such key" not in str(info).lower():
                raise info
        names = [
            [g["name"].decode() for g in info] if not isinstance(info, Exception) else []
            for info in infos
        ]
        pipe = self.r.pipeline(transaction=False)
        for s, groups in enumerate(names):
            for name in groups:
                pipe.xpending(self.keys[s], name)
        pending = iter(pipe.execute())
        out: list[list[GroupState]] = []
        for info, groups in zip(infos, names, strict=True):
            states = []
            for g, name in zip(info if groups else [], groups, strict=True):
                p = next(pending)
                first = p["min"].decode() if p["pending"] else None
                last = g["last-delivered-id"].decode()
                states.append(GroupState(name, g["consumers"], p["pending"], first, last))
            out.append(states)
        return out


def trim_points(client: Redis, k: int, subscribers: list[str]) -> list[str | None]:
    """Per shard, the entry id below which every consumer group has acknowledged every
    entry and each of the record ``subscribers`` (their ids in the catalog) is done: what
    may be trimmed once folded (state/ledger.py; None: nothing reads the stream). Where
    no group or subscriber reads any stream, the records exported to a file
    (``Ledger.mark_exported``) may go."""
    progress: list[list[str]] = [[] for _ in range(k)]
    if subscribers:
        pipe = client.pipeline(transaction=False)
        for shard in range(k):
            pipe.hmget(keys.RECORD_DELIVERED, [f"{sid}{SEP}{shard}" for sid in subscribers])
        for shard, row in enumerate(pipe.execute()):
            # done with the entries before its progress's (that one maybe in part; none: "0-0")
            progress[shard] = [(v or b"0-0:").decode().rpartition(":")[0] for v in row]
    groups = Outbox(client, k).groups()
    points = [trim_point(g, p) for g, p in zip(groups, progress, strict=True)]
    if any(p is not None for p in points):
        return points
    # no reader configured: what was exported to a file (`fulfilments --mark-exported`)
    raw: Any = client.hmget(keys.RECORDS_EXPORTED, [str(s) for s in range(k)])
    return [_next(v.decode()) if v else None for v in raw]


def trim_point(groups: list[GroupState], progress: Iterable[str]) -> str | None:
    """The entry id of one stream below which every consumer group has acknowledged every
    entry and every other reader (``progress``: the entry ids up to which each record
    subscriber is done, "<ms>-<seq>") is past: entries before it could go. None when
    nothing constrains the stream (no group, no subscriber)."""
    bounds: list[tuple[int, int]] = []
    for g in groups:
        # entries up to last_delivered that are not pending are acknowledged
        bound = g.first_pending if g.first_pending is not None else _next(g.last_delivered)
        bounds.append(parse_id(bound))
    bounds += [parse_id(p) for p in progress]
    if not bounds:
        return None
    ms, seq = min(bounds)
    return f"{ms}-{seq}"


def _next(eid: str) -> str:
    ms, seq = parse_id(eid)
    return f"{ms}-{seq + 1}"


def _checked(answers: list[Any]) -> list[Any]:
    """Pipeline answers, the first error among them raised."""
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers
