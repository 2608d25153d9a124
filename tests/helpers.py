"""Small builders shared by the tests: orders, catalogs, and one-batch decisions."""

from __future__ import annotations

import http.client
import itertools
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from dataflows.decider import Decider
from onestock.domain.records import packed_records, record_from_packed
from onestock.domain.types import FulfilmentRecord
from state import keys
from state.store import Store

_ids = itertools.count(1)


def order(
    oid: str,
    *lines: tuple[str, int],
    channel: str = "tmall",
    lat: float | None = None,
    lon: float | None = None,
    pickup: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    customer: dict[str, Any] = {"id": f"c-{oid}"}
    if lat is not None:
        customer.update(lat=lat, lon=lon)
    return {
        "order_id": oid,
        "channel": channel,
        "customer": customer,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
        "delivery": {"mode": "pickup", "store": pickup} if pickup else {"mode": "ship"},
        "paid_at": "2026-11-11T00:00:00.120Z",
        **extra,
    }


def raw(event: Any) -> bytes:
    return event if isinstance(event, bytes) else orjson.dumps(event)


def decide(
    store: Store, events: list[Any], shard: int = 0, decider: Decider | None = None
) -> tuple[list[FulfilmentRecord], list[list[str]]]:
    """Decide one batch as the dataflow would, emit it, and return what this batch wrote."""
    d = decider or Decider(store, say=lambda _m: None)
    base = next(_ids) * 1_000_000
    entries = [(f"{base + i}-0", raw(e)) for i, e in enumerate(events)]
    before = store.r.xlen(keys.outbox(shard))
    out = d.process(shard, entries)
    d.emit(out)
    rows: Any = store.r.xrange(keys.outbox(shard), "-", "+")
    return [record_from_packed(p) for _, f in rows[before:] for p in packed_records(f)], out.dead


def decided_ids(store: Store, sku: str, shard: int = 0) -> set[str]:
    """The order ids decide.lua stored an outcome of: in the SKU's decision hash (this
    generation) or in the shard's journal (a fresh call's, keys.journal)."""
    fields: Any = store.r.hkeys(keys.decisions(sku, store.gen.now))
    ids = {f.decode() for f in fields}
    packed: Any
    for packed in store.r.hvals(keys.journal(shard)):
        ids.update(msgspec.msgpack.decode(packed)[0::2])
    return ids


def stock(store: Store, sku: str) -> dict[str, int]:
    return store.skus.stock_levels([sku]).get(sku, {})


def at_once(
    target: Callable[..., None], arglists: list[tuple[Any, ...]], timeout: float = 60
) -> None:
    """Run ``target(*args, start)`` in one forked process per arglist, released together by
    the ``start`` event (a real race), and require every process to exit 0."""
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, start)) for args in arglists]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0


# -- a real `onestock serve` -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports, below the ephemeral range (so no port the
    OS hands out meanwhile, e.g. to a Bytewax cluster address, lands on them)."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], workers: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onestock", "serve", "--port", str(self.port),
             "--workers", str(workers), *extra],
            env={**os.environ, **env}, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 30
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise AssertionError(f"onestock serve did not come up: {out[-2000:]}")
            time.sleep(0.1)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), orjson.loads(data) if data else None
        finally:
            conn.close()

    def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        return self.request("POST", path, body, headers)

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)
