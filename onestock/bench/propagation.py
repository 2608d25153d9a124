"""``onestock bench-feed``: how long from the decision that sold a SKU's last unit to a
subscriber receiving its ``sold_out``, under a burst at a fixed rate (docs/performance.md).

A throwaway Redis (AOF, as in production), a catalog of ``skus`` SKUs whose stock runs out
at different moments of the burst, a real HTTP receiver subscribed to the channel (a thread
of this process, stdlib ``http.server``, verifying nothing: it timestamps arrivals), and the
real pipeline: ``onestock run`` (its workers and its feed process). Orders are pushed onto
the input streams at ``rate`` per second, in slices every 20 ms (an open loop: the pusher
does not wait for decisions). Per SKU: the decision time of the last accepted order of the
SKU (its record's ``decided_at``) and the arrival of the first ``sold_out`` transition of
the SKU for the channel; the figures are the distribution over SKUs of arrival - decision.
Both clocks are this machine's wall clock.
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import orjson

from onestock import burst, harness
from onestock.domain.types import catalog_decoder
from onestock.ops import services
from state.store import Store

CHANNEL = "tmall"
SHARDS = 16
SLICE_S = 0.02


class Figures(NamedTuple):
    orders: int
    seconds: float  # pushing
    rate: float  # orders/s pushed
    sold_out: int  # SKUs that sold out
    measured: int  # of them, with a sold_out received
    p50_ms: float
    p99_ms: float
    max_ms: float


class _Receiver(BaseHTTPRequestHandler):
    arrivals: dict[str, float] = {}  # SKU -> first sold_out's arrival (epoch s)
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        now = time.time()
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        t = orjson.loads(body)
        if t.get("status") == "sold_out" and t.get("channel") == CHANNEL:
            with self.lock:
                self.arrivals.setdefault(t["sku"], now)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def catalog(skus: int, seconds: float, rate: float, url: str) -> dict[str, Any]:
    """SKUs whose stock lasts from a tenth of the burst to its end, at ``rate`` orders/s
    spread evenly over them (each order takes one unit)."""
    per_sku_s = rate / skus  # orders per second per SKU
    stock = {
        f"P-{i:04d}": max(1, int(per_sku_s * seconds * (0.1 + 0.8 * i / max(1, skus - 1))))
        for i in range(skus)
    }
    secret = "whsec_" + base64.b64encode(b"bench-feed-secret-32-bytes------").decode()
    return {
        "channels": [{"id": CHANNEL}, {"id": "jd"}],
        "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5},
                      {"id": "wh-b", "lat": 39.9, "lon": 116.4}],
        "skus": [{"sku": s, "stock": {"wh-a": q - q // 2, "wh-b": q // 2}}
                 for s, q in stock.items()],
        "subscribers": [{"id": "bench", "url": url, "secret": secret, "channels": [CHANNEL]}],
    }  # fmt: skip


PAID_AT = burst.T0.isoformat().replace("+00:00", "Z")  # (recent: inside the window)


def orders(n: int, skus: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [
        orjson.dumps({
            "order_id": f"b-{i}", "channel": CHANNEL, "customer": {"id": f"c-{i}"},
            "lines": [{"sku": f"P-{rng.randrange(skus):04d}", "qty": 1}],
            "paid_at": PAID_AT,
        })
        for i in range(n)
    ]  # fmt: skip


def _push_at_rate(store: Store, lines: list[bytes], rate: float) -> float:
    """Push ``lines`` at ``rate`` per second in slices; the seconds it took."""
    per_slice = max(1, int(rate * SLICE_S))
    start = time.monotonic()
    for k, i in enumerate(range(0, len(lines), per_slice)):
        due = start + k * SLICE_S
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        harness.push(store, lines[i : i + per_slice], SHARDS)
    return time.monotonic() - start


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(rate: float = 2000.0, seconds: float = 20.0, skus: int = 300, workers: int = 2) -> Figures:
    _Receiver.arrivals = {}
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    n = int(rate * seconds)
    lines = orders(n, skus)
    with harness.scratch_redis("onestock-feedbench-") as (server, home):
        store = Store.connect(server.url)
        cat = catalog_decoder.decode(orjson.dumps(catalog(skus, seconds, rate, url)))
        harness.reset(store, SHARDS, cat)
        os.environ.setdefault("ONESTOCK_WEBHOOK_TIMEOUT_S", "2")
        flow = harness.start_dataflow(server.url, home, workers, until_drained=False)
        try:
            time.sleep(2.0)  # the workers and the feed up, the initial statuses delivered
            took = _push_at_rate(store, lines, rate)
            harness.wait_outcomes(store, n, flow)
            time.sleep(2.0)  # the last transitions on their way
        finally:
            harness.stop(flow)
            receiver.shutdown()
        last = _last_sales(store)
    lat = [
        (_Receiver.arrivals[sku] - decided) * 1000
        for sku, decided in last.items()
        if sku in _Receiver.arrivals
    ]
    return Figures(
        n, took, n / took, len(last), len(lat), _quantile(lat, 0.5), _quantile(lat, 0.99),
        max(lat, default=float("nan")),
    )  # fmt: skip


def _last_sales(store: Store) -> dict[str, float]:
    """Per SKU that sold out: the decision time (epoch s) of its last accepted order."""
    last: dict[str, float] = {}
    for rec in services.records(store, SHARDS):
        if rec.status != "accepted":
            continue
        at = datetime.fromisoformat(rec.decided_at).timestamp()
        for ship in rec.shipments:
            for ln in ship.lines:
                last[ln.sku] = max(last.get(ln.sku, 0.0), at)
    left = store.skus.stock_levels({sku: {} for sku in last})
    return {sku: t for sku, t in last.items() if sum(left.get(sku, {}).values()) == 0}
