"""The users of the Double-Eleven scenarios (a scenario binds its own with ``buyers``).

``OrdersHttp`` posts canonical events to ``POST /orders`` signed as the contract says;
``ShopifyHttp`` sends Shopify ``orders/create`` webhooks (HMAC, delivery ids, retries);
``StreamOrders`` appends events straight onto the input streams in Redis (XADD) and fires
Locust request events, to load the dataflow without the HTTP tier. Each runs the open model
(``loadtest.common.Arrivals``) or, with ``--model closed``, the classic Locust one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event
import orjson
from locust import User, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.users import LOCUST_STATE_STOPPING

from intake.signing import sign_onestock
from loadtest.checks import ACKED, ACKED_DEAD
from loadtest.common import (
    MAX_IN_FLIGHT,
    Arrivals,
    Orders,
    options,
    share,
    shopify_body,
    shopify_sign,
)
from onestock.domain.sharding import shard_of_id
from state import keys
from state.store import Store


def save_acks(url: str, ids: list[str], dead: int) -> None:
    """Order ids a user had acknowledged, written to Redis when it stops (one round trip per
    10,000, none per request) so the gate can check each has exactly one outcome."""
    if not url or (not ids and not dead):
        return
    r = Store.connect(url).r
    for i in range(0, len(ids), 10_000):
        r.sadd(ACKED, *ids[i : i + 10_000])
    if dead:
        r.incrby(ACKED_DEAD, dead)


class _Scenario:
    """Mixed into the users: the scenario's rate, order maker and payload mix."""

    rate: Callable[[float, Any], float] = staticmethod(lambda t, o: o.target_rate)  # type: ignore[assignment]
    make_orders: Callable[[], Orders]
    arrivals: Arrivals | None = None

    def _start(self) -> None:
        self.orders = self.make_orders()
        self.acked: list[str] = []  # order ids the intake acknowledged to this user
        self.acked_dead = 0  # acknowledged events that can only become dead letters
        self._share = share(self, self.rate)  # type: ignore[arg-type]
        self._began = self._sent = time.monotonic()

    def _go(self, send: Callable[[float], None]) -> None:
        if options(self).model == "closed":  # type: ignore[arg-type]
            self._sent = time.monotonic()
            send(self._sent)  # one request, then wait_time paces the user
            return
        stopping = lambda: self._state == LOCUST_STATE_STOPPING  # type: ignore[attr-defined]  # noqa: E731
        self.arrivals = Arrivals(self._share, send, stopping)
        self.arrivals.run()  # (the open model: returns only when Locust stops the user)

    def wait_time(self) -> float:
        """The closed model's pacing: the user's share of r(t) with no catching up, so a
        slow answer means fewer requests (the coordinated omission the open model avoids)."""
        now = time.monotonic()
        r = self._share(now - self._began)
        return max(0.0, (1 / r if r > 0 else 0.05) - (now - self._sent))

    def on_stop(self) -> None:
        if self.arrivals is not None:
            self.arrivals.stop()
        acked, self.acked = self.acked, []
        save_acks(options(self).onestock_redis, acked, self.acked_dead)  # type: ignore[arg-type]
        self.acked_dead = 0


@contextmanager
def _post(
    client: Any, path: str, body: bytes, headers: dict[str, str], name: str, due: float
) -> Iterator[Any]:
    """POST ``body`` and give the response to check; its latency counts from ``due``, the
    intended send time (the open model: a stall shows as latency, not as fewer requests)."""
    with client.post(
        path,
        data=body,  # (bytes are sent as they are)
        headers=headers,
        name=name,
        catch_response=True,
    ) as resp:
        resp.request_meta["response_time"] = (time.monotonic() - due) * 1000
        yield resp


class OrdersHttp(_Scenario, FastHttpUser):
    """Canonical events to ``POST /orders``, signed (``X-Onestock-Signature``)."""

    abstract = True
    concurrency = MAX_IN_FLIGHT
    # share of requests sent with something wrong on purpose (bad_payloads), with the status
    # the intake must answer; the rest are good orders
    mistakes: list[tuple[float, str]] = []

    def on_start(self) -> None:
        self._start()
        self.secret = options(self).orders_secret.encode()
        if not self.secret:
            raise RuntimeError("--orders-secret (or ONESTOCK_ORDERS_SECRET) is not set")

    @task
    def buy(self) -> None:
        self._go(self.send)

    def body(self) -> tuple[bytes, str | None, str, int]:
        """(body, order id if acked, request name, expected status)"""
        order = self.orders.next()
        r = self.orders.rnd.random()
        for p, kind in self.mistakes:
            if r < p:
                return _mistake(kind, order)
            r -= p
        return orjson.dumps(order), order["order_id"], "POST /orders", 202

    def send(self, due: float) -> None:
        body, oid, name, expect = self.body()
        secret = self.secret if name != "bad signature" else b"not-the-secret"
        headers = {
            "Content-Type": "application/json",
            "X-Onestock-Signature": sign_onestock(secret, body, int(time.time())),
        }
        with _post(self.client, "/orders", body, headers, name, due) as resp:
            if resp.status_code == expect:
                resp.success()
                if expect == 202:
                    if oid is not None:
                        self.acked.append(oid)
                    else:
                        self.acked_dead += 1
            else:
                resp.failure(f"{resp.status_code} where {expect} was expected: {resp.text[:200]}")


