"""``onestock bench-intake``: signed Shopify webhooks/s stored, and acknowledgement latency.

One invocation, one fresh Redis (AOF on), one ``onestock serve``, a separate load generator:

1. **ceiling**: ``wrk`` on ``GET /healthz`` (the same server: HTTP and ASGI only, no
   signature, no Redis);
2. **throughput**: ``wrk`` posting signed ``orders/create`` webhooks as fast as the server
   acknowledges them (closed loop, every delivery id unique, so every 202 is a durable append;
   the stored count is read back and compared);
3. **latency at a fixed rate**: an open-loop generator (below) sends at the target rate
   whatever the answers take and measures each acknowledgement from its *intended* send time,
   so a stall shows up in the percentiles instead of slowing the sender down (no coordinated
   omission).

``wrk`` is a C program (Debian package ``wrk``); a Python sender could not produce 15,000
signed requests/s on this machine's two cores while leaving room for the server and Redis.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import uvloop
from rich.console import Console
from rich.table import Table

from onestock.domain.errors import OnestockError
from state import keys
from state.server import RedisServer
from state.store import Store

SECRET = "bench-shopify-secret"
POOL = 2000  # distinct signed bodies; delivery ids are unique per request regardless

WRK_LUA = r"""
local sigs, bodies, n = {}, {}, 0
function setup(thread)
  thread:set("prefix", "w" .. tostring(math.random(1, 1e9)))
