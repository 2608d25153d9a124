"""Many deciders racing on one hot SKU with tiny stock: exact counts, never below zero."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from dataflows.decider import Decider
from state.store import Store
from tests.conftest import load
from tests.helpers import at_once, order, raw

HOT = {
    "channels": [{"id": "tmall"}, {"id": "jd"}],
    "locations": [
        {"id": "wh-a", "lat": 31.2, "lon": 121.5},
        {"id": "wh-b", "lat": 39.9, "lon": 116.4},
        {"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2},
    ],
    "skus": [
        {"sku": "HOT", "stock": {"wh-a": 17, "wh-b": 13, "st-c": 7}},
        {"sku": "SIDE", "stock": {"wh-a": 5, "wh-b": 5}},
    ],
}
STOCK = 37
PROCS = 8
ORDERS_EACH = 300


def _racer(url: str, shard: int, start: mp.Event) -> None:  # type: ignore[valid-type]
    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    events = []
    for i in range(ORDERS_EACH):
        lines = [("HOT", 1 + i % 2)] + ([("SIDE", 1)] if i % 5 == 0 else [])
        events.append(
            order(
                f"p{shard}-{i}",
                *lines,
                lat=30 + i % 10,
                lon=115 + i % 7,
                channel="tmall" if i % 2 else "jd",
            )
        )
    start.wait()  # type: ignore[attr-defined]
    for b in range(0, ORDERS_EACH, 25):
        chunk = events[b : b + 25]
        d.emit(d.process(shard, [(f"{b + j + 1}-0", raw(e)) for j, e in enumerate(chunk)]))


@pytest.mark.parametrize("round_", range(3))
def test_racing_processes_never_oversell_the_hot_sku(store: Store, url: str, round_: int) -> None:
    load(store, HOT)
    at_once(_racer, [(url, s) for s in range(PROCS)], timeout=120)
    from onestock.ops import services as ops

    loaded = {"HOT": {"wh-a": 17, "wh-b": 13, "st-c": 7}, "SIDE": {"wh-a": 5, "wh-b": 5}}
    audit = ops.audit(store, PROCS, loaded)
    assert audit.records == PROCS * ORDERS_EACH
    assert audit.duplicates == 0
    assert audit.oversold == 0
    left = store.skus.stock_levels(["HOT", "SIDE"])
    assert all(q >= 0 for v in left.values() for q in v.values())
    hot_sold = STOCK - sum(left["HOT"].values())
    assert hot_sold == STOCK  # demand far exceeds stock: every unit goes, none twice
    assert audit.accepted > 0 and audit.rejected["sold_out"] > 0
