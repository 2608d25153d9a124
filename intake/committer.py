"""Group commit: concurrent requests' events appended in one Redis round trip.

Requests put (shard, dedup key, events) on a queue and await their result. One flusher takes
everything queued, sends one ``intake.lua`` call per shard in one pipeline, and resolves each
request's future with its outcome; whatever arrives during a flush goes in the next one. At
low load a flush holds one event (no added wait); at high load a flush holds hundreds, and
Redis sees one round trip for all of them. A delivery's events (a refund that restocks at
two locations is two return events, all of one order, so of one shard) travel as one item:
stored together or not at all, deduplicated on the delivery's one key.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections import defaultdict
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from state import conn, keys

# Redis away (as the dataflow's Waiter sees it), or the socket refused outright
TRANSIENT = (*conn.TRANSIENT, OSError)


# (shard, dedup key or None, the delivery's raw events, its result: True stored, False a dup)
_Item = tuple[int, str | None, list[bytes], asyncio.Future[bool]]


class Unavailable(Exception):
    """Redis could not store the event; the request gets 503 and nothing was acknowledged."""


class Committer:
    def __init__(self, client: Any, shards: int, ttl_s: int, max_batch: int = 2000) -> None:
        self.r = client
        self.shards = shards
        self.ttl_s = ttl_s
        self.max_batch = max_batch
        self.queue: list[_Item] = []
        self.wake = asyncio.Event()
        self.lengths = [0] * shards  # input stream length per shard, as last seen
        self.script = importlib.resources.files("state").joinpath("lua/intake.lua").read_text()
        self.sha: str | None = None
        self.closing = False
        self.flushes = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Events in the input streams (not yet trimmed by the dataflow), as last seen."""
        return sum(self.lengths)

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Flush what is queued, then stop (graceful shutdown: no acknowledged event lost)."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task

    async def submit_all(self, shard: int, dedup_key: str | None, raws: list[bytes]) -> bool:
        """Store one delivery's events (at least one, all of ``shard``) together: True all
        appended, False a duplicate delivery (none appended). Raises Unavailable."""
        if not raws:
            raise ValueError("a delivery holds at least one event")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.queue.append((shard, dedup_key, raws, fut))
        self.wake.set()
        return await fut

    async def refresh_lengths(self) -> None:
        """Read every shard's length (the dataflow trims them; appends only see their own)."""
        if isinstance(self.r, RedisCluster):
            got = await asyncio.gather(*(self.r.xlen(keys.inbox(s)) for s in range(self.shards)))
        else:
            pipe = self.r.pipeline(transaction=False)
            for s in range(self.shards):
                pipe.xlen(keys.inbox(s))
            got = await pipe.execute()
        self.lengths = [int(n) for n in got]

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
                await self._flush(batch)
            if self.closing:
                return

    async def _flush(self, batch: list[_Item]) -> None:
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, (shard, _, _, _) in enumerate(batch):
            by_shard[shard].append(i)
        calls = []
        for shard, idx in by_shard.items():
            ks: list[str] = [keys.inbox(shard)]
            args: list[Any] = [self.ttl_s, len(idx)]
            for i in idx:
                _, dedup, raws, _ = batch[i]
                if dedup is not None:
                    ks.append(dedup)
                args += [0 if dedup is None else len(ks), len(raws), *raws]
            calls.append((shard, idx, ks, args))
        try:
            results = await self._send(calls)
        except TRANSIENT as exc:
            for _, _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(Unavailable(f"Redis is unreachable: {exc}"))
            return
        self.flushes += 1
        for (shard, idx, _, _), res in zip(calls, results, strict=True):
            self.lengths[shard] = int(res[0])
            for i, flag in zip(idx, res[1:], strict=True):
                fut = batch[i][3]
                if not fut.done():
                    fut.set_result(bool(flag))

    async def _send(self, calls: list[tuple[int, list[int], list[str], list[Any]]]) -> list[Any]:
        if self.sha is None:
            self.sha = await self.r.script_load(self.script)
        try:
            return await self._evalsha_all(calls)
        except redis.exceptions.NoScriptError:  # Redis restarted: its script cache is empty
            self.sha = await self.r.script_load(self.script)
            return await self._evalsha_all(calls)

    async def _evalsha_all(
        self, calls: list[tuple[int, list[int], list[str], list[Any]]]
    ) -> list[Any]:
        sha = self.sha
        assert sha is not None
        if isinstance(self.r, RedisCluster):  # one call per shard, each routed to its slot
            return list(
                await asyncio.gather(
                    *(self.r.evalsha(sha, len(ks), *ks, *args) for _, _, ks, args in calls)
                )
            )
        pipe = self.r.pipeline(transaction=False)
        for _, _, ks, args in calls:
            pipe.evalsha(sha, len(ks), *ks, *args)
        return list(await pipe.execute())


def connect(url: str) -> Any:
    """An asyncio client for ``url`` (a Redis Cluster node is detected, not configured)."""
    probe = conn.connect(url)
    cluster = not isinstance(probe, redis.Redis)
    probe.close()
    if cluster:
        return RedisCluster.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
    )
