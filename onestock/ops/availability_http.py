"""``GET /availability`` of ``onestock serve`` (an ASGI handler) and how it reads Redis.

Query: ``channel=C`` (optional: every channel), ``skus=A,B,...`` and/or repeated ``sku=S``
(optional: every catalog SKU; at most ``MAX_SKUS``). Answers: 200 with the contract's
document (``onestock.ops.availability``), a strong ETag (a hash of the exact body) and
``Cache-Control: no-cache``; 304 with no body when ``If-None-Match`` names that ETag; 404
for an unknown channel; 400 for a bad query; 503 when no catalog is loaded or Redis is away.

The stock is read for every request, many SKUs in one round trip; the parsed catalog is kept
per catalog version. Reads go to the deciding Redis, or to a replica of it named by
``ONESTOCK_AVAILABILITY_REDIS_URL`` (its reads never wait behind a decision's script).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.connection import UnixDomainSocketConnection, parse_url

from onestock.domain.types import catalog_decoder
from onestock.ops.availability import (
    NO_CATALOG,
    AvailabilityError,
    Model,
    encode,
    received_reads,
    settle,
    unknown_channel,
    wire_pack,
)
from state import keys
from state.conn import TRANSIENT

MAX_SKUS = 1000  # SKUs one request may name
# a replica of the deciding Redis for GET /availability to read (default: the deciding one)
REPLICA_ENV = "ONESTOCK_AVAILABILITY_REDIS_URL"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
UNREACHABLE = (*TRANSIENT, OSError, TimeoutError)
TIMEOUT_S = 5.0  # one request's reads, all round trips together
# Which catalog is loaded: its version, and its size (a FLUSHALL and a load start the
# version again at 1; a different catalog of the same version and size is not looked for).
_WHICH: list[tuple[Any, ...]] = [("GET", keys.CATALOG_VERSION), ("STRLEN", keys.CATALOG)]


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]  # (.., .., its hiredis.Reader)


class Sockets:
    """One Redis server over plain asyncio sockets: a pool of connections, each round trip
    one write of hiredis-packed commands whose replies hiredis parses as they arrive.

    Measured on this project's 2-core machine: 100 HGETALLs in one round trip cost 0.13 ms
    of client CPU this way, 1.5 ms through redis-py's asyncio pipeline (which reads each
    reply under its own timeout); a Redis Cluster, or TLS, keeps redis-py."""

    def __init__(self, url: str, keep: int = 64) -> None:
        params = parse_url(url)
        self.path: str | None = params.get("path")
        self.host, self.port = params.get("host", "localhost"), params.get("port", 6379)
        self.hello: list[tuple[Any, ...]] = []
        if params.get("password") is not None:
            user = [params["username"]] if params.get("username") else []
            self.hello.append(("AUTH", *user, params["password"]))
        if params.get("db"):
            self.hello.append(("SELECT", params["db"]))
        self.keep = keep
        self.idle: list[Conn] = []

    async def round_trip(self, data: bytes, n: int) -> list[Any]:
        """The ``n`` replies to the packed commands ``data`` (read commands: when a pooled
        connection turns out closed by Redis, a restart, the pool goes and they are sent
        again on a new connection)."""
        if self.idle:
            try:
                return await self._use(self.idle.pop(), data, n)
            except OSError:
                self.close()
        return await self._use(await self._open(), data, n)

    async def _use(self, conn: Conn, data: bytes, n: int) -> list[Any]:
        try:
            replies = await _exchange(conn, data, n)
        except BaseException:  # broken, timed out or cancelled half way: never reused
            conn[1].close()
            raise
        if len(self.idle) < self.keep:
            self.idle.append(conn)
        else:
            conn[1].close()
        return _checked(replies)

    async def _open(self) -> Conn:
        if self.path is not None:
            reader, writer = await asyncio.open_unix_connection(self.path)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = (reader, writer, hiredis.Reader())
        if self.hello:
            try:
                _checked(await _exchange(conn, wire_pack(self.hello), len(self.hello)))
            except BaseException:
                writer.close()
                raise
        return conn

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


def _checked(replies: list[Any]) -> list[Any]:
    """The replies, unless Redis answered one with an error (LOADING, NOAUTH, ...)."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise AvailabilityError(f"Redis answered: {reply}", 503)
    return replies


async def _exchange(conn: Conn, data: bytes, n: int) -> list[Any]:
    reader, writer, parser = conn
    writer.write(data)
    out: list[Any] = []
    while len(out) < n:
        reply = parser.gets()
        if reply is False:
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            parser.feed(chunk)
        else:
            out.append(reply)
    return out


