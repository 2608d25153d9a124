"""A thin typed wrapper over Redis that adds onestock's domain operations.

Every multi-key operation is one Lua script over keys of one hash slot (see ``keys.py``), so
the same code runs against a single server and a Redis Cluster.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script

from onestock.domain.errors import OnestockError
from onestock.domain.records import RS
from onestock.domain.types import Catalog, Sku, catalog_decoder, json_encoder
from state import keys, wire
from state.buckets import Buckets, split
from state.campaigns import Campaigns
from state.conn import Redis, connect, lua, parse_id

EMIT_RECORDS = 250  # records per emit.lua call (a batch of more goes in several calls)


class Lock(NamedTuple):
    """A channel lock as stored: units held for ``channel`` until ``until_ms``, ``used`` of
    them already drawn by that channel."""

    channel: str
    qty: int
    until_ms: int
    used: int

    def left(self, at_ms: int) -> int:
        """Units the lock still holds at ``at_ms`` (0 once it dissolved)."""
        return max(0, self.qty - self.used) if at_ms < self.until_ms else 0


_MARKER, _LOW, _ALERTED = keys.STOCK_MARKER.encode(), keys.RULE_LOW.encode(), keys.ALERTED.encode()
_LIMIT, _VIP = keys.RULE_LIMIT.encode(), keys.RULE_VIP_UNTIL.encode()
_LOCK_QTY, _LOCK_UNTIL, _LOCK_USED = (
    p.encode() for p in (keys.LOCK_QTY, keys.LOCK_UNTIL, keys.LOCK_USED)
)


def _fields(got: Any) -> dict[bytes, bytes]:
    """A hash as HGETALL answered it (a flat list on a single server, a dict on a cluster)."""
    return got if isinstance(got, dict) else dict(zip(got[::2], got[1::2], strict=True))


def _stock_of(flat: dict[bytes, bytes]) -> tuple[dict[str, int], list[Lock]]:
    """A SKU's units per location and its channel locks, from its stock hash's fields (those
    that start with NUL are the marker, the SKU's rules and its locks)."""
    levels = {k.decode(): int(v) for k, v in flat.items() if not k.startswith(b"\x00")}
    locks = []
    for k, v in flat.items():
        if k.startswith(_LOCK_QTY):
            ch = k[len(_LOCK_QTY) :]
            until = int(flat.get(_LOCK_UNTIL + ch, 0))
            locks.append(Lock(ch.decode(), int(v), until, int(flat.get(_LOCK_USED + ch, 0))))
    return levels, locks


def _bought_reads(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, ...]], list[list[int]]]:
    """One HMGET per SKU of the units sold to the customers of these (SKU, customer) pairs,
    and the pairs' indices each one answers (see ``_bought``)."""
    by_sku: dict[str, list[int]] = {}
    for i, (sku, _) in enumerate(pairs):
        by_sku.setdefault(sku, []).append(i)
    commands = [
        ("HMGET", keys.bought(sku), *(pairs[i][1] for i in idx)) for sku, idx in by_sku.items()
    ]
    return commands, list(by_sku.values())


def _bought(groups: list[list[int]], replies: list[Any], n: int) -> list[int]:
    """The units sold per pair, from the HMGET replies of ``_bought_reads``."""
    counts = [0] * n
    for idx, got in zip(groups, replies, strict=True):
        for i, value in zip(idx, got, strict=True):
            counts[i] = int(value or 0)
    return counts


class Prelude(NamedTuple):
    """``Store.prelude``'s answer."""

    version: int
    registry: list[bytes | None]
    skus: dict[str, Alone | None]  # per SKU asked: ``read_alone``
    bought: dict[tuple[str, str], int]  # per (SKU, customer) asked: units sold so far
    mark: str | None  # the stored decide mark, when it was asked for


class Alone(NamedTuple):
    """A SKU's stock hash as refusing its orders on a read needs it (``read_alone``)."""

    levels: dict[str, int]  # units per location
    vip_until: int | None  # the VIP pre-sale's end, epoch ms
    limit: int | None  # the per-customer limit, units
    locks: list[Lock]  # its channel locks


