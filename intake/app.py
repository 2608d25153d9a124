"""The intake's ASGI application (served by uvicorn with uvloop and httptools).

A plain ASGI callable rather than a framework: the hot path is one route and measured 26k
signed requests/s bare against Starlette's 16-17k on this machine (docs/decisions.md,
"uvicorn with a plain ASGI app").

Per request, in this order: read the raw bytes (413 past the limit), verify the signature on
those bytes with a constant-time compare (401), refuse a stale signed timestamp (401), parse
and map (400 with the reason), refuse when Redis is away or the backlog is past its bound
(503 with ``Retry-After``), store (group commit), and only then answer 202 (200 for a
duplicate delivery, stored before, and for a delivery that maps to no event: a refund that
restocks nothing, an order update that changes no stock). No business logic: the dataflow
decides.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from intake import access, mapping, signing
from intake.committer import TRANSIENT, Committer, Unavailable, connect
from onestock.domain import events
from onestock.domain.sharding import shard_of, shard_of_id
from onestock.ops.availability_http import Availability
from onestock.ops.dashboard import Dashboard
from state import keys

REQUESTS, EVENTS = keys.INTAKE_REQUESTS, keys.INTAKE_EVENTS  # the kinds of counts

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]
MAX_DELIVERY_ID = 256
SOURCES = {"/webhooks/shopify": "shopify", "/webhooks/woocommerce": "woocommerce",
           "/orders": "orders", "/movements": "movements"}  # fmt: skip
# request outcome counted per source (onestock_intake_requests_total) for a refusal's status
REFUSALS = {400: "invalid", 401: "unauthorized", 404: "not_configured", 413: "too_large",
            503: "unavailable"}  # fmt: skip


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or ""
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class IntakeSettings:
    redis_url: str
    shopify_secret: bytes | None = None
    shopify_channel: str = "shopify"
    woo_secret: bytes | None = None
    woo_channel: str = "woocommerce"
    orders_secret: bytes | None = None
    orders_webhook: Webhook | None = None  # ONESTOCK_ORDERS_WEBHOOK_SECRET (Standard Webhooks)
    shopify_locations: dict[str, str] = field(default_factory=dict)  # Shopify id -> catalog
    movements_secret: bytes | None = None  # (unset: the orders secret signs movements too)
    vip_tag: str = "VIP"
    max_body: int = 1 << 20  # bytes
    max_backlog: int = 2_000_000  # events in the input streams; beyond: 503
    dedup_ttl_s: int = 72 * 3600  # how long a delivery id is remembered
    shards: int = 16
    ops_port: int | None = None  # the ops listener's port: ops endpoints answer only there
    tokens: list[access.Token] = field(default_factory=list)  # ONESTOCK_OPS_TOKENS

    @classmethod
    def from_env(cls, redis_url: str, shards: int) -> IntakeSettings:
        def secret(name: str) -> bytes | None:
            value = os.environ.get(name)
            return value.encode() if value else None

        return cls(
            redis_url=redis_url,
            shopify_secret=secret("ONESTOCK_SHOPIFY_SECRET"),
            shopify_channel=os.environ.get("ONESTOCK_SHOPIFY_CHANNEL") or "shopify",
            woo_secret=secret("ONESTOCK_WOO_SECRET"),
            woo_channel=os.environ.get("ONESTOCK_WOO_CHANNEL") or "woocommerce",
            orders_secret=secret("ONESTOCK_ORDERS_SECRET"),
            orders_webhook=_standard_webhook("ONESTOCK_ORDERS_WEBHOOK_SECRET"),
            shopify_locations=_locations("ONESTOCK_SHOPIFY_LOCATIONS"),
            movements_secret=secret("ONESTOCK_MOVEMENTS_SECRET"),
            vip_tag=os.environ.get("ONESTOCK_VIP_TAG") or "VIP",
            max_body=_env_int("ONESTOCK_INTAKE_MAX_BODY", 1 << 20),
            max_backlog=_env_int("ONESTOCK_INTAKE_MAX_BACKLOG", 2_000_000),
            # delivery ids are remembered for the idempotency window (docs/memory.md)
            dedup_ttl_s=_env_int("ONESTOCK_DEDUP_TTL_S", events.WINDOW_MS // 1000),
            shards=shards,
            ops_port=_env_int("ONESTOCK_INTAKE_OPS_PORT", 0) or None,
            tokens=_tokens(),
        )


def _standard_webhook(name: str) -> Webhook | None:
    value = os.environ.get(name)
    try:
        return signing.standard_webhook(value, name) if value else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _locations(name: str) -> dict[str, str]:
    """``{"<Shopify location id>": "<catalog location id>"}`` from JSON in ``name``."""
    raw = os.environ.get(name) or ""
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"{name} is not JSON: {exc}") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise SystemExit(f'{name} must be a JSON object {{"<Shopify location id>": "<location>"}}')
    return {str(k): v for k, v in parsed.items()}


def _tokens() -> list[access.Token]:
    try:
        return access.parse_tokens(os.environ.get("ONESTOCK_OPS_TOKENS"))
    except access.AccessError as exc:
        raise SystemExit(str(exc)) from None


class _Refused(Exception):
    def __init__(self, status: int, error: str, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.retry_after = status, error, retry_after


class IntakeApp:
    def __init__(self, settings: IntakeSettings) -> None:
        self.s = settings
        self.committer: Committer | None = None
        self.redis: Any = None
        self.stored = self.duplicates = 0
        # outcomes not yet added to Redis: "r:<source>:<outcome>" requests, "e:<source>" events
        self.counts: Counter[str] = Counter()
        self._refresher: asyncio.Task[None] | None = None
        self.dashboard = Dashboard(settings.redis_url)
        self.availability = Availability(settings.redis_url)
        self.routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/webhooks/shopify"): self.shopify,
            ("POST", "/webhooks/woocommerce"): self.woocommerce,
            ("POST", "/orders"): self.orders,
            ("POST", "/movements"): self.movements,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/"): self.dashboard.page,
            ("GET", "/events"): self.dashboard.events,
            ("GET", "/api/live"): self.dashboard.snapshot,
            ("GET", "/metrics"): self.dashboard.metrics,
            ("GET", "/static/plotly.min.js"): self.dashboard.plotly,
            ("GET", "/availability"): self.availability.get,
        }

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        guarded = access.OPS_PATHS.get(scope["path"])
        if guarded is not None and not await self._may(scope, send, guarded):
            return
        handler = self.routes.get((scope["method"], scope["path"]))
        if handler is None:
            known = any(path == scope["path"] for _, path in self.routes)
            await _reply(send, 405 if known else 404, {"error": "no such endpoint"})
            return
        try:
            await handler(scope, receive, send)
        except _Refused as r:
            source = SOURCES.get(scope["path"])
            if source is not None:
                self.counts[f"{REQUESTS}:{source}:{REFUSALS.get(r.status, str(r.status))}"] += 1
            await _reply(send, r.status, {"error": r.error}, r.retry_after)

    async def _may(self, scope: Scope, send: Send, guarded: str) -> bool:
        """Whether a request to an ops endpoint (``guarded``: its scope) may go on; else it
        is answered: 404 on the main listener when an ops listener is configured (the
        endpoint is not there), 401 with an empty body without a token for the scope."""
        ops_port = self.s.ops_port
        if ops_port is not None and (scope.get("server") or (None, None))[1] != ops_port:
            await _reply(send, 404, {"error": "no such endpoint"})
            return False
        if self.s.tokens and not access.allowed(self.s.tokens, scope["headers"], guarded):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [*access.CHALLENGE, (b"content-length", b"0")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b""})
            return False
        return True

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        self.redis = connect(self.s.redis_url)
        self.committer = Committer(self.redis, self.s.shards, self.s.dedup_ttl_s)
        await self.committer.start()
        self.dashboard.start()
        self.availability.start(self.redis)
        self._refresher = asyncio.create_task(self._every_second())

    async def shutdown(self) -> None:
        """The server stopped taking requests and finished the in-flight ones; flush, close."""
        if self._refresher is not None:
            self._refresher.cancel()
        await self.dashboard.stop()
        if self.committer is not None:
            await self.committer.close()
        try:
            await self._flush_counts()
        except TRANSIENT:
            pass
        if self.redis is not None:
            await self.redis.aclose()

    async def _every_second(self) -> None:
        """The backlog bound's reading, and this process's outcome counts added to Redis."""
        assert self.committer is not None
        while True:
            try:
                await self.committer.refresh_lengths()
                await self._flush_counts()
            except TRANSIENT:
                pass
            await asyncio.sleep(1.0)

    async def _flush_counts(self) -> None:
        if not self.counts:
            return
        counts, self.counts = self.counts, Counter()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for field, n in counts.items():
                pipe.hincrby(keys.INTAKE_COUNTS, field, n)
            await pipe.execute()
        except BaseException:
            self.counts.update(counts)  # not added: the next flush tries again
            raise

    # -- endpoints -------------------------------------------------------------------------

    async def shopify(self, scope: Scope, receive: Receive, send: Send) -> None:
        secret = self._secret(self.s.shopify_secret, "shopify", "ONESTOCK_SHOPIFY_SECRET")
        headers = dict(scope["headers"])
        body = await self._body(scope, receive)
        _verify(signing.verify_base64, secret, body, headers.get(b"x-shopify-hmac-sha256"),
                "X-Shopify-Hmac-SHA256")  # fmt: skip
        topic = headers.get(b"x-shopify-topic", b"orders/create").decode(errors="replace")
        # Deduplicated on the event (one per event, the same across retries and across
        # subscriptions), per topic; without X-Shopify-Event-Id on the delivery id (retries).
        event_id = _delivery_id(headers, b"x-shopify-event-id", "X-Shopify-Event-Id")
        if event_id is not None:
            dedup: tuple[str, str] | None = ("shopify-event", f"{topic}:{event_id}")
        else:
            delivery = _delivery_id(headers, b"x-shopify-webhook-id", "X-Shopify-Webhook-Id")
            dedup = None if delivery is None else ("shopify", delivery)
        mapped = _map(mapping.shopify, topic, body, self.s.shopify_channel, self.s.vip_tag,
                      self.s.shopify_locations)  # fmt: skip
        await self._store(send, mapped, "shopify", dedup)

    async def woocommerce(self, scope: Scope, receive: Receive, send: Send) -> None:
        secret = self._secret(self.s.woo_secret, "woocommerce", "ONESTOCK_WOO_SECRET")
        headers = dict(scope["headers"])
        body = await self._body(scope, receive)
        if b"x-wc-webhook-signature" not in headers and body.startswith(b"webhook_id="):
            # WooCommerce pings a new webhook's URL (unsigned, "webhook_id=N") and keeps the
            # webhook only after a 2xx; nothing is stored.
            self.counts[f"{REQUESTS}:woocommerce:ping"] += 1
            await _reply(send, 200, {"status": "pong"})
            return
        _verify(signing.verify_base64, secret, body, headers.get(b"x-wc-webhook-signature"),
                "X-WC-Webhook-Signature")  # fmt: skip
        topic = headers.get(b"x-wc-webhook-topic", b"order.created").decode(errors="replace")
        delivery = _delivery_id(headers, b"x-wc-webhook-delivery-id", "X-WC-Webhook-Delivery-ID")
        mapped = _map(mapping.woocommerce, topic, body, self.s.woo_channel)
        await self._store(send, mapped, "woocommerce", None if delivery is None else
                          ("woocommerce", delivery))  # fmt: skip

    async def orders(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Canonical events, one object or an array of them, stored as they are: signed with
        ``X-Onestock-Signature``, or per Standard Webhooks (deduplicated on ``webhook-id``)."""
        if self.s.orders_secret is None and self.s.orders_webhook is None:
            either = "ONESTOCK_ORDERS_SECRET or ONESTOCK_ORDERS_WEBHOOK_SECRET"
            raise _Refused(404, f"the orders intake is not configured (set {either})")
        await self._canonical(scope, receive, send, self.s.orders_secret, "orders")

    async def movements(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stock movements (``"type": "movement"``), one object or an array, signed like
        ``/orders``, stored as they are (docs/movements.md)."""
        secret = self._secret(
            self.s.movements_secret or self.s.orders_secret, "movements",
            "ONESTOCK_MOVEMENTS_SECRET or ONESTOCK_ORDERS_SECRET",
        )  # fmt: skip
        await self._canonical(scope, receive, send, secret, "movements")

    async def _canonical(
        self, scope: Scope, receive: Receive, send: Send, secret: bytes | None, source: str
    ) -> None:
        headers = dict(scope["headers"])
        body = await self._body(scope, receive)
        delivery = self._verify_canonical(headers, body, secret, source)
        raws = self._events(body, source == "movements")
        self._admit()
        committer = self.committer
        assert committer is not None
        by_shard: dict[int, list[bytes]] = {}
        for shard, raw in raws:
            by_shard.setdefault(shard, []).append(raw)
        # one delivery id, remembered in each shard its events go to: a retry after a
        # partial store (Redis failed half way) stores exactly the shards that were missed
        dedup = {s: None if delivery is None else keys.delivery(s, source, delivery)
                 for s in by_shard}  # fmt: skip
        try:
            fresh = await asyncio.gather(
                *(committer.submit_all(s, dedup[s], group) for s, group in by_shard.items())
            )
        except Unavailable as exc:
            raise _Refused(503, str(exc), retry_after=1) from None
        n = sum(len(group) for group, new in zip(by_shard.values(), fresh, strict=True) if new)
        if n == 0:
            self.duplicates += 1
            self.counts[f"{REQUESTS}:{source}:duplicate"] += 1
            await _reply(send, 200, {"status": "duplicate", "events": 0})
            return
        self.stored += n
        self.counts[f"{REQUESTS}:{source}:stored"] += 1
        self.counts[f"{EVENTS}:{source}"] += n
        await _reply(send, 202, {"status": "stored", "events": n})

    def _verify_canonical(
        self, headers: dict[bytes, bytes], body: bytes, secret: bytes | None, source: str
    ) -> str | None:
        """Check a canonical body's signature; its delivery id (``webhook-id``) when it is
        signed per Standard Webhooks (only ``/orders`` takes those), else None."""
        webhook = self.s.orders_webhook if source == "orders" else None
        try:
            if signing.is_standard(headers):
                if webhook is None:
                    why = "ONESTOCK_ORDERS_WEBHOOK_SECRET is not set" if source == "orders" else (
                        f"/{source} takes X-Onestock-Signature only")  # fmt: skip
                    raise signing.SignatureError(f"signed per Standard Webhooks, but {why}")
                signing.verify_standard(webhook, body, headers)
                return _delivery_id(headers, b"webhook-id", "webhook-id")
            if secret is None:
                raise signing.SignatureError(
                    "missing webhook-id, webhook-timestamp, webhook-signature headers (Standard"
                    " Webhooks; X-Onestock-Signature is off: ONESTOCK_ORDERS_SECRET is not set)"
                )
            signing.verify_onestock(secret, body, headers.get(b"x-onestock-signature"), time.time())
        except signing.SignatureError as exc:
            raise _Refused(401, str(exc)) from None
        return None

    def _events(self, body: bytes, movements: bool) -> list[tuple[int, bytes]]:
        """(shard, raw event) of each event of a canonical body (one object or an array);
        ``movements``: every one must be a movement."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Refused(400, f"not JSON: {exc}") from None
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items:
            raise _Refused(400, "an empty array holds no event")
        raws: list[tuple[int, bytes]] = []
        for i, item in enumerate(items):
            where = f" at [{i}]" if isinstance(parsed, list) else ""
            if not isinstance(item, dict):
                raise _Refused(400, f"an event must be a JSON object{where}")
            if movements and item.get("type") != "movement":
                raise _Refused(400, f'only movements ("type": "movement") are taken here{where}')
            raw = body if parsed is item else orjson.dumps(item)
            raws.append((shard_of(raw, self.s.shards), raw))
        return raws

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reply(send, 200, {"status": "ok"})

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready = Redis answers and the backlog is under its bound."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
        except (TimeoutError, *TRANSIENT) as exc:
            raise _Refused(503, f"Redis is unreachable: {exc}", retry_after=1) from None
        self._admit()
        assert self.committer is not None
        await _reply(send, 200, {"status": "ready", "backlog": self.committer.backlog})

    # -- helpers ---------------------------------------------------------------------------

    def _secret(self, secret: bytes | None, name: str, var: str) -> bytes:
        if secret is None:
            raise _Refused(404, f"the {name} intake is not configured (set {var})")
        return secret

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.s.max_body
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise _Refused(413, f"body over {limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Refused(400, "client went away")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Refused(413, f"body over {limit} bytes")
            chunks.append(chunk)
            more = msg.get("more_body", False)
        return b"".join(chunks)

    def _admit(self) -> None:
        assert self.committer is not None
        if self.committer.backlog > self.s.max_backlog:
            raise _Refused(
                503, f"backlog of {self.committer.backlog} events is past its bound", retry_after=1
            )

    async def _store(
        self, send: Send, mapped: mapping.Mapped, source: str, dedup: tuple[str, str] | None
    ) -> None:
        """Store a webhook's events (all of one order: one shard, all or none) under its
        delivery's one dedup key ``(source, id)``; answer 202 stored, 200 duplicate, or 200
        with the outcome of a delivery that maps to no event (nothing stored)."""
        oid = mapped.order_id
        if not mapped.events:
            self.counts[f"{REQUESTS}:{source}:{mapped.outcome}"] += 1
            await _reply(send, 200, {"status": mapped.outcome, "order_id": oid,
                                     "reason": mapped.reason})  # fmt: skip
            return
        self._admit()
        assert self.committer is not None
        shard = shard_of_id(oid, self.s.shards)
        key = keys.delivery(shard, *dedup) if dedup is not None else None
        raws = [orjson.dumps(e) for e in mapped.events]
        try:
            fresh = await self.committer.submit_all(shard, key, raws)
        except Unavailable as exc:
            raise _Refused(503, str(exc), retry_after=1) from None
        more = {"events": len(raws)} if len(raws) > 1 else {}
        if fresh:
            self.stored += len(raws)
            self.counts[f"{REQUESTS}:{source}:stored"] += 1
            self.counts[f"{EVENTS}:{source}"] += len(raws)
            await _reply(send, 202, {"status": "stored", "order_id": oid, **more})
        else:
            self.duplicates += 1
            self.counts[f"{REQUESTS}:{source}:duplicate"] += 1
            await _reply(send, 200, {"status": "duplicate", "order_id": oid, **more})


def _verify(check: Any, secret: bytes, body: bytes, header: bytes | None, name: str) -> None:
    try:
        check(secret, body, header, name)
    except signing.SignatureError as exc:
        raise _Refused(401, str(exc)) from None


def _delivery_id(headers: dict[bytes, bytes], header: bytes, name: str) -> str | None:
    value = headers.get(header)
    if value is None:
        return None
    text = value.decode(errors="replace").strip()
    if not text or len(text) > MAX_DELIVERY_ID or not text.isprintable():
        raise _Refused(400, f"{name} must be 1..{MAX_DELIVERY_ID} printable characters")
    return text


def _map(fn: Callable[..., mapping.Mapped], *args: Any) -> mapping.Mapped:
    try:
        return fn(*args)
    except mapping.MappingError as exc:
        raise _Refused(400, str(exc)) from None


async def _reply(
    send: Send, status: int, payload: dict[str, Any], retry_after: int | None = None
) -> None:
    body = orjson.dumps(payload)
    headers = [*JSON, (b"content-length", b"%d" % len(body))]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> IntakeApp:
    """The app from the environment (uvicorn's factory, also in each worker process)."""
    url = os.environ.get("ONESTOCK_INTAKE_REDIS_URL")
    if not url:
        sys.exit("ONESTOCK_INTAKE_REDIS_URL is not set (onestock serve sets it)")
    return IntakeApp(IntakeSettings.from_env(url, _env_int("ONESTOCK_INTAKE_SHARDS", 16)))
