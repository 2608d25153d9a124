"""Stock alerts: one alert per change of a SKU's alert level (low_stock, sold_out,
back_in_stock), through the real Decider, returns, cancels and catalog loads."""

from __future__ import annotations

import io
from typing import Any

import orjson

from dataflows.decider import Decider
from onestock.ops import services as ops
from state import keys
from state.stock import read_alone
from state.store import Store
from tests.conftest import load
from tests.helpers import order
from tests.test_gifts import SHARDS, paid, send


def catalog(units: int = 5, threshold: int | None = 2, buckets: int = 1) -> dict[str, Any]:
    sku: dict[str, Any] = {"sku": "SNEAKER", "stock": {"wh-sh": units}}
    if threshold is not None:
        sku["low_stock_threshold"] = threshold
    if buckets > 1:
        sku["buckets"] = buckets
    return {
        "channels": [{"id": "tmall"}],
        "locations": [{"id": "wh-sh", "lat": 31.23, "lon": 121.47},
                      {"id": "wh-bj", "lat": 39.9, "lon": 116.4}],
        "skus": [sku, {"sku": "SOCKS", "stock": {"wh-sh": 100}}],
    }  # fmt: skip


def setup(store: Store, cat: dict[str, Any]) -> Decider:
    load(store, cat)
    store.shards.shard_count(SHARDS)
    return Decider(store, say=lambda _m: None)


def buy(oid: str, qty: int, sku: str = "SNEAKER") -> dict[str, Any]:
    return order(oid, (sku, qty), lat=31.2, lon=121.5, paid_at=paid(0))


def ret(oid: str, qty: int) -> dict[str, Any]:
    return {"type": "return", "order_id": oid, "location": "wh-bj",
            "lines": [{"sku": "SNEAKER", "qty": qty}]}  # fmt: skip


def cancel(oid: str) -> dict[str, Any]:
    return {"type": "cancel", "order_id": oid}


def alerts(store: Store) -> list[tuple[str, int, str]]:
    """What `onestock alerts` writes, as (sku, remaining, reason)."""
    buf = io.BytesIO()
    ops.write_alerts(store, buf)
    rows = map(orjson.loads, buf.getvalue().splitlines())
    return [(a["sku"], a["remaining"], a["reason"]) for a in rows]


def test_low_stock_then_sold_out_then_back_in_stock_each_once_across_replays(
    store: Store,
) -> None:
    d, seq = setup(store, catalog()), [0]
    send(d, [buy("a", 3)], seq)  # 2 left: at the threshold
    assert alerts(store) == [("SNEAKER", 2, "low_stock")]
    send(d, [buy("a", 3), buy("b", 2)], seq)  # a replayed order changes nothing; then 0
    low, out = ("SNEAKER", 2, "low_stock"), ("SNEAKER", 0, "sold_out")
    assert alerts(store) == [low, out]
    send(d, [buy("b", 2), buy("c", 1)], seq)  # replay, and an order refused: sold out
    assert alerts(store) == [low, out]
    send(d, [ret("a", 1), ret("a", 1)], seq)  # sold out -> 1: low again (a copy: nothing)
    send(d, [ret("a", 1)], seq)
    assert alerts(store) == [low, out, ("SNEAKER", 1, "low_stock")]
    send(d, [cancel("b"), cancel("b")], seq)  # 3 units: above the threshold
    send(d, [cancel("b")], seq)
    assert alerts(store)[3:] == [("SNEAKER", 3, "back_in_stock")]
    assert len(alerts(store)) == 4
    assert store.skus.stock_levels(["SNEAKER"])["SNEAKER"] == {"wh-sh": 2, "wh-bj": 1}


def test_one_batch_crossing_the_threshold_and_reaching_zero_raises_both_in_order(
    store: Store,
) -> None:
    d, seq = setup(store, catalog()), [0]
    send(d, [buy(f"o{i}", 1) for i in range(7)], seq)  # many shards: several batches
    assert alerts(store) == [("SNEAKER", 2, "low_stock"), ("SNEAKER", 0, "sold_out")]
    d2 = setup(store, catalog(units=5))  # reload: back in stock, then one batch, one shard
    entries = [(f"{900 + i}-0", orjson.dumps(buy(f"p{i}", 1))) for i in range(6)]
    d2.emit(d2.process(0, entries))
    assert alerts(store)[2:] == [
        ("SNEAKER", 5, "back_in_stock"), ("SNEAKER", 2, "low_stock"), ("SNEAKER", 0, "sold_out")
    ]  # fmt: skip


def test_straight_from_in_stock_to_zero_is_one_sold_out(store: Store) -> None:
    d, seq = setup(store, catalog()), [0]
    send(d, [buy("all", 5)], seq)
    assert alerts(store) == [("SNEAKER", 0, "sold_out")]  # no low_stock before it
    send(d, [cancel("all")], seq)
    assert alerts(store) == [("SNEAKER", 0, "sold_out"), ("SNEAKER", 5, "back_in_stock")]


def test_a_catalog_load_is_a_change_like_any_other(store: Store) -> None:
    d, seq = setup(store, catalog()), [0]
    send(d, [buy("all", 5)], seq)
    load(store, catalog(units=1))  # sold out -> 1: low_stock
    load(store, catalog(units=2))  # still low: nothing
    load(store, catalog(units=9))  # above: back in stock
    load(store, catalog(units=9))  # unchanged: nothing
    load(store, catalog(units=0))  # loaded at 0: sold out
    assert [a[1:] for a in alerts(store)] == [
        (0, "sold_out"), (1, "low_stock"), (9, "back_in_stock"), (0, "sold_out")
    ]  # fmt: skip
    load(store, catalog(units=0, threshold=None))  # no threshold: no level, no alert
    assert not store.r.hexists(keys.stock("SNEAKER"), keys.ALERTED)
    assert len(alerts(store)) == 4


def test_a_threshold_of_zero_raises_only_sold_out_and_back_in_stock(store: Store) -> None:
    d, seq = setup(store, catalog(units=3, threshold=0)), [0]
    send(d, [buy("a", 2)], seq)
    send(d, [buy("b", 1)], seq)
    send(d, [ret("b", 1)], seq)
    assert alerts(store) == [("SNEAKER", 0, "sold_out"), ("SNEAKER", 1, "back_in_stock")]


def test_a_sku_without_a_threshold_raises_none(store: Store) -> None:
    d, seq = setup(store, catalog(threshold=None)), [0]
    send(d, [buy("a", 5)], seq)
    send(d, [cancel("a")], seq)
    assert alerts(store) == []


def test_the_read_path_leaves_a_pending_level_change_to_the_script(store: Store) -> None:
    """read_alone answers None (a decide.lua call must come) exactly while the level from the
    units differs from the level last raised."""
    d, seq = setup(store, catalog()), [0]
    assert read_alone(store.r.hgetall(keys.stock("SNEAKER"))) is not None  # 5: in stock
    send(d, [buy("a", 5)], seq)
    assert read_alone(store.r.hgetall(keys.stock("SNEAKER"))) is not None  # raised: sold out
    store.r.hset(keys.stock("SNEAKER"), "wh-sh", 1)  # units without a settle: pending
    assert read_alone(store.r.hgetall(keys.stock("SNEAKER"))) is None
    send(d, [buy("b", 2)], seq)  # sold_out for 2, but decided by the script: raises low_stock
    assert alerts(store)[-1] == ("SNEAKER", 1, "low_stock")
    assert read_alone(store.r.hgetall(keys.stock("SNEAKER"))) is not None