def read_alone(got: Any) -> Alone | None:
    """A SKU's stock hash, as HGETALL answered it, for refusing its orders on a read: None
    when the SKU is missing or has an alert decide.lua would still raise (its alert level,
    computed from the units as ``settle_alert`` in lib_stock.lua does, differs from the one
    last raised, '\0alerted'), so a decide.lua call must come."""
    if not got:
        return None
    flat = _fields(got)
    if _MARKER not in flat:
        return None
    levels, locks = _stock_of(flat)
    low = flat.get(_LOW)
    if low is not None:
        units = sum(u for u in levels.values() if u > 0)
        level = 2 if units <= 0 else 1 if units <= int(low) else 0
        if level != int(flat.get(_ALERTED, 0)):
            return None
    vip, limit = flat.get(_VIP), flat.get(_LIMIT)
    return Alone(
        levels, int(vip) if vip is not None else None, int(limit) if limit is not None else None,
        locks,
    )  # fmt: skip


class Store:
    """Domain operations on one Redis (or Redis Cluster)."""

    def __init__(self, client: Redis) -> None:
        self.r = client
        self._decide = client.register_script(lua("decide", "lib_stock"))
        self._emit = client.register_script(lua("emit"))
        self._reserve_parts = client.register_script(lua("reserve_parts", "lib_stock"))
        self._release_parts = client.register_script(lua("release_parts", "lib_stock"))
        self._set_stock = client.register_script(lua("set_stock"))
        self._undo_units = client.register_script(lua("undo_units", "lib_stock"))
        self._return_units = client.register_script(lua("return_units", "lib_stock"))
        self.campaigns = Campaigns(client)
        self._camps: tuple[int, set[str]] | None = None  # (catalog version, campaign SKUs)
        self.buckets = Buckets(
            client, client.register_script(lua("lend")), client.register_script(lua("receive"))
        )
        # Reads of the input skip redis-py's per-entry dict building (a hot path).
        self._raw = client
        if isinstance(client, redis.Redis):
            self._raw = redis.Redis(connection_pool=client.connection_pool)
            self._raw.set_response_callback("XRANGE", lambda r, **_: r)

    @classmethod
    def connect(cls, url: str) -> Store:
        return cls(connect(url))

    # -- catalog ---------------------------------------------------------------------------

    def catalog(self) -> tuple[int, Catalog | None]:
        version, raw = self.r.get(keys.CATALOG_VERSION), self.r.get(keys.CATALOG)
        return int(version or 0), catalog_decoder.decode(raw) if raw else None

    def catalog_version(self) -> int:
        return int(self.r.get(keys.CATALOG_VERSION) or 0)

    def load_catalog(self, catalog: Catalog, replace_stock: Iterable[str]) -> None:
        """Store the (already validated and merged) catalog; replace stock of the named SKUs."""
        by_sku = {s.sku: s for s in catalog.skus}
        camps: dict[str, list[Any]] = {}
        for c in catalog.campaigns:  # the definition beside the campaign SKU's stock
            camps.setdefault(c.sku, []).extend(
                [keys.CAMPAIGN + c.id, c.first_n, keys.CAMPAIGN_LATENESS + c.id, c.lateness_ms]
            )
        named = set(replace_stock)
        old_version, old = self.catalog()
        # Every stock hash this load writes says which catalog it belongs to; the version
        # itself moves last, so a decider never reads a version whose rules are half written.
        version = old_version + 1
        before = {s.sku: s.buckets for s in old.skus} if old is not None else {}
        floors = {loc.id: loc.safety_stock for loc in catalog.locations if loc.safety_stock}
        for name in replace_stock:
            sku = by_sku[name]
            flat: list[Any] = []
            if sku.buckets > 1 or before.get(name, 1) > 1:
                self._load_buckets(sku, before.get(name, 1), floors, camps.get(name, []), version)
                continue
            for loc, qty in sku.stock.items():
                flat += [loc, qty]
            flat += self._rules(sku, version)
            flat += camps.get(name, [])
            self._set_stock(keys=[keys.stock(name)], args=flat)
        for name, fields in camps.items():
            if name not in named:
                mapping = dict(zip(fields[::2], fields[1::2], strict=True))
                self.r.hset(keys.stock(name), mapping={**mapping, keys.RULES_VERSION: version})
        self.r.set(keys.CATALOG, json_encoder.encode(catalog))
        self.r.set(keys.CATALOG_VERSION, version)

    def _load_buckets(
        self, sku: Sku, before: int, floors: dict[str, int], camps: list[Any], version: int
    ) -> None:
        """Replace a bucketed SKU's stock (or one that was bucketed): split over its buckets,
        under the SKU's mover lease so no transfer is half way; buckets it no longer has go."""
        with self.buckets.lease(sku.sku):
            self.buckets.clear_in_flight(sku.sku, max(before, sku.buckets))
            for b, levels in enumerate(split(sku, floors)):
                flat: list[Any] = [f for loc, qty in levels.items() for f in (loc, qty)]
                flat += self._rules(sku, version) + (camps if b == 0 else [])
                self._set_stock(keys=[keys.stock(keys.bucket(sku.sku, b))], args=flat)
            for b in range(sku.buckets, before):
                self.r.delete(keys.stock(keys.bucket(sku.sku, b)))

    @staticmethod
    def _rules(sku: Sku, version: int) -> list[Any]:
        """The SKU's rules as the NUL-prefixed fields beside its stock (``version``: the
        catalog's, ``keys.RULES_VERSION``)."""
        flat: list[Any] = [keys.RULES_VERSION, version]
        if sku.per_customer_limit is not None:
            flat += [keys.RULE_LIMIT, sku.per_customer_limit]
        if sku.low_stock_threshold is not None:
            flat += [keys.RULE_LOW, sku.low_stock_threshold]
        if sku.vip_presale_until is not None:
            flat += [keys.RULE_VIP_UNTIL, int(sku.vip_presale_until.timestamp() * 1000)]
        for lock in sku.channel_locks:
            flat += [keys.lock_qty(lock.channel), lock.qty]
            flat += [keys.lock_until(lock.channel), int(lock.until.timestamp() * 1000)]
        return flat

    def stock_levels(
        self, skus: Iterable[str], buckets: dict[str, int] | None = None
    ) -> dict[str, dict[str, int]]:
        """Units per location for each SKU that exists in Redis (``buckets``: see
        ``stock_state``)."""
        return {sku: levels for sku, (levels, _) in self.stock_state(skus, buckets).items()}

    def stock_state(
        self, skus: Iterable[str], buckets: dict[str, int] | None = None
    ) -> dict[str, tuple[dict[str, int], list[Lock]]]:
        """Per SKU that exists in Redis: units per location, and its channel locks. A SKU
        split into ``buckets[sku]`` buckets counts them all and the units in flight between
        them (the one-inventory view); without ``buckets``, the SKU's own hash (bucket 0)."""
        names = list(skus)
        pooled = {sku: n for sku, n in (buckets or {}).items() if n > 1 and sku in names}
        extra = [keys.bucket(sku, b) for sku, n in pooled.items() for b in range(1, n)]
        state = self.plan_state(names + extra, [])[0]
        for sku, n in pooled.items():
            if sku in state:
                state[sku] = (self.buckets.pool(sku, n, state), state[sku][1])
        return state

    def bought(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Units of each (SKU, customer) sold so far (per-customer limits)."""
        return self.plan_state([], pairs)[1]

    def plan_state(
        self, skus: list[str], pairs: list[tuple[str, str]]
    ) -> tuple[dict[str, tuple[dict[str, int], list[Lock]]], list[int]]:
        """What planning an order needs, in one round trip: ``stock_state`` of the SKUs and
        ``bought`` of the (SKU, customer) pairs."""
        reads, groups = _bought_reads(pairs)
        replies = wire.reads(self.r, [("HGETALL", keys.stock(sku)) for sku in skus] + reads)
        state: dict[str, tuple[dict[str, int], list[Lock]]] = {}
        for sku, got in zip(skus, replies, strict=False):
            if got:
                state[sku] = _stock_of(_fields(got))
        counts = _bought(groups, replies[len(skus) :], len(pairs))
        return state, counts

    # -- input shards ----------------------------------------------------------------------

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
        every first-N rank settled so far is acknowledged (in the ranks stream)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xrevrange(keys.inbox(shard), count=1)
        pipe.get(keys.watermark(shard))
        pipe.hlen(keys.held(shard))
        newest, wm, held = pipe.execute()
        if held:  # records still wait for their gift settlement
            return False
        if any(self.r.llen(keys.settled(sku)) for sku in self._campaign_skus()):
            return False  # released records whose ranks are not acknowledged yet (a crash)
        if not newest:
            return True
        top = parse_id(newest[0][0].decode())
        return wm is not None and parse_id(wm.decode()) >= top and parse_id(last_read) >= top

    def _campaign_skus(self) -> set[str]:
        """The campaign SKUs of the loaded catalog (read again when its version moves)."""
        version = self.catalog_version()
        if self._camps is None or self._camps[0] != version:
            _, cat = self.catalog()
            self._camps = (version, {c.sku for c in cat.campaigns} if cat else set())
        return self._camps[1]

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

    # -- decisions -------------------------------------------------------------------------

    def decide_slots(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[bytes]]:
        """One atomic decide.lua call per slot (SKUs, ARGV), all in one round trip."""
        return self._per_slot(self._decide, keys.decisions, calls)

    def _per_slot(
        self, script: Script, second: Callable[[str], str], calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Independent one-slot script calls, pipelined on a single server (each stays atomic;
        a Redis Cluster client runs them one by one, each routed to its slot's node)."""
        return wire.scripts(self.r, [(script, self._sku_keys(s, second), a) for s, a in calls])

    def _sku_keys(self, skus: list[str], second: Callable[[str], str]) -> list[str]:
        """Per SKU, in order: its stock hash, ``second`` (decisions or parts), its counters
        of units sold per customer, its alerts stream, its campaigns' candidates and
        progress."""
        ks: list[str] = []
        for sku in skus:
            ks += [keys.stock(sku), second(sku), keys.bought(sku), keys.alerts(sku),
                   keys.candidates(sku), keys.campaigns(sku)]  # fmt: skip
        return ks

    def reserve_parts(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
        """Each slot's parts of many cross-slot orders (one call per slot, one round trip):
        per order 1 reserved now, 2 reserved before, 0 not enough stock."""
        return self._per_slot(self._reserve_parts, keys.parts, calls)

    def release_parts(self, calls: list[tuple[list[str], list[Any]]]) -> list[int]:
        """Undo each slot's parts of orders (idempotent)."""
        return self._per_slot(self._release_parts, keys.parts, calls)

    def read_parts(self, wanted: list[tuple[str, str]]) -> list[bytes | None]:
        """The stored part of each (order id, home SKU), None where nothing is reserved."""
        by_home: dict[str, list[int]] = {}
        for i, (_, home) in enumerate(wanted):
            by_home.setdefault(home, []).append(i)
        replies = wire.reads(
            self.r,
            [
                ("HMGET", keys.parts(home), *(wanted[i][0] for i in idx))
                for home, idx in by_home.items()
            ],
        )
        out: list[bytes | None] = [None] * len(wanted)
        for idx, got in zip(by_home.values(), replies, strict=True):
            for i, value in zip(idx, got, strict=True):
                out[i] = value
        return out

    # -- outputs ---------------------------------------------------------------------------

    def emit(
        self,
        shard: int,
        last_id: str,
        records: list[str],
        dead: list[list[str]],
        meter: tuple[int, int, int, int, list[str]] | None = None,
    ) -> bool:
        """Write a decided batch exactly once and advance the shard's trim watermark; True
        when no cancel of the shard waits for its order (none came before its order).

        ``records`` is flat: order_id, registry value, packed record, order_id, ...;
        ``dead``: [entry id, raw, reason] each; ``meter``: the batch's latency sums and
        counts (received->decided ms, n, paid->decided ms, n) and one metric tag per record
        (``emit.lua`` counts the tags of the records it writes now).
        """
        n = len(records) // 3
        sums, tags = (0, 0, 0, 0), [""] * n
        if meter is not None:
            *sums, tags = meter  # type: ignore[assignment]
            if len(tags) != n:
                raise ValueError(f"{len(tags)} metric tags for {n} records")
        ks = [keys.emitted(shard), keys.outbox(shard), keys.deadbox(shard), keys.inbox(shard),
              keys.watermark(shard), keys.counters(shard), keys.held(shard),
              keys.decided(shard), keys.returns(shard)]  # fmt: skip
        # A large batch goes in several calls (one round trip) so each stays short; only the
        # last moves the watermark and writes the dead letters. Each call is atomic and the
        # registry skips what an earlier call wrote, so a crash between them loses nothing
        # and duplicates nothing. Every call scales the batch's latency sums to its records.
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
            r_ids = [oid for oid, value in zip(part[0::3], part[1::3], strict=True) if value == "r"]
            args += [len(r_ids), RS.join(oid + "\x1fR" for oid in r_ids)]
            calls.append((self._emit, ks, args))
        return bool(wire.scripts(self.r, calls)[-1][2])

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

    # -- cancellations and returns ---------------------------------------------------------

    def return_units(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
        """Restock returned lines, one return_units.lua call per slot."""
        return self._per_slot(self._return_units, keys.decisions, calls)

    def sku_fields(self, wanted: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        """HMGET of fields of SKUs' decision hashes, one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for sku, fields in wanted:
            pipe.hmget(keys.decisions(sku), fields)
        return pipe.execute()  # type: ignore[no-any-return]

    def mark_cancelling(self, shard: int, order_ids: list[str]) -> None:
        """Say in the shard's registry that these orders are being cancelled."""
        self.r.hset(
            keys.emitted(shard), mapping={keys.REG_CANCELLING + oid: 1 for oid in order_ids}
        )

    def undo_units(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[int]]:
        """Give cancelled orders' units back, one undo_units.lua call per slot."""
        return self._per_slot(self._undo_units, keys.decisions, calls)

    def registry(self, shard: int, order_ids: list[str]) -> list[bytes | None]:
        """Registry values of the shard for these fields (order ids, ``keys.REG_*`` ones)."""
        if not order_ids:
            return []
        return wire.reads(self.r, [("HMGET", keys.emitted(shard), *order_ids)])[0]  # type: ignore[no-any-return]

    def prelude(
        self,
        shard: int,
        fields: list[str],
        skus: list[str],
        pairs: list[tuple[str, str]],
        mark: str | None,
    ) -> Prelude:
        """What deciding a batch of ``shard`` reads first, in one round trip: the catalog
        version, ``registry`` of these fields, ``read_alone`` of these SKUs, ``bought`` of
        these (SKU, customer) pairs, and the shard's decide mark: ``mark`` is the caller's
        new one, written here; without it the stored mark is read instead (``Prelude.mark``;
        see ``set_mark``)."""
        commands: list[tuple[str, ...]] = [("GET", keys.CATALOG_VERSION)]
        if fields:
            commands.append(("HMGET", keys.emitted(shard), *fields))
        commands += [("HGETALL", keys.stock(sku)) for sku in skus]
        reads, groups = _bought_reads(pairs)
        commands += reads
        if mark is None:
            commands += [("GET", keys.decide_mark(shard)), ("EXISTS", keys.emitted(shard)),
                         ("XREVRANGE", keys.inbox(shard), "+", "-", "COUNT", "1")]  # fmt: skip
        else:
            commands.append(("SET", keys.decide_mark(shard), mark))
        replies = wire.reads(self.r, commands)
        version = int(replies[0] or 0)
        registry = replies[1] if fields else []
        at = 2 if fields else 1
        read = {sku: read_alone(got) for sku, got in zip(skus, replies[at:], strict=False)}
        at += len(skus)
        counts = _bought(groups, replies[at : at + len(groups)], len(pairs))
        bought = dict(zip(pairs, counts, strict=True))
        stored = None
        if mark is None:
            got, written, top = replies[-3:]
            if got is not None:
                stored = got.decode()
            elif written:  # written by a version without the mark: any entry may be decided
                stored = top[0][0].decode() if top else "0-0"
            else:
                stored = "0-0"
        return Prelude(version, registry, read, bought, stored)

    def set_mark(self, shard: int, mark: str) -> None:
        """Write the shard's decide mark (``keys.decide_mark``); only the shard's owner does."""
        self.r.set(keys.decide_mark(shard), mark)

    def memory_used(self) -> int:
        return int(self.r.info("memory")["used_memory"])
