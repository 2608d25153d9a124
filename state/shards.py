"""The shard keys (a part of ``state.store.Store``): per input shard, in its own hash slot
(``keys.shard_tag``), its input stream, its output streams (fulfilment records, dead letters,
decisions, returns), its registry of emitted order ids, its trim watermark, its decide mark,
its counters and its held records; and the shard count K (``keys.SHARDS``).

Appending and reading the input, writing a decided batch exactly once (``emit.lua``, whose
KEYS and ARGV are packed here, beside the call; the layout is documented in its header),
and reading the outputs back. A batch's prelude also reads SKU keys (their stock and
counts, decoded by ``state.stock``) in the same round trip.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import redis

from onestock.domain.errors import OnestockError
from onestock.domain.protocol import RS, SEP, Code
from state import keys, wire
from state.conn import Redis, lua, parse_id
from state.gens import Gen, newer_first, registries
from state.stock import Alone, bought_counts, bought_reads, read_alone

EMIT_RECORDS = 250  # records per emit.lua call (a batch of more goes in several calls)
# a rejected campaign order's registry value, and its decision on the decisions stream
_CAMPAIGN_REJECTED, _REJECTED = Code.CAMPAIGN_REJECTED, SEP + Code.REJECTED

# The latency sums and counts of a batch (received->decided ms, n, paid->decided ms, n) and
# one metric tag per record
Meter = tuple[int, int, int, int, list[str]]


class Prelude(NamedTuple):
    """``Shards.prelude``'s answer."""

    version: int
    registry: list[bytes | None]
    skus: dict[str, Alone | None]  # per SKU asked: ``read_alone``
    bought: dict[tuple[str, str], int]  # per (SKU, customer) asked: units sold so far
    mark: str | None  # the stored decide mark, when it was asked for
    quarantined: int | None  # with it: the generation of the shard's last quarantine, if any