def _mistake(kind: str, order: dict[str, Any]) -> tuple[bytes, str | None, str, int]:
    if kind == "bad signature":
        return orjson.dumps(order), None, kind, 401
    if kind == "not JSON":
        return b'{"order_id": "' + order["order_id"].encode() + b'", oops', None, kind, 400
    if kind == "invalid order":  # stored, then rejected by the dataflow with reason invalid
        order["lines"] = [{"sku": order["lines"][0]["sku"], "qty": 0}]
        return orjson.dumps(order), order["order_id"], kind, 202
    if kind == "no order id":  # stored, then a dead letter
        del order["order_id"]
        return orjson.dumps(order), None, kind, 202
    raise ValueError(kind)


class ShopifyHttp(_Scenario, FastHttpUser):
    """Shopify ``orders/create`` webhooks; ``retry_share`` of them delivered again 1-5 times
    with the same ``X-Shopify-Webhook-Id``, some at once, some after a pause (a retry storm)."""

    abstract = True
    concurrency = MAX_IN_FLIGHT
    retry_share = 0.0

    def on_start(self) -> None:
        self._start()
        self.secret = options(self).shopify_secret
        if not self.secret:
            raise RuntimeError("--shopify-secret (or ONESTOCK_SHOPIFY_SECRET) is not set")
        self.ids = random.Random().randrange(10**12, 10**13)

    @task
    def buy(self) -> None:
        self._go(self.send)

    def send(self, due: float) -> None:
        order = self.orders.next()
        self.ids += 1
        body = shopify_body(order, self.ids)
        headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                   "X-Shopify-Hmac-SHA256": shopify_sign(self.secret, body),
                   "X-Shopify-Webhook-Id": f"{order['order_id']}-d"}  # fmt: skip
        oid = f"shopify-{self.ids}"
        self._deliver(body, headers, oid, due, "webhook")
        if self.orders.rnd.random() < self.retry_share:
            for i in range(self.orders.rnd.randint(1, 5)):
                later = 0.0 if i % 2 == 0 else self.orders.rnd.uniform(0.05, 1.0)
                gevent.spawn_later(later, self._deliver, body, headers, oid,
                                   time.monotonic() + later, "webhook retry")  # fmt: skip

    def _deliver(
        self, body: bytes, headers: dict[str, str], oid: str, due: float, name: str
    ) -> None:
        with _post(self.client, "/webhooks/shopify", body, headers, name, due) as resp:
            if resp.status_code in (200, 202):  # 200: a delivery stored before
                resp.success()
                self.acked.append(oid)
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")


class StreamOrders(_Scenario, User):
    """Events straight onto the input streams (XADD to the order's shard), skipping HTTP.

    In the open model the arrivals queue their events and one writer greenlet appends
    whatever is waiting in one pipelined round trip (as an intake's group commit does), so
    one connection keeps up; each event's latency still counts from its own due time."""

    abstract = True

    def on_start(self) -> None:
        self._start()
        url = options(self).onestock_redis
        if not url:
            raise RuntimeError("--onestock-redis (or ONESTOCK_REDIS_URL) is not set")
        self.store = Store.connect(url)
        self.shards = self.store.shards.shard_count()
        self.waiting: list[tuple[str, bytes, float]] = []
        self.wake = gevent.event.Event()
        self.writer = gevent.spawn(self._write_loop)

    @task
    def buy(self) -> None:
        self._go(self.send)

    def send(self, due: float) -> None:
        order = self.orders.next()
        self.waiting.append((order["order_id"], orjson.dumps(order), due))
        if options(self).model == "closed":  # type: ignore[arg-type]
            self._write()  # the closed model waits for its own answer
        else:
            self.wake.set()

    def _write_loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            self._write()

    def _write(self) -> None:
        batch, self.waiting = self.waiting, []
        if not batch:
            return
        pipe = self.store.r.pipeline(transaction=False)
        for oid, raw, _ in batch:
            pipe.xadd(keys.inbox(shard_of_id(oid, self.shards)), {"e": raw})
        error: Exception | None = None
        try:
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - reported to Locust as failed requests
            error = exc
        fire, now = self.environment.events.request.fire, time.monotonic()
        for oid, raw, due in batch:
            fire(request_type="XADD", name="stream", response_time=(now - due) * 1000,
                 response_length=len(raw), exception=error, context={})  # fmt: skip
            if error is None:
                self.acked.append(oid)

    def on_stop(self) -> None:
        self._write()
        self.writer.kill(block=False)
        super().on_stop()


def buyers(
    rate: Callable[[float, Any], float], make_orders: Callable[[], Orders], module: str
) -> tuple[type[OrdersHttp], type[StreamOrders]]:
    """A scenario's two user classes over its arrival rate and order maker, bound in the
    scenario's module as ``HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)``:
    Locust finds them there, and they are named so on the command line and in reports."""
    attrs = {
        "rate": staticmethod(rate),
        "make_orders": staticmethod(make_orders),
        "__module__": module,
    }
    http = type("HttpBuyers", (OrdersHttp,), dict(attrs))
    stream = type("StreamBuyers", (StreamOrders,), dict(attrs))
    return http, stream
