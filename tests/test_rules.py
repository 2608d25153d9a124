"""Per-customer limits and VIP pre-sales, decided in the same Lua call as the stock."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest

from dataflows.decider import Decider
from state import keys
from state.store import Store
from tests.conftest import load
from tests.helpers import at_once, decide, order, raw, stock

END = "2026-11-11T00:30:00Z"


def catalog(tee: str, limit: int | None = 2, presale: str | None = END) -> dict:  # type: ignore[type-arg]
    sneaker: dict = {"sku": "SNEAKER", "stock": {"wh-a": 50}}  # type: ignore[type-arg]
    if limit is not None:
        sneaker["per_customer_limit"] = limit
    if presale is not None:
        sneaker["vip_presale_until"] = presale
    return {
        "channels": [{"id": "tmall"}, {"id": "douyin"}, {"id": "pos", "kind": "store"}],
        "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
        "skus": [sneaker, {"sku": tee, "stock": {"wh-a": 50}}],
    }


# TEE-11093 shares SNEAKER's hash slot (decide.lua); TEE does not (reserve_parts.lua).
# "basket": the same SKUs as cross-slot, in the one-server layout (keys.LAYOUT): one call.
@pytest.fixture(
    params=[
        pytest.param("TEE", marks=pytest.mark.layout("slots"), id="cross-slot"),
        pytest.param("TEE", id="basket"),
        pytest.param("TEE-11093", id="same-slot"),
    ]
)
def tee(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def buy(
    oid: str,
    *lines: tuple[str, int],
    customer: str = "c1",
    vip: bool = False,
    paid: str = "2026-11-11T01:00:00Z",
    channel: str = "tmall",
) -> dict:  # type: ignore[type-arg]
    o = order(oid, *lines, channel=channel, paid_at=paid)
    o["customer"] = {"id": customer, "vip": vip}
    return o


def reasons(recs) -> list[str | None]:  # type: ignore[no-untyped-def]
    return [r.reason if r.status == "rejected" else "ok" for r in recs]


def test_before_the_presale_ends_only_vips_buy(store: Store, tee: str) -> None:
    load(store, catalog(tee, limit=None))
    recs, _ = decide(store, [
        buy("v1", ("SNEAKER", 1), vip=False, paid="2026-11-11T00:29:59.999Z"),
        buy("v2", ("SNEAKER", 1), (tee, 1), vip=False, paid="2026-11-11T08:29:00+08:00"),
        buy("v3", ("SNEAKER", 1), vip=True, paid="2026-11-11T00:00:00Z"),
        buy("v4", ("SNEAKER", 1), vip=False, paid=END),  # the pre-sale is over at its end
        buy("v5", (tee, 1), vip=False, paid="2026-11-11T00:00:00Z"),  # TEE has no pre-sale
    ])  # fmt: skip
    assert dict(zip([r.order_id for r in recs], reasons(recs), strict=True)) == {
        "v1": "vip_only", "v2": "vip_only", "v3": "ok", "v4": "ok", "v5": "ok",
    }  # fmt: skip
    assert stock(store, "SNEAKER") == {"wh-a": 48}
    assert stock(store, tee) == {"wh-a": 49}


def test_limit_counts_every_order_and_channel_of_a_customer(store: Store, tee: str) -> None:
    load(store, catalog(tee, limit=3, presale=None))
    recs, _ = decide(store, [
        buy("l1", ("SNEAKER", 2), channel="tmall"),
        buy("l2", ("SNEAKER", 2), channel="douyin"),  # 2 + 2 > 3
        buy("l3", ("SNEAKER", 1), (tee, 5), channel="pos"),  # exactly 3
        buy("l4", ("SNEAKER", 1), customer="c2"),  # another customer
    ])  # fmt: skip
    assert reasons(recs) == ["ok", "limit_exceeded", "ok", "ok"]
    recs, _ = decide(store, [buy("l5", ("SNEAKER", 1), channel="douyin")])  # a later batch
    assert reasons(recs) == ["limit_exceeded"]
    assert stock(store, "SNEAKER") == {"wh-a": 46}
    assert store.r.hgetall(keys.bought("SNEAKER", 0)) == {b"c1": b"3", b"c2": b"1"}


def test_a_replay_never_counts_twice(store: Store, tee: str) -> None:
    load(store, catalog(tee, limit=2, presale=None))
    d = Decider(store, say=lambda _m: None)
    o = raw(buy("r1", ("SNEAKER", 2), (tee, 1)))
    first = d.process(0, [("1-0", o)])
    again = d.process(0, [("1-0", o)])  # a crash before emit: the same entry once more
    assert first.records[2].split("\x1f")[-4:] == again.records[2].split("\x1f")[-4:]
    assert store.r.hget(keys.bought("SNEAKER", 0), "c1") == b"2"
    assert stock(store, "SNEAKER") == {"wh-a": 48}


def test_a_rule_is_judged_before_the_stock(store: Store, tee: str) -> None:
    cat = catalog(tee, limit=1, presale=END)
    cat["skus"][0]["stock"] = {"wh-a": 0}
    load(store, cat)
    recs, _ = decide(store, [
        buy("s1", ("SNEAKER", 1), (tee, 1), vip=False, paid="2026-11-11T00:00:00Z"),
        buy("s2", ("SNEAKER", 2), (tee, 1), vip=True),
        buy("s3", ("SNEAKER", 1), (tee, 1), vip=True),
    ])  # fmt: skip
    assert reasons(recs) == ["vip_only", "limit_exceeded", "sold_out"]


@pytest.mark.layout("slots")
def test_a_cross_slot_order_that_breaks_a_rule_leaves_nothing_reserved(store: Store) -> None:
    load(store, catalog("TEE", limit=1, presale=None))
    recs, _ = decide(store, [buy("x1", ("SNEAKER", 2), ("TEE", 1))])
    assert reasons(recs) == ["limit_exceeded"]
    assert stock(store, "TEE") == {"wh-a": 50} and stock(store, "SNEAKER") == {"wh-a": 50}
    assert store.r.hlen(keys.parts("TEE", 0)) == 0 and store.r.hlen(keys.bought("SNEAKER", 0)) == 0


def _one_customer(url: str, shard: int, start: mp.Event) -> None:  # type: ignore[valid-type]
    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    start.wait()  # type: ignore[attr-defined]
    for i in range(40):
        o = buy(f"w{shard}-{i}", ("SNEAKER", 1), customer="whale", channel="tmall")
        d.emit(d.process(shard, [(f"{i + 1}-0", raw(o))]))


@pytest.mark.parametrize("round_", range(2))
def test_one_customers_orders_on_many_workers_at_once_respect_the_limit(
    store: Store, url: str, round_: int
) -> None:
    load(store, catalog("TEE", limit=7, presale=None))
    at_once(_one_customer, [(url, s) for s in range(6)])
    assert stock(store, "SNEAKER") == {"wh-a": 43}
    assert store.r.hget(keys.bought("SNEAKER", 0), "whale") == b"7"  # (ids of 1970: generation 0)


SAFE = {
    "channels": [{"id": "tmall", "kind": "online"}, {"id": "pos", "kind": "store"}],
    "locations": [
        {
            "id": "st-a",
            "kind": "store",
            "lat": 30.3,
            "lon": 120.2,
            "pickup": True,
            "safety_stock": 2,
        },
        {"id": "wh-b", "lat": 39.9, "lon": 116.4},
        {"id": "st-c", "kind": "store", "lat": 31.2, "lon": 121.5},  # no pickup here
    ],
    "skus": [{"sku": "SNEAKER", "stock": {"st-a": 3, "wh-b": 1, "st-c": 5}}],
}
NEAR_A: dict[str, Any] = {"lat": 30.3, "lon": 120.2}


def test_online_channels_leave_the_safety_stock_store_channels_may_take_it(store: Store) -> None:
    load(store, SAFE)
    recs, _ = decide(store, [
        order("s1", ("SNEAKER", 1), channel="tmall", **NEAR_A),  # st-a has 3 - 2 = 1 free
        order("s2", ("SNEAKER", 1), channel="tmall", **NEAR_A),  # no longer: next nearest
        order("s3", ("SNEAKER", 2), channel="pos", **NEAR_A),  # the store takes its own 2
        order("p1", ("SNEAKER", 1), channel="tmall", pickup="st-a"),  # nothing free there
    ])  # fmt: skip
    assert [(r.order_id, r.reason or r.shipments[0].location) for r in recs] == [
        ("s1", "st-a"), ("s2", "st-c"), ("s3", "st-a"), ("p1", "pickup_unavailable"),
    ]  # fmt: skip
    assert stock(store, "SNEAKER") == {"st-a": 0, "wh-b": 1, "st-c": 4}


def test_pickup_only_where_the_location_says_pickup(store: Store) -> None:
    load(store, SAFE)
    recs, _ = decide(store, [order("p2", ("SNEAKER", 1), channel="pos", pickup="st-c")])
    assert recs[0].reason == "pickup_unavailable"
    recs, _ = decide(store, [order("p3", ("SNEAKER", 3), channel="pos", pickup="st-a")])
    assert [(s.location, s.mode) for s in recs[0].shipments] == [("st-a", "pickup")]


def test_stock_view_shows_what_each_channel_can_sell(store: Store) -> None:
    from onestock.ops import services as ops

    load(store, SAFE)
    view = ops.stock_view(store)["SNEAKER"]
    assert view.total == 9 and view.available == {"tmall": 7, "pos": 9}


STRATEGY = {
    "channels": [{"id": "tmall"}],
    "locations": [
        {"id": "st-near", "kind": "store", "lat": 30.3, "lon": 120.2, "priority": 5},
        {"id": "wh-mid", "lat": 31.2, "lon": 121.5, "priority": 0},
        {"id": "wh-far", "lat": 39.9, "lon": 116.4, "priority": 0},
    ],
    "skus": [
        {"sku": "A", "stock": {"st-near": 1, "wh-mid": 1, "wh-far": 1}},
        {"sku": "B", "stock": {"st-near": 1, "wh-far": 1}},
    ],
}


@pytest.mark.parametrize(
    ("routing", "shipments"),
    [
        # each line nearest first: three shipments
        (
            "nearest",
            [("st-near", "A", 1), ("st-near", "B", 1), ("wh-mid", "A", 1), ("wh-far", "B", 1)],
        ),
        # warehouses (priority 0) before the store, nearest first among them
        (
            "priority",
            [("wh-mid", "A", 1), ("wh-far", "A", 1), ("wh-far", "B", 1), ("st-near", "B", 1)],
        ),
        # as few locations as possible: two shipments
        (
            "fewest_shipments",
            [("st-near", "A", 1), ("st-near", "B", 1), ("wh-far", "A", 1), ("wh-far", "B", 1)],
        ),
    ],
)
def test_routing_strategies_split_an_order_no_single_location_can_serve(
    store: Store, routing: str, shipments: list[tuple[str, str, int]]
) -> None:
    load(store, {**STRATEGY, "routing": routing})
    recs, _ = decide(store, [order("two-two", ("A", 2), ("B", 2), lat=30.3, lon=120.2)])
    assert [(s.location, ln.sku, ln.qty) for s in recs[0].shipments for ln in s.lines] == shipments


@pytest.mark.parametrize(
    ("routing", "where"),
    [("nearest", "st-near"), ("priority", "wh-mid"), ("fewest_shipments", "st-near")],
)
def test_every_strategy_prefers_one_location_that_holds_every_line(
    store: Store, routing: str, where: str
) -> None:
    load(store, {**STRATEGY, "routing": routing})
    recs, _ = decide(store, [order("one", ("A", 1), lat=30.3, lon=120.2)])
    assert [s.location for s in recs[0].shipments] == [where]


def alerts_of(store: Store) -> list[tuple[str, int, str]]:
    import io

    from onestock.ops import services as ops

    buf = io.BytesIO()
    ops.write_alerts(store, buf)
    import orjson

    return [
        (a["sku"], a["remaining"], a["reason"])
        for a in map(orjson.loads, buf.getvalue().splitlines())
    ]


def low_catalog(tee: str, threshold: int = 3, units: int = 6) -> dict:  # type: ignore[type-arg]
    return {
        "channels": [{"id": "tmall"}],
        "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
        "skus": [
            {"sku": "SNEAKER", "stock": {"wh-a": units}, "low_stock_threshold": threshold},
            {"sku": tee, "stock": {"wh-a": 50}},
        ],
    }


def test_one_alert_per_change_of_the_alert_level_reloads_included(store: Store, tee: str) -> None:
    load(store, low_catalog(tee))
    decide(store, [buy(f"a{i}", ("SNEAKER", 1), (tee, 1), customer=f"c{i}") for i in range(2)])
    assert alerts_of(store) == []  # 4 left, above 3
    decide(store, [buy(f"b{i}", ("SNEAKER", 1), (tee, 1), customer=f"d{i}") for i in range(4)])
    low, out = ("SNEAKER", 3, "low_stock"), ("SNEAKER", 0, "sold_out")
    assert alerts_of(store) == [low, out]  # one at 3, one at 0
    load(store, low_catalog(tee, units=2))  # a reload from 0 to below the threshold: low
    decide(store, [buy("c1", ("SNEAKER", 1), customer="e1")])  # still low: nothing
    assert alerts_of(store) == [low, out, ("SNEAKER", 2, "low_stock")]
    load(store, low_catalog(tee, units=10))  # a restock above it: back in stock
    decide(store, [buy(f"d{i}", ("SNEAKER", 2), customer=f"f{i}") for i in range(5)])
    assert alerts_of(store)[3:] == [
        ("SNEAKER", 10, "back_in_stock"), ("SNEAKER", 2, "low_stock"), ("SNEAKER", 0, "sold_out")
    ]  # fmt: skip


def test_a_sell_out_in_one_step_is_a_sold_out_alert(store: Store, tee: str) -> None:
    load(store, low_catalog(tee, threshold=1, units=2))
    decide(store, [buy("z", ("SNEAKER", 2), (tee, 1))])
    assert alerts_of(store) == [("SNEAKER", 0, "sold_out")]


@pytest.mark.layout("slots")
def test_a_batch_full_of_cross_slot_orders_a_rule_rejects(store: Store) -> None:
    """Many rejected orders in one batch each settle once (not after a bounded number of
    rounds, which would leave the rest wrongly sold out)."""
    load(store, catalog("TEE", limit=None, presale=END))
    batch = [
        buy(f"n{i}", ("SNEAKER", 1), ("TEE", 1), customer=f"c{i}", paid="2026-11-11T00:00:00Z")
        for i in range(60)
    ]
    batch.append(buy("vip", ("SNEAKER", 1), ("TEE", 1), vip=True, paid="2026-11-11T00:00:00Z"))
    recs, _ = decide(store, batch)
    assert reasons(recs) == ["vip_only"] * 60 + ["ok"]
    assert stock(store, "SNEAKER") == {"wh-a": 49} and stock(store, "TEE") == {"wh-a": 49}


@pytest.mark.layout("slots")
def test_a_read_the_script_contradicts_is_judged_again(store: Store) -> None:
    """The read says the customer bought nothing; the script knows 2 (of 2): the reservation
    is refused, released, and the order decided again on a fresh read."""
    load(store, catalog("TEE", limit=2, presale=None))
    store.r.hset(keys.bought("SNEAKER", 0), "c1", 2)
    real, reads = store.skus.plan_state, []

    def stale_once(skus, pairs):  # type: ignore[no-untyped-def]
        reads.append(pairs)
        state, counts = real(skus, pairs)
        return (state, [0] * len(pairs)) if len(reads) == 1 else (state, counts)

    store.skus.plan_state = stale_once  # type: ignore[method-assign]
    recs, _ = decide(store, [buy("s1", ("SNEAKER", 1), ("TEE", 1))])
    store.skus.plan_state = real  # type: ignore[method-assign]
    assert len(reads) == 2 and reasons(recs) == ["limit_exceeded"]
    assert stock(store, "TEE") == {"wh-a": 50} and store.r.hlen(keys.parts("TEE", 0)) == 0