class Shards:
    def __init__(
        self, client: Redis, campaign_skus: Callable[[], set[str]], gen: Gen | None = None
    ) -> None:
        self.r = client
        self.gen = gen or Gen()  # the generation this process writes registries in now
        self._campaign_skus = campaign_skus  # the loaded catalog's campaign SKUs
        self._emit = client.register_script(lua("emit"))
        self._cancelling = client.register_script(lua("cancelling"))
        # Reads of the input skip redis-py's per-entry dict building (a hot path).
        self._raw = client
        if isinstance(client, redis.Redis):
            self._raw = redis.Redis(connection_pool=client.connection_pool)
            self._raw.set_response_callback("XRANGE", lambda r, **_: r)

    # -- input -----------------------------------------------------------------------------

    def shard_count(self, wanted: int | None = None) -> int:
        """K is fixed by the first writer; asking for another K later is an error."""
        if wanted is not None:
            if wanted < 1 or wanted > 1024:
                raise OnestockError(f"shards must be 1..1024, not {wanted}")
            self.r.set(keys.SHARDS, wanted, nx=True)
        stored = self.r.get(keys.SHARDS)
        if stored is None:
            raise OnestockError("no events were ever pushed: the shard count is not set yet")
        k = int(stored)
        if wanted is not None and wanted != k:
            raise OnestockError(f"the input has {k} shards already; cannot use {wanted}")
        return k

    def push(self, events: Iterable[tuple[int, bytes]], chunk: int = 2000) -> int:
        """Append (shard, raw event) pairs; pipelined, one round trip per chunk."""
        n = 0
        pipe = self.r.pipeline(transaction=False)
        for shard, raw in events:
            pipe.xadd(keys.inbox(shard), {"e": raw})
            n += 1
            if n % chunk == 0:
                pipe.execute()
        pipe.execute()
        return n

    def read(self, shard: int, after: str, count: int) -> list[tuple[str, bytes]]:
        """Up to ``count`` entries strictly after ``after``; never blocks."""
        rows: Any = self._raw.xrange(keys.inbox(shard), min=f"({after}", max="+", count=count)
        if rows and isinstance(rows[0][1], dict):  # a cluster client parsed them anyway
            return [(eid.decode(), fields[b"e"]) for eid, fields in rows]
        return [(eid.decode(), fields[1]) for eid, fields in rows]

    def drained(self, shard: int, last_read: str) -> bool:
        """True when every event pushed to the shard so far has its outcome written, and
        every first-N rank settled so far is acknowledged (in the ranks stream), and no
        reserved order's payment deadline, nor a shipment's claim timeout, has passed
        unapplied (dataflows/lifecycle.py)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xrevrange(keys.inbox(shard), count=1)
        pipe.get(keys.watermark(shard))
        pipe.hlen(keys.held(shard))
        newest, wm, held = pipe.execute()
        if held:  # records still wait for their gift settlement
            return False
        clock: Any = self.r.time()  # (a cluster client: per node; TIME has no key)
        sec, us = next(iter(clock.values())) if isinstance(clock, dict) else clock
        now_ms = sec * 1000 + us // 1000
        for timers in (keys.deadlines(shard), keys.claims(shard)):
            if self.r.zrangebyscore(timers, "-inf", f"({now_ms}", start=0, num=1):
                return False  # a deadline passed: the shard's next tick expires the order
                # (or re-routes the shipment not claimed in time)
        if any(self.r.llen(keys.settled(sku)) for sku in self._campaign_skus()):
            return False  # released records whose ranks are not acknowledged yet (a crash)
        if not newest:
            return True
        top = parse_id(newest[0][0].decode())
        return wm is not None and parse_id(wm.decode()) >= top and parse_id(last_read) >= top

    def watermark(self, shard: int) -> str | None:
        """The last input entry id of the shard whose outcome is written."""
        wm: Any = self.r.get(keys.watermark(shard))
        return wm.decode() if wm is not None else None

    def backlog(self, shards: int) -> int:
        """Entries still in the input streams (consumed entries are trimmed behind them)."""
        pipe = self.r.pipeline(transaction=False)
        for s in range(shards):
            pipe.xlen(keys.inbox(s))
        return sum(pipe.execute())

    # -- a batch's reads -------------------------------------------------------------------

    def registry(self, shard: int, order_ids: list[str]) -> list[bytes | None]:
        """Registry values of the shard for these fields (order ids, ``keys.REG_*`` ones)."""
        if not order_ids:
            return []
        return newer_first(*wire.reads(self.r, self.registry_reads(shard, order_ids)))

    def registry_reads(self, shard: int, fields: list[str]) -> list[tuple[str, ...]]:
        """The three HMGETs of ``fields`` in the shard's registry, newest generation first
        (``Gen.read``; ``gens.newer_first`` merges their replies)."""
        return [("HMGET", keys.emitted(shard, g), *fields) for g in self.gen.read()]

    def registry_keys(self, shard: int) -> list[str]:
        """The shard's registry of this generation, of the one before and of the one after
        (scripts' KEYS)."""
        return list(registries(shard, self.gen))

    def prelude(
        self,
        shard: int,
        fields: list[str],
        skus: list[str],
        pairs: list[tuple[str, str]],
        mark: str | None,
        forget: bool = False,
    ) -> Prelude:
        """What deciding a batch of ``shard`` reads first, in one round trip: the catalog
        version, ``registry`` of these fields, ``read_alone`` of these SKUs, the units sold
        so far of these (SKU, customer) pairs, and the shard's decide mark: ``mark`` is the
        caller's new one, written here; without it the stored mark is read instead
        (``Prelude.mark``; see ``set_mark``). ``forget``: the shard's journal is deleted
        (keys.journal: the caller knows the batch before was written)."""
        commands: list[wire.Command] = [("GET", keys.CATALOG_VERSION)]
        if fields:
            # An order's first record, and a cancel that came before the order, are written
            # in the generation of an entry at or before the order's: in this one or the one
            # before, never the one after (a later entry or tick writes only later versions
            # there, of orders recorded before), which is not read here.
            now = self.gen.now
            commands.append(
                wire.Same("HMGET", (keys.emitted(shard, now), keys.emitted(shard, now - 1)), fields)
            )
        commands += [("HGETALL", keys.stock(sku)) for sku in skus]
        reads, groups = bought_reads(pairs, self.gen)
        commands += reads
        if mark is None:
            written = ("EXISTS", *self.registry_keys(shard))
            top = ("XREVRANGE", keys.inbox(shard), "+", "-", "COUNT", "1")
            commands += [("GET", keys.quarantined(shard)), ("GET", keys.decide_mark(shard)),
                         written, top]  # fmt: skip
        else:
            commands.append(("SET", keys.decide_mark(shard), mark))
        if forget:
            commands.append(("DEL", keys.journal(shard)))
        replies = wire.reads(self.r, commands)
        version = int(replies[0] or 0)
        registry = newer_first(*replies[1:3]) if fields else []
        at = 3 if fields else 1
        read = {sku: read_alone(got) for sku, got in zip(skus, replies[at:], strict=False)}
        at += len(skus)
        counts = bought_counts(groups, replies[at : at + len(groups)], len(pairs))
        bought = dict(zip(pairs, counts, strict=True))
        stored = quarantined = None
        if mark is None:
            stored = _stored_mark(*replies[-3:])
            quarantined = None if replies[-4] is None else int(replies[-4])
        return Prelude(version, registry, read, bought, stored, quarantined)

    # -- a batch's writes ------------------------------------------------------------------

    def quarantine(self, shard: int, gen: int) -> None:
        """Say that an event of ``shard`` was quarantined in generation ``gen``
        (``keys.quarantined``)."""
        self.r.set(keys.quarantined(shard), gen)

    def set_mark(self, shard: int, mark: str, forget: bool = False) -> None:
        """Write the shard's decide mark (``keys.decide_mark``); only the shard's owner does.
        ``forget``: and delete the shard's journal (as ``prelude``'s)."""
        commands: list[tuple[str, ...]] = [("SET", keys.decide_mark(shard), mark)]
        if forget:
            commands.append(("DEL", keys.journal(shard)))
        wire.reads(self.r, commands)

    def mark_cancelling(self, shard: int, order_ids: list[str]) -> list[bytes | None]:
        """Say in the shard's registry that these orders are being cancelled; each one's
        registry value at that moment (``cancelling.lua``, atomic with the marks)."""
        ks = self.registry_keys(shard)
        got = wire.scripts(self.r, [(self._cancelling, ks, order_ids)])[0]
        return [v if v else None for v in got]

    def emit(
        self,
        shard: int,
        last_id: str,
        records: list[str],
        dead: list[list[str]],
        meter: Meter | None = None,
        known: tuple[int, int, bool] = (0, 0, False),
    ) -> bool:
        """Write a decided batch exactly once and advance the shard's trim watermark; True
        when no cancel of the shard waits for its order (none came before its order).

        ``records`` is flat: order_id, registry value, packed record, order_id, ...;
        ``dead``: [entry id, raw, reason] each; ``meter``: the batch's latency sums and
        counts (received->decided ms, n, paid->decided ms, n) and one metric tag per record
        (``emit.lua`` counts the tags of the records it writes now). ``known``: (first, n)
        records whose keys the caller read in neither the batch's generation of the registry
        nor the one before since its shard's last emit (the decider's prelude; the one after
        cannot hold them, as ``prelude`` says), distinct order ids: emit.lua skips looking
        them up; and True when none of them is held (``Code.HELD``): a call whose records
        are all known then writes them as they came, reading nothing. Sound only for the
        shard's one owner, with no other emit of the shard in between.
        """
        now, before, after = self.registry_keys(shard)
        ks = [now, keys.outbox(shard), keys.deadbox(shard), keys.inbox(shard),
              keys.watermark(shard), keys.counters(shard), keys.held(shard),
              keys.decided(shard), keys.returns(shard), keys.movements(shard), before,
              after]  # fmt: skip
        argvs = _emit_args(last_id, records, dead, meter, known)
        calls = [(self._emit, ks, args) for args in argvs]
        return bool(wire.scripts(self.r, calls)[-1][2])

    # -- outputs ---------------------------------------------------------------------------

    def outcome_counts(self, shards: int) -> tuple[int, int]:
        """(records, dead letters) written so far over all shards."""
        pipe = self.r.pipeline(transaction=False)
        for s in range(shards):
            pipe.hmget(keys.counters(s), ["records", "dead"])
        recs = dead = 0
        for r, d in pipe.execute():
            recs += int(r or 0)
            dead += int(d or 0)
        return recs, dead

    def entries(self, stream_of: Callable[[int], str], shards: int) -> Iterator[dict[bytes, bytes]]:
        """Every entry of a per-shard output stream, merged across shards in entry-id order."""
        return self.merged([stream_of(s) for s in range(shards)])

    def merged(self, streams: list[str]) -> Iterator[dict[bytes, bytes]]:
        """Every entry of several streams, merged in entry-id order."""

        def one(key: str) -> Iterator[tuple[tuple[int, int], dict[bytes, bytes]]]:
            after = "0-0"
            while True:
                rows: Any = self.r.xrange(key, min=f"({after}", max="+", count=5000)
                if not rows:
                    return
                for eid, fields in rows:
                    yield parse_id(eid.decode()), fields
                after = rows[-1][0].decode()

        for _, fields in heapq.merge(*(one(k) for k in streams), key=lambda t: t[0]):
            yield fields


def _stored_mark(got: bytes | None, written: int, top: list[tuple[bytes, Any]]) -> str:
    """The shard's decide mark from the prelude's replies: the stored one, or for a registry
    written by a version without the mark the newest input entry (any entry may be
    decided), or "0-0" for a shard nothing was written for."""
    if got is not None:
        return got.decode()
    if written:
        return top[0][0].decode() if top else "0-0"
    return "0-0"


def _emit_args(
    last_id: str,
    records: list[str],
    dead: list[list[str]],
    meter: Meter | None,
    known: tuple[int, int, bool] = (0, 0, False),
) -> list[list[Any]]:
    """ARGV of each emit.lua call of a batch (the layout: its header).

    A large batch goes in several calls (one round trip) so each stays short; only the last
    moves the watermark and writes the dead letters. Each call is atomic and the registry
    skips what an earlier call wrote, so a crash between them loses nothing and duplicates
    nothing. Every call scales the batch's latency sums to its records."""
    n = len(records) // 3
    sums, tags = (0, 0, 0, 0), [""] * n
    if meter is not None:
        *sums, tags = meter  # type: ignore[assignment]
        if len(tags) != n:
            raise ValueError(f"{len(tags)} metric tags for {n} records")
    calls = []
    starts = range(0, n, EMIT_RECORDS) if n else range(1)
    for i in starts:
        part, part_tags = records[3 * i : 3 * (i + EMIT_RECORDS)], tags[i : i + EMIT_RECORDS]
        final = i == starts[-1]
        packed = RS.join(part[2::3])
        if packed.count(RS) != max(len(part_tags) - 1, 0):
            raise ValueError("a packed record contains the record separator \\x1e")
        args: list[Any] = [last_id if final else "-", len(part_tags)]
        pairs: list[Any] = [None] * (2 * len(part_tags))  # order_id, registry value, ...
        pairs[0::2], pairs[1::2] = part[0::3], part[1::3]
        args += pairs
        args += [packed, len(dead) if final else 0]
        if final:
            for d in dead:
                args += d
        counted = Counter(part_tags)
        counted.pop("", None)
        args += sums
        args += [RS.join(part_tags), len(counted), *(x for kv in counted.items() for x in kv)]
        # rejected campaign orders' decisions, joined as the decisions stream takes them
        r_ids = [oid for oid, value in zip(part[0::3], part[1::3], strict=True)
                 if value == _CAMPAIGN_REJECTED]  # fmt: skip
        args += [len(r_ids), RS.join(oid + _REJECTED for oid in r_ids)]
        # the known records of this call, 1-based first and last (0 0: none), none held
        first, last = max(known[0], i), min(known[0] + known[1], i + len(part_tags)) - 1
        args += [first - i + 1, last - i + 1] if first <= last else [0, 0]
        args.append(int(known[2]))
        calls.append(args)
    return calls
