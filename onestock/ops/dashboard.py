"""The ops pages of ``onestock serve``: ``/`` (live dashboard), ``/events`` (its server-sent
events, one reading a second), ``/api/live`` (the same reading once, JSON), ``/metrics``
(Prometheus) and ``/static/plotly.min.js`` (the charting library, served from the installed
``plotly`` package: nothing third-party is committed to this repository).

Readings come from Redis (``onestock.ops.metrics``): every server process shows the whole
pipeline. One sampler task per process reads once a second while a page is open and every
open page gets the same reading.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from onestock.ops.live import Live
from onestock.ops.metrics import PipelineCollector, Reader
from state.store import Store

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PAGE = Path(__file__).with_name("dashboard.html")
IDLE_S = 10.0  # the sampler stops this long after the last page closed
STREAM_S = 300.0  # one event stream's lifetime; the browser reconnects at once


def _plotly_js() -> bytes:
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()


class Dashboard:
    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.store: Store | None = None
        self.live: Live | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.latest: bytes | None = None  # the last reading, as a server-sent event
        self.tick = asyncio.Event()
        self.clients = 0
        self.closing = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None
        self._js: tuple[bytes, bytes] | None = None  # plotly.min.js, plain and gzipped
        self._page = PAGE.read_bytes()

    def start(self) -> None:
        self.store = Store.connect(self.url)
        self.live = Live(Reader(self.store))
        self.registry.register(PipelineCollector(Reader(self.store)))
        self._chain_signals()

    def _chain_signals(self) -> None:
        """Open event streams never end by themselves: on SIGTERM/SIGINT they end at once,
        so the server's graceful shutdown is not held up by a dashboard left open."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = signal.getsignal(sig)

            def handler(signum: int, frame: Any, before: Any = before) -> None:
                loop.call_soon_threadsafe(self.closing.set)
                if callable(before):
                    before(signum, frame)

            signal.signal(sig, handler)

    async def stop(self) -> None:
        self.closing.set()
        if self._sampler is not None:
            self._sampler.cancel()

    # -- endpoints -------------------------------------------------------------------------

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _plain(send, 200, self._page, b"text/html; charset=utf-8")

    async def plotly(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._js is None:
            js = await asyncio.to_thread(_plotly_js)
            self._js = (js, await asyncio.to_thread(gzip.compress, js, 6))
        gz = any(k == b"accept-encoding" and b"gzip" in v for k, v in scope["headers"])
        body = self._js[1] if gz else self._js[0]
        extra = [(b"content-encoding", b"gzip")] if gz else []
        extra.append((b"cache-control", b"public, max-age=86400"))
        await _plain(send, 200, body, b"application/javascript", extra)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await asyncio.to_thread(generate_latest, self.registry)
        await _plain(send, 200, body, CONTENT_TYPE_LATEST.encode())

    async def snapshot(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._ensure_sampler()
        if self.latest is None:
            await asyncio.wait_for(self.tick.wait(), timeout=5.0)
        assert self.latest is not None
        await _plain(send, 200, self.latest[6:-2], b"application/json")

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-sent events: the newest reading now, then one per second."""
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no")],
        })  # fmt: skip
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        self.clients += 1
        self._ensure_sampler()
        ends = time.monotonic() + STREAM_S
        try:
            await send({"type": "http.response.body", "body": b"retry: 500\n\n", "more_body": True})
            while not gone.is_set() and not self.closing.is_set() and time.monotonic() < ends:
                if self.latest is not None:
                    await send(
                        {"type": "http.response.body", "body": self.latest, "more_body": True}
                    )
                tick = self.tick
                waits = [asyncio.ensure_future(e.wait()) for e in (tick, gone, self.closing)]
                _, pending = await asyncio.wait(
                    waits, timeout=15.0, return_when=asyncio.FIRST_COMPLETED
                )
                for w in pending:
                    w.cancel()
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.clients -= 1
            watcher.cancel()

    # -- the sampler -----------------------------------------------------------------------

    def _ensure_sampler(self) -> None:
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        assert self.live is not None
        idle_since = time.monotonic()
        while not self.closing.is_set():
            started = time.monotonic()
            try:
                view = await asyncio.to_thread(self.live.sample)
                view["ok"] = True
            except Exception as exc:  # noqa: BLE001 - shown on the page; the next second retries
                view = {"ok": False, "error": f"cannot read Redis: {exc}", "at": time.time()}
            self.latest = b"data: " + orjson.dumps(view) + b"\n\n"
            tick, self.tick = self.tick, asyncio.Event()
            tick.set()
            if self.clients > 0:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_S:
                return
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


Headers = list[tuple[bytes, bytes]]


async def _plain(
    send: Send, status: int, body: bytes, ctype: bytes, extra: Headers | None = None
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
