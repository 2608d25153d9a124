"""What the Double-Eleven scenarios share (one scenario per file beside this one).

**Open model.** An ``Arrivals`` loop sends at the scenario's target rate whatever the
response times: arrival times are drawn in advance (Poisson, at rate r(t)), each request
goes out in its own greenlet at its time, and its latency is measured from that *intended*
send time. A stalled server therefore shows up as latency (and as requests still in flight),
not as fewer requests sent: no coordinated omission. ``--model closed`` runs the same users
the classic Locust way instead (each user waits for its answer, then paces itself with
``constant_throughput``): simpler, but a stall then slows the senders down and hides itself.

**Users**: ``OrdersHttp`` posts canonical events to ``POST /orders`` signed as the contract
says; ``ShopifyHttp`` sends Shopify ``orders/create`` webhooks (HMAC, delivery ids, retries);
``StreamOrders`` appends events straight onto the input streams in Redis (XADD) and fires
Locust request events, to load the dataflow without the HTTP tier.

**Gate** (``loadtest.gate``): after the run, the failure ratio, the p99 (from intended send
times) and invariants read back from Redis once the pipeline has drained.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import gevent
import gevent.event
import orjson
from gevent.pool import Pool
from locust import User, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.users import LOCUST_STATE_STOPPING

from intake.signing import sign_onestock
from loadtest.checks import ACKED, ACKED_DEAD
from onestock.ops import shard_of_id
from state import keys
from state.store import Store

MAX_IN_FLIGHT = 2000  # per user; past it arrivals wait (their latency still counts from due)

# Cities the demo catalog's locations serve (customers are scattered around them).
CITIES = [(31.23, 121.47), (39.90, 116.40), (23.13, 113.26), (30.27, 120.15), (22.54, 114.06),
          (30.57, 104.07), (30.59, 114.31), (32.06, 118.80), (34.34, 108.94)]  # fmt: skip


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("onestock")
    g.add_argument("--onestock-redis", default="", env_var="ONESTOCK_REDIS_URL",
                   help="Redis of the pipeline under test (stream users push there; the gate "
                        "reads it)")  # fmt: skip
    g.add_argument(
        "--target-rate",
        type=float,
        default=100.0,
        help="the scenario's peak orders/s, all users and processes together",
    )
    g.add_argument("--model", choices=["open", "closed"], default="open",
                   help="open: arrivals at the target rate whatever the responses; closed: "
                        "each user waits for its answer")  # fmt: skip
    g.add_argument("--orders-secret", default="", env_var="ONESTOCK_ORDERS_SECRET")
    g.add_argument("--shopify-secret", default="", env_var="ONESTOCK_SHOPIFY_SECRET")
    g.add_argument(
        "--scale",
        type=float,
        default=0.0001,
        help="double_eleven_day: the fraction of a 20-million-order day to replay",
    )
    g.add_argument("--max-failure-ratio", type=float, default=0.01)
    g.add_argument("--max-p99-ms", type=float, default=2000.0)
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds the gate waits for the pipeline to decide what was acked",
    )
    g.add_argument("--verdict", default="", help="also write the gate's verdict here (JSON)")


def options(user: User) -> Any:
    return user.environment.parsed_options


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- orders --------------------------------------------------------------------------------------


class Orders:
    """Canonical order events with ids unique to this user (and run)."""

    def __init__(
        self,
        skus: list[tuple[str, float]],
        channels: list[tuple[str, float]],
        *,
        pickups: list[str] = (),  # type: ignore[assignment]
        pickup_share: float = 0.0,
        basket_share: float = 0.0,
        customers: int = 1_000_000,
        seed: int | None = None,
    ) -> None:
        self.rnd = random.Random(seed)
        self.prefix = f"lt-{uuid.uuid4().hex[:10]}"
        self.n = 0
        self.skus, self.sku_w = [s for s, _ in skus], [w for _, w in skus]
        self.channels, self.chan_w = [c for c, _ in channels], [w for _, w in channels]
        self.pickups, self.pickup_share = list(pickups), pickup_share
        self.basket_share, self.customers = basket_share, customers

    def next(self) -> dict[str, Any]:
        rnd = self.rnd
        self.n += 1
        lat, lon = rnd.choice(CITIES)
        if rnd.random() < self.basket_share and len(self.skus) > 1:
            picked = rnd.sample(self.skus, 2)
            lines = [{"sku": s, "qty": rnd.randint(1, 2)} for s in picked]
        else:
            lines = [{"sku": rnd.choices(self.skus, self.sku_w)[0], "qty": 1}]
        channel = rnd.choices(self.channels, self.chan_w)[0]
        delivery: dict[str, str] = {"mode": "ship"}
        if self.pickups and rnd.random() < self.pickup_share:
            delivery = {"mode": "pickup", "store": rnd.choice(self.pickups)}
        return {
            "order_id": f"{self.prefix}-{self.n}",
            "channel": channel,
            "customer": {
                "id": f"c-{rnd.randrange(self.customers)}",
                "vip": rnd.random() < 0.1,
                "lat": round(lat + rnd.uniform(-0.3, 0.3), 4),
                "lon": round(lon + rnd.uniform(-0.3, 0.3), 4),
            },
            "lines": lines,
            "delivery": delivery,
            "paid_at": now_iso(),
        }


def shopify_body(order: dict[str, Any], shopify_id: int) -> bytes:
    """A Shopify ``orders/create`` payload carrying ``order`` (what the intake maps back)."""
    customer = order["customer"]
    return orjson.dumps({
        "id": shopify_id,
        "name": f"#{shopify_id}",
        "processed_at": order["paid_at"],
        "financial_status": "paid",
        "customer": {"id": int(customer["id"][2:]) + 1, "tags": "VIP" if customer["vip"] else ""},
        "shipping_address": {"latitude": customer["lat"], "longitude": customer["lon"]},
        "line_items": [{"sku": ln["sku"], "quantity": ln["qty"]} for ln in order["lines"]],
    })  # fmt: skip


def shopify_sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- arrivals (the open model) ----------------------------------------------------------------


class Arrivals:
    """Poisson arrivals at ``rate(t)`` (per second, this user's share) from the user's start;
    ``send(due)`` runs in its own greenlet at each arrival's due time (``time.monotonic``)."""

    def __init__(
        self,
        rate: Callable[[float], float],
        send: Callable[[float], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.rate, self.send, self.stopping = rate, send, stopping
        self.pool = Pool(MAX_IN_FLIGHT)
        self.rnd = random.Random()

    def run(self) -> None:
        """Until Locust stops the user: then the requests in flight get up to 2 s to answer."""
        start = due = time.monotonic()
        while not self.stopping():
            r = self.rate(due - start)
            if r <= 0:
                due += 0.05  # a quiet stretch: look again 50 ms later
            else:
                due += self.rnd.expovariate(r)
                wait = due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
                self.pool.spawn(self.send, due)  # waits here only when MAX_IN_FLIGHT are out
                continue
            wait = due - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
        self.pool.join(timeout=2.0)

    def stop(self) -> None:
        self.pool.kill(block=False)


def share(user: User, rate: Callable[[float, Any], float]) -> Callable[[float], float]:
    """This user's share of the scenario's total rate r(t, options)."""
    opts = options(user)
    users = max(1, int(getattr(opts, "num_users", 1) or 1))
    return lambda t: rate(t, opts) / users


# -- users --------------------------------------------------------------------------------------


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
        with self.client.post(
            "/orders",
            data=body,  # type: ignore[arg-type]  # (bytes are sent as they are)
            headers=headers,
            name=name,
            catch_response=True,
        ) as resp:
            resp.request_meta["response_time"] = (time.monotonic() - due) * 1000
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
        with self.client.post(
            "/webhooks/shopify",
            data=body,  # type: ignore[arg-type]  # (bytes are sent as they are)
            headers=headers,
            name=name,
            catch_response=True,
        ) as resp:
            resp.request_meta["response_time"] = (time.monotonic() - due) * 1000
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
        self.shards = self.store.shard_count()
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
