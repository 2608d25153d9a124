"""What the Double-Eleven scenarios share (one scenario per file beside this one).

**Open model.** An ``Arrivals`` loop sends at the scenario's target rate whatever the
response times: arrival times are drawn in advance (Poisson, at rate r(t)), each request
goes out in its own greenlet at its time, and its latency is measured from that *intended*
send time. A stalled server therefore shows up as latency (and as requests still in flight),
not as fewer requests sent: no coordinated omission. ``--model closed`` runs the same users
the classic Locust way instead (each user waits for its answer, then paces itself with
``constant_throughput``): simpler, but a stall then slows the senders down and hides itself.

**Users** (who sends the load, over HTTP or straight onto the streams): ``loadtest.users``.

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
from locust import User, events

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