end
function init(args)
  prefix = prefix or "t"
  for line in io.lines(args[1]) do
    local sig, body = line:match("^([^\t]+)\t(.*)$")
    sigs[#sigs + 1] = sig
    bodies[#bodies + 1] = body
  end
end
function request()
  n = n + 1
  local i = n % #bodies + 1
  return wrk.format("POST", "/webhooks/shopify", {
    ["Content-Type"] = "application/json",
    ["X-Shopify-Topic"] = "orders/create",
    ["X-Shopify-Hmac-SHA256"] = sigs[i],
    ["X-Shopify-Webhook-Id"] = prefix .. "-" .. n,
  }, bodies[i])
end
"""


class IntakeFigures(msgspec.Struct):
    server_workers: int
    ceiling_req_per_s: float  # GET /healthz
    webhooks_per_s: float  # signed POSTs acknowledged, closed loop
    acknowledged: int
    stored: int
    non_2xx: int
    ratio: float  # webhooks / ceiling
    target_rate: int
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int


def ensure_wrk() -> str:
    """The ``wrk`` binary; installed from the distribution's packages when root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install wrk) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        found = shutil.which("wrk")
        if found:
            return found
    raise OnestockError("bench-intake needs wrk (a C HTTP load generator): apt-get install wrk")


def fixture_body() -> bytes:
    path = (
        Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "shopify-orders-create.json"
    )
    if path.exists():
        return orjson.dumps(orjson.loads(path.read_bytes()))
    return orjson.dumps(  # installed without the tests: a minimal order of the same shape
        {"id": 1, "processed_at": "2026-11-11T00:00:02+08:00",
         "customer": {"id": 7, "tags": "VIP"}, "line_items": [{"sku": "SNEAKER-42", "quantity": 1}]}
    )  # fmt: skip


def signed_pool(n: int = POOL) -> list[tuple[str, bytes]]:
    base = orjson.loads(fixture_body())
    pool = []
    for i in range(n):
        base["id"] = 9_000_000_000 + i
        body = orjson.dumps(base)
        sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
        pool.append((sig, body))
    return pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wrk(wrk: str, args: list[str]) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx) from a wrk run."""
    out = subprocess.run([wrk, *args], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, total, int(bad.group(1)) if bad else 0


# -- open loop -------------------------------------------------------------------------------


async def _open_loop(
    port: int, pool: list[tuple[str, bytes]], rate: int, seconds: float, warm: int = 64
) -> dict[str, Any]:
    """Send ``rate`` requests/s for ``seconds`` on scheduled times over keep-alive connections
    (``warm`` opened beforehand, more opened when all are busy); latency from each request's
    intended send time."""
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    total = int(rate * seconds)
    for _ in range(warm):  # the sender's own set-up is not the server's latency
        idle.append(await asyncio.open_connection("127.0.0.1", port))
    start = loop.time() + 0.2

    def request(i: int) -> bytes:
        sig, body = pool[i % len(pool)]
        head = (
            f"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nX-Shopify-Topic: orders/create\r\n"
            f"X-Shopify-Hmac-SHA256: {sig}\r\nX-Shopify-Webhook-Id: ol-{i}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def fire(i: int, due: float) -> None:
        nonlocal errors
        try:
            conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            writer.write(request(i))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            latencies.append(loop.time() - due)
            statuses[status] = statuses.get(status, 0) + 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1

    await paced(fire, total, rate, start, loop.time, 0.0005)
    elapsed = loop.time() - start
    for _, writer in idle:
        writer.close()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "sent": total,
            "elapsed": elapsed}  # fmt: skip


async def paced(
    fire: Callable[[int, float], Awaitable[None]],
    total: int,
    rate: float,
    start: float,
    clock: Callable[[], float],
    lead: float,
) -> None:
    """An open loop: request ``i`` fired at its intended time ``start + i / rate`` (by
    ``clock``, woken ``lead`` s early), whether or not earlier ones were answered; returns
    once every one is. The garbage collector is off meanwhile: the sender's own pauses would
    count as the server's latency."""
    pending: set[asyncio.Future[None]] = set()
    gc.disable()
    try:
        for i in range(total):
            due = start + i / rate
            if due - clock() > lead:
                await asyncio.sleep(due - clock() - lead)
            task = asyncio.ensure_future(fire(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        while pending:
            await asyncio.gather(*pending)
    finally:
        gc.enable()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def run_intake_bench(
    rate: int, seconds: float, workers: int, connections: int, out: Path | None
) -> IntakeFigures:
    console = Console()
    wrk = ensure_wrk()
    pool = signed_pool()
    tmp = Path(tempfile.mkdtemp(prefix="onestock-intake-bench-"))
    redis = RedisServer(tmp / "redis", persistent=True).start()
    port = _free_port()
    env = {**os.environ, "ONESTOCK_REDIS_URL": redis.url, "ONESTOCK_HOME": str(tmp / "home"),
           "ONESTOCK_SHOPIFY_SECRET": SECRET}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "onestock", "serve", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(port, server)
        data = tmp / "pool.tsv"
        data.write_bytes(b"".join(f"{s}\t".encode() + b + b"\n" for s, b in pool))
        script = tmp / "shopify.lua"
        script.write_text(WRK_LUA)
        threads = ["-t", "1", "-c", str(connections), "-d", f"{seconds:g}s"]
        console.print("ceiling: wrk on GET /healthz ...")
        ceiling, _, _ = _wrk(wrk, [*threads, f"{url}/healthz"])
        console.print("throughput: wrk posting signed webhooks ...")
        store = Store.connect(redis.url)
        rate_max, acked, bad = _wrk(wrk, [*threads, "-s", str(script), f"{url}/webhooks/shopify",
                                          "--", str(data)])  # fmt: skip
        k = store.shards.shard_count()
        stored = sum(store.r.xlen(keys.inbox(s)) for s in range(k))
        console.print(f"latency: open loop at {rate:,}/s for {seconds:g} s ...")
        ol = uvloop.run(_open_loop(port, pool, rate, seconds))
        lat = ol["latencies"]
        figs = IntakeFigures(
            server_workers=workers, ceiling_req_per_s=ceiling, webhooks_per_s=rate_max,
            acknowledged=acked - bad, stored=stored, non_2xx=bad, ratio=rate_max / ceiling,
            target_rate=rate, achieved_rate=len(lat) / ol["elapsed"],
            p50_ms=_pct(lat, 0.5), p99_ms=_pct(lat, 0.99), p999_ms=_pct(lat, 0.999),
            max_ms=max(lat) * 1000 if lat else float("nan"),
            errors=ol["errors"] + sum(v for s, v in ol["statuses"].items() if s != 202),
        )  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title=f"onestock bench-intake: {workers} server process(es), wrk -c{connections}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("ceiling: GET /healthz, requests/s", f"{figs.ceiling_req_per_s:,.0f}")
    table.add_row("signed webhooks stored and acknowledged, /s", f"{figs.webhooks_per_s:,.0f}")
    table.add_row("ratio webhooks / ceiling", f"{figs.ratio:.2f}")
    table.add_row(
        "acknowledged (2xx) / stored in the streams", f"{figs.acknowledged:,} / {figs.stored:,}"
    )
    table.add_row(f"open loop at {rate:,}/s: achieved /s", f"{figs.achieved_rate:,.0f}")
    table.add_row(
        "acknowledgement p50 / p99 / p99.9 / max, ms",
        f"{figs.p50_ms:.1f} / {figs.p99_ms:.1f} / {figs.p999_ms:.1f} / {figs.max_ms:.1f}",
    )
    table.add_row("errors and non-202 answers (open loop)", f"{figs.errors}")
    console.print(table)
    if out is not None:
        out.write_bytes(msgspec.json.format(msgspec.json.encode(figs)))
    return figs


def _wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    import http.client

    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise OnestockError("onestock serve exited during start-up")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise OnestockError("onestock serve did not come up in 30 s")
