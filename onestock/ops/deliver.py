"""Webhook deliveries (``onestock feed``, beside the publisher), of two sources on one
machinery (``onestock/ops/delivery_sources.py``): the availability change feed's transitions
to the catalog's ``"subscribers"`` (docs/availability.md), the fulfilment records to its
``"record_subscribers"`` (docs/downstream.md).

Each item is POSTed to its subscriber's URL, signed per Standard Webhooks by the
``standardwebhooks`` package: ``webhook-id`` the item's own (``msg_<instance>_<seq>`` for a
transition), the same on every retry; ``webhook-timestamp`` and ``webhook-signature`` made
anew for each attempt.

- Order and concurrency: a subscriber's items are spread over ``lanes`` by their key ((SKU,
  channel) for a transition, the order id for a record); a lane posts one at a time, in
  stream order, so one key's items arrive in order and at most ``lanes`` requests per
  subscriber are in flight.
- Retries: anything but a 2xx (3xx, 4xx, 5xx, a timeout, a refused connection) is tried
  again after ``base_s``, 2 ``base_s``, 4 ``base_s`` ... (at most ``cap_s``; up to a fifth less at
  random, so lanes that failed together spread out; a longer ``Retry-After`` is honoured up
  to ``cap_s``). After ``attempts`` tries the item is given up: kept in its source's
  undelivered stream (``onestock deliveries --undelivered``), and its lane moves on.
- Progress: per subscriber and stream, the place up to which every item is delivered or
  given up (``keys.FEED_DELIVERED``: a seq; ``keys.RECORD_DELIVERED``: an entry id and
  index per shard), written every ``COMMIT_S`` in one script with the counts and the
  given-up entries (so progress never passes a given-up item that is not kept). A restart
  reads again from there: what was in flight is sent again (at least once; a receiver
  dedupes by ``webhook-id``, or keeps the highest seq per (SKU, channel), the highest
  version per order id).
- Isolation: each subscriber has its own readers, lanes and connection pool, so one that is
  down or slow never holds up another; all of it runs in ``onestock feed``, never in the
  deciders.
- One deliverer at a time holds ``keys.FEED_DELIVERY_LEASE`` (any number may run, as
  publishers do); every write of either source is fenced by it (their keys share its slot),
  so one that stalled past its lease never writes behind the one that took over.
- Trimming: the deliverer trims the feed up to the least subscriber progress, keeping at
  least the last ``keep`` transitions (for ``onestock availability --follow --from``); the
  records' streams are never trimmed here.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from standardwebhooks.webhooks import Webhook

from onestock.domain.errors import OnestockError
from onestock.domain.records import iso_ms
from onestock.domain.types import catalog_decoder
from onestock.ops.deliveries import OUTCOMES
from onestock.ops.delivery_sources import FeedSource, Item, RecordSource, Source
from onestock.ops.services import instance_id
from state import keys
from state.conn import TRANSIENT, lua
from state.store import Store

LEASE_MS = 5000  # a deliverer that stops renewing loses its lease after this
RENEW_S = 1.0  # the lease renewed this often
COMMIT_S = 0.05  # progress, counts and given-up items written this often
READ_COUNT = 500  # items read per round trip (about: entries are read, see Source.per_entry)
READ_BLOCK_MS = 1000  # a caught-up reader waits this long for the next entry
BODY_READ = 65536  # bytes of an answer read (the rest is not wanted)

ENV = {
    "attempts": "ONESTOCK_DELIVERY_ATTEMPTS",
    "base_s": "ONESTOCK_DELIVERY_BACKOFF_S",
    "cap_s": "ONESTOCK_DELIVERY_BACKOFF_CAP_S",
    "timeout_s": "ONESTOCK_DELIVERY_TIMEOUT_S",
    "lanes": "ONESTOCK_DELIVERY_LANES",
    "window": "ONESTOCK_DELIVERY_WINDOW",
    "keep": "ONESTOCK_FEED_KEEP",
    "drain_s": "ONESTOCK_DELIVERY_DRAIN_S",
    "trim_s": "ONESTOCK_FEED_TRIM_S",
}
ZERO_OK = (ENV["keep"], ENV["drain_s"])  # the settings that may be 0


@dataclass(frozen=True)
class DeliverySettings:
    """How deliveries are tried (each field from its ``ENV`` variable)."""

    attempts: int = 20  # tries per item before it is given up (~1.8 h with the below)
    base_s: float = 1.0  # the wait after the first failure; doubled after each next one
    cap_s: float = 600.0  # the longest wait between two tries
    timeout_s: float = 10.0  # a request without a whole answer by then has failed
    lanes: int = 8  # requests in flight per subscriber (one per lane)
    window: int = 10_000  # items per subscriber read ahead and not yet done
    keep: int = 100_000  # transitions the feed keeps at least (replays)
    drain_s: float = 5.0  # on stop, how long to go on delivering what was published
    trim_s: float = 10.0  # the feed trimmed this often

    @classmethod
    def from_env(cls) -> DeliverySettings:
        d = cls()
        return cls(**{f.name: _env(ENV[f.name], getattr(d, f.name)) for f in fields(cls)})


def _env(name: str, default: float) -> Any:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise OnestockError(f"{name}={raw!r} is not {kind}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and name not in ZERO_OK):
        raise OnestockError(f"{name}={raw!r} must be above 0")
    return value


def backoff(failures: int, cfg: DeliverySettings, retry_after: float = 0.0) -> float:
    """The wait before the next try after ``failures`` failed ones."""
    delay = min(cfg.cap_s, cfg.base_s * 2.0 ** min(failures - 1, 60)) * random.uniform(0.8, 1.0)
    return max(delay, min(retry_after, cfg.cap_s))


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: not honoured
        return 0.0


class LeaseLost(Exception):
    """Another deliverer holds the lease now."""


class Window:
    """The items of one stream of one subscriber read so far, and which of them are done
    (places: whatever its source orders them by, ``before`` the place just before one)."""

    def __init__(self, start: Any, before: Callable[[Any], Any]) -> None:
        self.read = start  # the place of the last item read from the stream
        self._before = before
        self._open: list[Any] = []  # (heap) the places handed to a lane
        self._done: set[Any] = set()  # those of them delivered or given up

    def open(self, pos: Any) -> None:
        heapq.heappush(self._open, pos)

    def close(self, pos: Any) -> None:
        self._done.add(pos)

    def __len__(self) -> int:
        return len(self._open) - len(self._done)

    def progress(self) -> Any:
        """The place up to which every item is done."""
        while self._open and self._open[0] in self._done:
            self._done.discard(heapq.heappop(self._open))
        return self._before(self._open[0]) if self._open else self.read


@dataclass
class Stream:
    """One stream a subscription reads."""

    index: int  # its place in the source's streams (a shard)
    key: str
    field: str  # its progress field
    after: str  # the entry id read up to
    window: Window


@dataclass
class Commit:
    """What one commit writes for a subscriber."""

    progress: tuple[tuple[str, str], ...]  # (progress field, place) per stream
    retrying: int
    counts: tuple[int, ...]  # by OUTCOMES, since the last commit
    error: str
    given_up: list[bytes]  # the entries for the source's undelivered stream

    def args(self, token: str, sub: str) -> list[Any]:
        return [token, sub, self.retrying, *self.counts, self.error, len(self.progress),
                *(x for pair in self.progress for x in pair), len(self.given_up),
                *self.given_up]  # fmt: skip


class Subscription:
    """One subscriber's deliveries: a reader per stream filling the lanes, each lane posting
    in order."""

    def __init__(
        self, source: Source, sub: Any, streams: list[Stream], cfg: DeliverySettings, r: Any,
        say: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.source, self.sub, self.cfg, self.r, self.say = source, sub, cfg, r, say
        self.streams = streams
        self.hook = Webhook(sub.secret)
        self.wanted = source.wanted(sub)
        self.room = asyncio.Event()  # set when a lane finishes one (the window has room)
        self.lanes: list[asyncio.Queue[tuple[Window, Item]]] = [
            asyncio.Queue() for _ in range(cfg.lanes)
        ]
        self.tasks: list[asyncio.Task[None]] = []
        self.http: aiohttp.ClientSession | None = None
        # what the next commit writes, and what the last one wrote
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.retrying = 0
        self.error = ""
        self.given_up: list[bytes] = []
        self.last = Commit(self._progress(), -1, (), "", [])  # (-1: the first writes "retrying")

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.streams]

    def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.lanes),
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            headers={"user-agent": "onestock-webhooks", "content-type": "application/json"},
        )
        self.tasks = [asyncio.create_task(self._read(s)) for s in self.streams]
        self.tasks += [asyncio.create_task(self._lane(q)) for q in self.lanes]
        for task in self.tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A reader or lane that ends other than cancelled is a bug: said, not silent (the
        subscriber's progress stops there, its lag grows)."""
        if not task.cancelled() and task.exception() is not None:
            self.say(f"deliveries: {self.sub.id}: stopped by {task.exception()!r}")

    async def close(self) -> None:
        """Stop (what is in flight is not done: a next run sends it again)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        self.retrying = 0

    def caught_up(self, lasts: dict[str, Any]) -> bool:
        """Whether every item up to ``lasts`` (per stream key) is done."""
        return all(
            lasts.get(s.key) is None or s.window.progress() >= lasts[s.key] for s in self.streams
        )

    # -- commits ---------------------------------------------------------------------------

    def _progress(self) -> tuple[tuple[str, str], ...]:
        return tuple((s.field, self.source.dump(s.window.progress())) for s in self.streams)

    def pending(self) -> Commit | None:
        """What changed since the last commit; None when nothing did."""
        c = Commit(
            self._progress(), self.retrying, tuple(self.counts.values()), self.error,
            list(self.given_up),
        )  # fmt: skip
        last = self.last
        if (c.progress, c.retrying, c.error) == (last.progress, last.retrying, last.error) and (
            not any(c.counts) and not c.given_up
        ):
            return None
        return c

    def committed(self, c: Commit) -> None:
        """``c`` is written: what it carried is not written again."""
        for name, n in zip(OUTCOMES, c.counts, strict=True):
            self.counts[name] -= n
        del self.given_up[: len(c.given_up)]
        self.last = c

    # -- delivering ------------------------------------------------------------------------

    async def _read(self, s: Stream) -> None:
        while True:
            room = self.cfg.window - sum(len(x.window) for x in self.streams)
            if room <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            count = max(1, min(room, READ_COUNT) // self.source.per_entry)
            try:
                got = await self.r.xread({s.key: s.after}, count=count, block=READ_BLOCK_MS)
            except TRANSIENT:  # Redis away: the deliverer says so
                await asyncio.sleep(0.5)
                continue
            for eid, f in got[0][1] if got else []:
                self._take(s, eid, f)

    def _take(self, s: Stream, eid: bytes, f: Any) -> None:
        last, items = self.source.items(self.wanted, s.index, eid, f)
        s.after = eid.decode()
        for item in items:
            if item.pos > s.window.read:  # (an entry done in part is read again: the rest)
                s.window.open(item.pos)
                self.lanes[zlib.crc32(item.key) % len(self.lanes)].put_nowait((s.window, item))
        s.window.read = max(s.window.read, last)

    async def _lane(self, queue: asyncio.Queue[tuple[Window, Item]]) -> None:
        while True:
            window, item = await queue.get()
            await self._deliver(item)
            window.close(item.pos)
            self.room.set()

    async def _deliver(self, item: Item) -> None:
        """Post ``item`` until a 2xx or the budget is spent (then keep it, given up)."""
        failures, retried = 0, False
        try:
            while True:
                error, retry_after = await self._post(item.msg_id, item.body)
                if error is None:
                    self.counts["delivered"] += 1
                    return
                failures += 1
                where = " ".join(f"{k} {v}" for k, v in item.where.items())
                self.error = f"{iso_ms(int(time.time() * 1000))} {where}: {error}"
                if failures >= self.cfg.attempts:
                    self._give_up(item, failures, error)
                    return
                if not retried:
                    self.retrying, retried = self.retrying + 1, True
                self.counts["retried"] += 1
                await asyncio.sleep(backoff(failures, self.cfg, retry_after))
        finally:
            self.retrying -= retried

    async def _post(self, msg_id: str, data: bytes) -> tuple[str | None, float]:
        """One try: None when answered 2xx, else what failed (and a Retry-After in s)."""
        assert self.http is not None
        now = datetime.now(UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.hook.sign(msg_id, now, data.decode()),
        }
        try:
            async with self.http.post(
                self.sub.url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                await resp.content.read(BODY_READ)  # (read: the connection is kept)
                if 200 <= resp.status < 300:
                    return None, 0.0
                return f"HTTP {resp.status}", _retry_after(resp.headers.get("retry-after"))
        except TimeoutError:
            return f"no answer within {self.cfg.timeout_s:g} s", 0.0
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500], 0.0

    def _give_up(self, item: Item, attempts: int, error: str) -> None:
        self.counts["given_up"] += 1
        entry = {
            "subscriber": self.sub.id, **item.where, self.source.body_name: orjson.loads(item.body),
            "attempts": attempts, "error": error, "given_up_at": iso_ms(int(time.time() * 1000)),
        }  # fmt: skip
        self.given_up.append(orjson.dumps(entry))


class Deliverer:
    """Delivers each source to every subscriber of the loaded catalog while it holds the
    lease (following the subscribers when the catalog's version moves, and the shards once
    they are fixed); trims the feed."""

    def __init__(
        self, url: str, say: Callable[[str], None] = print, cfg: DeliverySettings | None = None
    ) -> None:
        self.say = say
        self.cfg = cfg or DeliverySettings.from_env()
        store = Store.connect(url)
        # the instance (a Redis dataset's own id) keeps ids unique if the dataset starts again
        prefix = f"msg_{instance_id(store)[:12]}_"
        cluster = isinstance(store.r, RedisCluster)
        store.r.close()
        self.r: Any = (aredis.RedisCluster if cluster else aredis.Redis).from_url(url)
        self._lease = self.r.register_script(lua("lease"))
        self._write = self.r.register_script(lua("delivery_commit"))
        self.sources: list[Source] = [FeedSource(prefix), RecordSource(prefix)]
        self.token: str | None = None
        self.runs: dict[tuple[str, str], Subscription] = {}  # (source name, subscriber id)
        self.version: Any = None  # (catalog version, shards) the runs follow
        self.renewed = self.trimmed = float("-inf")
        self.away = False

    async def run(self, stop: threading.Event, published: threading.Event | None = None) -> None:
        """Deliver until ``stop`` is set; then, once ``published`` is (the publisher's last
        round), go on until every subscriber has what was published (and every record
        written) or ``drain_s`` passed; then give the lease back."""
        try:
            while not stop.is_set():
                await self.tick()
                await asyncio.sleep(COMMIT_S)
            await self._drain(published)
        finally:
            await self._standby(final=True)
            await self.r.aclose()

    async def tick(self) -> None:
        """One round: keep the lease, follow the catalog, commit, trim when due."""
        try:
            now = time.monotonic()
            if now - self.renewed >= RENEW_S:
                await self._lead()
                self.renewed = now
            if self.token is None:
                return
            await self._sync()
            for run in list(self.runs.values()):
                await self._commit(run)
            if now - self.trimmed >= self.cfg.trim_s:
                await self._trim()
                self.trimmed = now
            if self.away:
                self.say("deliveries: Redis is back")
                self.away = False
        except LeaseLost:
            self.say("deliveries: another deliverer took the lease; standing by")
            await self._standby(final=False)
        except TRANSIENT as exc:
            if not self.away:
                self.say(f"deliveries: Redis is away ({exc}); trying again")
                self.away = True

    # -- helpers ---------------------------------------------------------------------------

    async def _lead(self) -> None:
        """Take or renew the lease; on losing it, stop delivering."""
        got = await self._lease(
            keys=[keys.FEED_DELIVERY_LEASE], args=[self.token or "", uuid.uuid4().hex, LEASE_MS]
        )
        token = got.decode() if got else None
        if token != self.token:
            if self.token is not None:
                raise LeaseLost
            self.say("deliveries: delivering (this process holds the lease)")
            self.token, self.version = token, None

    async def _sync(self) -> None:
        """Follow the catalog's subscribers of each source (and the shards, once fixed)."""
        version = (await self.r.get(keys.CATALOG_VERSION), await self.r.get(keys.SHARDS))
        if version == self.version:
            return
        raw = await self.r.get(keys.CATALOG)
        cat = catalog_decoder.decode(raw) if raw else None
        for source in self.sources:
            await self._follow(source, source.subscribers(cat) if cat else [])
        self.version = version

    async def _follow(self, source: Source, subscribers: Sequence[Any]) -> None:
        """A changed or removed subscriber is stopped (its progress kept), a new or changed
        one starts from its progress (none: the start of each stream)."""
        streams = await source.streams(self.r)
        subs = {s.id: s for s in subscribers} if streams else {}
        for (name, sid), run in list(self.runs.items()):
            if name == source.name and (subs.get(sid) != run.sub or run.keys != streams):
                await run.close()
                await self._commit(run)
                del self.runs[(name, sid)]
        for sid, sub in subs.items():
            if (source.name, sid) in self.runs:
                continue
            names = [source.field(sid, i) for i in range(len(streams))]
            stored = await self.r.hmget(source.ks.progress, names)
            starts = [source.start(v) for v in stored]
            parts = [
                Stream(i, key, name, source.resume(at), Window(at, source.before))
                for i, (key, name, at) in enumerate(zip(streams, names, starts, strict=True))
            ]
            run = Subscription(source, sub, parts, self.cfg, self.r, self.say)
            run.start()
            self.runs[(source.name, sid)] = run
            where = f"seq {starts[0]}" if len(starts) == 1 else f"{len(starts)} streams"
            self.say(f"deliveries: {sid} -> {sub.url}: {source.name} from {where}")

    async def _commit(self, run: Subscription) -> None:
        c = run.pending()
        if c is None or self.token is None:
            return
        if not await self._write(keys=list(run.source.ks), args=c.args(self.token, run.sub.id)):
            raise LeaseLost
        run.committed(c)

    async def _trim(self) -> None:
        for source in self.sources:
            subs = [sid for name, sid in self.runs if name == source.name]
            await source.trim(self.r, self.cfg.keep, subs)

    async def _lasts(self) -> dict[str, Any]:
        """The place of the last item of every stream followed."""
        out: dict[str, Any] = {}
        for run in self.runs.values():
            for key in run.keys:
                if key not in out:
                    out[key] = await run.source.last(self.r, key)
        return out

    async def _drain(self, published: threading.Event | None) -> None:
        """Deliver what was published (the publisher's last round included) and written,
        ``drain_s`` at most; nothing when another deliverer holds the lease."""
        deadline = time.monotonic() + self.cfg.drain_s
        while published is not None and not published.is_set():
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(COMMIT_S)
        lasts: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            await self.tick()
            if self.token is None:
                return
            try:
                lasts = await self._lasts() if lasts is None else lasts
            except TRANSIENT:
                pass
            if lasts is not None and all(run.caught_up(lasts) for run in self.runs.values()):
                return
            await asyncio.sleep(COMMIT_S)

    async def _standby(self, final: bool) -> None:
        """Stop every subscriber's deliveries; ``final``: commit them and give the lease
        back."""
        for run in self.runs.values():
            await run.close()
        if final and self.token is not None:
            try:
                for run in self.runs.values():
                    await self._commit(run)
                await self._lease(keys=[keys.FEED_DELIVERY_LEASE], args=[self.token, "", 0])
            except (LeaseLost, *TRANSIENT):
                pass  # the next deliverer starts from the last commit
        self.runs.clear()
        self.token, self.version = None, None


def run(
    url: str,
    say: Callable[[str], None],
    stop: threading.Event,
    published: threading.Event | None = None,
    cfg: DeliverySettings | None = None,
) -> None:
    """The deliverer in this thread, until ``stop`` (see ``Deliverer.run``)."""
    asyncio.run(Deliverer(url, say, cfg).run(stop, published))