class Availability:
    """``GET /availability`` of ``onestock serve`` (an ASGI handler; ``start`` it in the
    app's startup). The parsed catalog is kept per catalog version (the version is read in
    the same round trip as the stock); the stock is read for every request."""

    def __init__(self, redis_url: str) -> None:
        # A replica of the deciding Redis, where the operator names one: its reads never
        # wait behind a decision's script (the figures then lag the decisions by the
        # replication delay).
        self.replica = os.environ.get(REPLICA_ENV) or None
        self.url = self.replica or redis_url
        self.model: Model | None = None
        self.sockets: Sockets | None = None
        self.client: Any = None  # redis-py's asyncio client, where plain sockets cannot go
        self._loading: asyncio.Lock | None = None

    def start(self, client: Any) -> None:
        """``client``: the app's redis-py asyncio client, for a Redis Cluster or TLS (unless
        a replica is named: then a client of the replica)."""
        if self.replica is not None:
            client = aioredis.Redis.from_url(self.replica, socket_connect_timeout=2)
        self.client = client
        plain = parse_url(self.url).get("connection_class") in (None, UnixDomainSocketConnection)
        if isinstance(client, aioredis.Redis) and plain:
            self.sockets = Sockets(self.url)

    async def stop(self) -> None:
        if self.sockets is not None:
            self.sockets.close()

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 with the document and its ETag; 304 when If-None-Match has that ETag."""
        try:
            channel, skus = parse_query(scope["query_string"])
            async with asyncio.timeout(TIMEOUT_S):
                body = encode(await self.document(channel, skus))
        except AvailabilityError as exc:
            await _answer(send, exc.http, orjson.dumps({"error": str(exc)}))
            return
        except UNREACHABLE as exc:
            error = orjson.dumps({"error": f"Redis is unreachable: {exc or 'timed out'}"})
            await _answer(send, 503, error, [(b"retry-after", b"1")])
            return
        tag = b'"' + hashlib.blake2b(body, digest_size=8).hexdigest().encode() + b'"'
        headers = [(b"etag", tag), (b"cache-control", b"no-cache")]
        if _matches(scope["headers"], tag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await _answer(send, 200, body, headers)

    async def document(self, channel: str | None, skus: list[str] | None) -> dict[str, Any]:
        """The contract's document for the query (unknown SKUs left out)."""
        model = self.model or await self._load(None)
        for _ in range(3):
            known = channel is None or channel in model.online
            names = model.skus if skus is None else model.known(skus) if known else []
            at_ms = int(time.time() * 1000)
            replies = await self._reads(model, names, _WHICH)
            if (int(replies[0] or 0), replies[1]) == (model.version, model.size):
                if not known:  # (judged by the catalog loaded now)
                    raise unknown_channel(channel or "")
                stocks, pending = model.decode(names, replies[2:])
                if pending:
                    settle(stocks, pending, await self._commands(received_reads(pending)))
                return model.document(stocks, channel, at_ms)
            model = await self._load(model)  # a catalog was loaded since: read it first
        raise AvailabilityError("the catalog keeps changing; try again", 503)

    async def _load(self, stale: Model | None) -> Model:
        """The loaded catalog's ``Model`` (read once, by one request, per version)."""
        self._loading = self._loading or asyncio.Lock()
        async with self._loading:
            if self.model is not None and self.model is not stale:
                return self.model  # another request read it meanwhile
            raw, version = await self._commands([("GET", keys.CATALOG), _WHICH[0]])
            if raw is None:
                self.model = None
                raise AvailabilityError(NO_CATALOG, 503)
            self.model = Model(int(version or 0), catalog_decoder.decode(raw), len(raw))
            return self.model

    async def _reads(
        self, model: Model, names: Sequence[str], first: list[tuple[Any, ...]]
    ) -> list[Any]:
        """The replies to ``first``, then to the reads of ``names``: one round trip."""
        if self.sockets is not None:
            data, n = model.packed(names)
            return await self.sockets.round_trip(wire_pack(first) + data, n + len(first))
        return await self._commands([*first, *(c for s in names for c in model.reads(s))])

    async def _commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self.sockets is not None:
            return await self.sockets.round_trip(wire_pack(commands), len(commands))
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())


def parse_query(query: bytes) -> tuple[str | None, list[str] | None]:
    """``channel=C`` (at most once), ``skus=A,B,...`` and/or repeated ``sku=S``: the channel
    (None: every channel) and the SKUs, once each (None: every catalog SKU)."""
    channel: str | None = None
    skus: list[str] | None = None
    try:
        pairs = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True,
                          max_num_fields=MAX_SKUS + 8)  # fmt: skip
    except ValueError:
        raise AvailabilityError(f"at most {MAX_SKUS} SKUs per request", 400) from None
    for name, value in pairs:
        if name == "channel":
            if channel is not None:
                raise AvailabilityError("channel= may be given once", 400)
            channel = value
        elif name in ("skus", "sku"):
            skus = (skus or []) + (value.split(",") if name == "skus" else [value])
        else:
            raise AvailabilityError(f"unknown query parameter {name!r} (channel, skus, sku)", 400)
    if skus is not None:
        skus = [s for s in dict.fromkeys(skus) if s]
        if not skus:
            raise AvailabilityError("skus= names no SKU", 400)
        if len(skus) > MAX_SKUS:
            raise AvailabilityError(f"at most {MAX_SKUS} SKUs per request, not {len(skus)}", 400)
    return channel, skus


def _matches(headers: list[tuple[bytes, bytes]], tag: bytes) -> bool:
    """Whether an If-None-Match header names ``tag`` (or is ``*``); weak tags compare too."""
    for name, value in headers:
        if name == b"if-none-match":
            for item in value.split(b","):
                item = item.strip()
                if item == b"*" or item.removeprefix(b"W/") == tag:
                    return True
    return False


async def _answer(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})
