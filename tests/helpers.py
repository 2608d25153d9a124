"""Small builders shared by the tests: orders, catalogs, and one-batch decisions."""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

import orjson

from dataflows.decider import Decider
from onestock.records import packed_records, record_from_packed
from onestock.types import FulfilmentRecord
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
    rows = store.r.xrange(keys.outbox(shard), "-", "+")[before:]
    return [record_from_packed(p) for _, f in rows for p in packed_records(f)], out.dead


def stock(store: Store, sku: str) -> dict[str, int]:
    return store.stock_levels([sku]).get(sku, {})


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
