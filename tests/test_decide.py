"""Decisions against a real Redis: routing, splits, pickup, all-or-nothing, idempotency."""

from __future__ import annotations

from typing import Any

import pytest

from dataflows.decider import Decider
from onestock.domain import events
from onestock.ops import services as ops
from state import keys
from state.skus import Part
from state.store import Store
from tests.conftest import load
from tests.helpers import decide, order, raw, stock

CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall", "kind": "online"}, {"id": "pos", "kind": "store"}],
    "locations": [
        {"id": "wh-shanghai", "kind": "warehouse", "lat": 31.23, "lon": 121.47, "priority": 1},
        {"id": "wh-beijing", "kind": "warehouse", "lat": 39.90, "lon": 116.40, "priority": 0},
        {
            "id": "st-hangzhou",
            "kind": "store",
            "lat": 30.27,
            "lon": 120.15,
            "priority": 5,
            "pickup": True,
        },
        {"id": "wh-nowhere", "kind": "warehouse", "priority": 0},
    ],
    "skus": [
        {"sku": "SNEAKER", "stock": {"wh-shanghai": 5, "wh-beijing": 5, "st-hangzhou": 2}},
        {"sku": "TEE", "stock": {"wh-beijing": 3, "st-hangzhou": 1}},
        {"sku": "EMPTY", "stock": {}},
    ],
}
HANGZHOU = (30.28, 120.16)
BEIJING = (39.91, 116.41)


# TEE-11093 shares SNEAKER's hash slot (one Lua call); TEE does not (slot-by-slot path).
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


@pytest.fixture
def loaded(store: Store, tee: str) -> Store:
    cat = {
        **CATALOG,
        "skus": [dict(s, sku=tee) if s["sku"] == "TEE" else s for s in CATALOG["skus"]],
    }
    load(store, cat)
    return store


def shipped(rec) -> list[tuple[str, str, str, int]]:  # type: ignore[no-untyped-def]
    return [(s.location, s.mode, ln.sku, ln.qty) for s in rec.shipments for ln in s.lines]


def test_ship_goes_to_the_nearest_location_that_holds_every_line(loaded: Store) -> None:
    recs, _ = decide(loaded, [order("o1", ("SNEAKER", 1), lat=HANGZHOU[0], lon=HANGZHOU[1])])
    assert recs[0].status == "accepted"
    assert shipped(recs[0]) == [("st-hangzhou", "ship", "SNEAKER", 1)]
    recs, _ = decide(loaded, [order("o2", ("SNEAKER", 1), lat=BEIJING[0], lon=BEIJING[1])])
    assert shipped(recs[0]) == [("wh-beijing", "ship", "SNEAKER", 1)]
    assert stock(loaded, "SNEAKER") == {"wh-shanghai": 5, "wh-beijing": 4, "st-hangzhou": 1}


def test_nearest_location_lacking_one_line_is_skipped_for_one_that_holds_all(
    loaded: Store, tee: str
) -> None:
    # Hangzhou holds 2 SNEAKER and 1 TEE: an order of 2 TEE must go whole to Beijing.
    recs, _ = decide(
        loaded, [order("o1", ("SNEAKER", 1), (tee, 2), lat=HANGZHOU[0], lon=HANGZHOU[1])]
    )
    assert shipped(recs[0]) == [
        ("wh-beijing", "ship", "SNEAKER", 1),
        ("wh-beijing", "ship", tee, 2),
    ]


def test_customer_without_coordinates_is_served_by_priority_then_id(loaded: Store) -> None:
    recs, _ = decide(loaded, [order("o1", ("SNEAKER", 1))])
    assert shipped(recs[0]) == [("wh-beijing", "ship", "SNEAKER", 1)]


def test_lines_split_nearest_first_when_no_single_location_can(loaded: Store) -> None:
    recs, _ = decide(loaded, [order("o1", ("SNEAKER", 11), lat=HANGZHOU[0], lon=HANGZHOU[1])])
    assert recs[0].status == "accepted"
    assert shipped(recs[0]) == [
        ("st-hangzhou", "ship", "SNEAKER", 2),
        ("wh-shanghai", "ship", "SNEAKER", 5),
        ("wh-beijing", "ship", "SNEAKER", 4),
    ]
    assert sum(stock(loaded, "SNEAKER").values()) == 1


def test_order_is_all_or_nothing(loaded: Store, tee: str) -> None:
    before = stock(loaded, "SNEAKER"), stock(loaded, tee)
    recs, _ = decide(loaded, [order("o1", ("SNEAKER", 2), (tee, 5))])
    assert (recs[0].status, recs[0].reason, recs[0].shipments) == ("rejected", "sold_out", [])
    assert (stock(loaded, "SNEAKER"), stock(loaded, tee)) == before


def test_pickup_is_served_by_the_named_store_or_rejected(loaded: Store) -> None:
    recs, _ = decide(
        loaded, [order("p1", ("SNEAKER", 2), pickup="st-hangzhou", lat=BEIJING[0], lon=BEIJING[1])]
    )
    assert shipped(recs[0]) == [("st-hangzhou", "pickup", "SNEAKER", 2)]
    recs, _ = decide(loaded, [order("p2", ("SNEAKER", 1), pickup="st-hangzhou")])
    assert (recs[0].status, recs[0].reason) == ("rejected", "pickup_unavailable")
    recs, _ = decide(loaded, [order("p3", ("SNEAKER", 1), pickup="wh-beijing")])
    assert recs[0].reason == "pickup_unavailable"
    recs, _ = decide(loaded, [order("p4", ("SNEAKER", 1), pickup="st-atlantis")])
    assert recs[0].reason == "invalid" and "st-atlantis" in (recs[0].detail or "")
    assert stock(loaded, "SNEAKER")["wh-beijing"] == 5


def test_unknown_sku_and_channel_are_rejected_and_change_nothing(loaded: Store) -> None:
    recs, _ = decide(
        loaded, [order("u1", ("NOPE", 1)), order("u2", ("SNEAKER", 1), channel="ebay")]
    )
    assert [r.reason for r in recs] == ["unknown_sku", "unknown_channel"]
    assert sum(stock(loaded, "SNEAKER").values()) == 12


def test_sku_with_no_stock_anywhere_is_sold_out_not_unknown(loaded: Store) -> None:
    recs, _ = decide(loaded, [order("e1", ("EMPTY", 1))])
    assert recs[0].reason == "sold_out"


def test_an_order_with_a_sku_gone_everywhere_is_refused_as_for_its_delivery(
    loaded: Store, tee: str
) -> None:
    """Once a SKU has no unit left anywhere, an order with it is sold_out when shipped and
    pickup_unavailable when picked up, and takes nothing of its other SKU (both paths)."""
    recs, _ = decide(loaded, [order("all", (tee, 4))])
    assert recs[0].status == "accepted" and stock(loaded, tee) == {
        "wh-beijing": 0,
        "st-hangzhou": 0,
    }
    recs, _ = decide(loaded, [
        order("ship", ("SNEAKER", 1), (tee, 1)),
        order("pick", ("SNEAKER", 1), (tee, 1), pickup="st-hangzhou"),
    ])  # fmt: skip
    assert [(r.order_id, r.reason) for r in recs] == [
        ("ship", "sold_out"),
        ("pick", "pickup_unavailable"),
    ]
    assert stock(loaded, "SNEAKER") == {"wh-shanghai": 5, "wh-beijing": 5, "st-hangzhou": 2}


def test_replayed_order_keeps_its_outcome_and_changes_nothing(loaded: Store, tee: str) -> None:
    d = Decider(loaded, say=lambda _m: None)
    o = order("r1", (tee, 3), lat=BEIJING[0], lon=BEIJING[1])
    first = d.process(0, [("1-0", __import__("orjson").dumps(o))])
    # A crash before emit: the same entry is decided again after resume.
    again = d.process(0, [("1-0", __import__("orjson").dumps(o))])
    assert first.records[2].split("\x1f")[-4:] == again.records[2].split("\x1f")[-4:]
    assert stock(loaded, tee) == {"wh-beijing": 0, "st-hangzhou": 1}
    d.emit(first)
    d.emit(again)
    assert loaded.shards.outcome_counts(1) == (1, 0)
    assert len(list(ops.records(loaded, 1))) == 1


def test_duplicate_deliveries_produce_one_record(loaded: Store) -> None:
    o = order("d1", ("SNEAKER", 1))
    recs, _ = decide(loaded, [o, o, o])
    assert len(recs) == 1
    recs, _ = decide(loaded, [o])  # a webhook retry much later
    assert recs == []
    assert sum(stock(loaded, "SNEAKER").values()) == 11


def test_first_copy_wins_even_when_a_later_copy_differs(loaded: Store, tee: str) -> None:
    recs, _ = decide(loaded, [order("x1", ("SNEAKER", 1), qty_note=1)])
    recs2, _ = decide(loaded, [order("x1", (tee, 1))])
    assert len(recs) == 1 and recs2 == []
    assert stock(loaded, tee) == {"wh-beijing": 3, "st-hangzhou": 1}


def test_two_lines_of_one_sku_reserve_as_one(loaded: Store, tee: str) -> None:
    recs, _ = decide(loaded, [order("m1", (tee, 2), (tee, 1))])
    assert shipped(recs[0]) == [("wh-beijing", "ship", tee, 3)]


@pytest.mark.layout("slots")
def test_cross_slot_order_is_compensated_when_a_later_slot_fails(loaded: Store, tee: str) -> None:
    """Plan on a stale read (as if another worker took TEE in between), then reserve."""
    if tee != "TEE":
        pytest.skip("needs SKUs in different slots")
    stale = loaded.skus.stock_state(["SNEAKER", tee])
    fresh_read = loaded.skus.plan_state
    reads = []

    def stale_once(skus, pairs):  # type: ignore[no-untyped-def]
        reads.append(skus)
        if len(reads) == 1:
            return {k: (dict(v[0]), v[1]) for k, v in stale.items()}, [0] * len(pairs)
        return fresh_read(skus, pairs)

    decide(loaded, [order("thief", (tee, 3))])  # takes every TEE at wh-beijing
    d = Decider(loaded, say=lambda _m: None)
    loaded.skus.plan_state = stale_once  # type: ignore[method-assign]
    recs, _ = decide(loaded, [order("victim", ("SNEAKER", 1), (tee, 2))], decider=d)
    loaded.skus.plan_state = fresh_read  # type: ignore[method-assign]
    assert len(reads) >= 2, "the stale plan failed and was re-planned on a fresh read"
    assert (recs[0].status, recs[0].reason) == ("rejected", "sold_out")
    # SNEAKER was reserved in its slot by the stale plan, then released: nothing leaked.
    assert stock(loaded, "SNEAKER") == {"wh-shanghai": 5, "wh-beijing": 5, "st-hangzhou": 2}
    assert loaded.r.hlen(keys.parts("SNEAKER", 0)) == 0


@pytest.mark.layout("slots")
def test_half_reserved_cross_slot_order_from_a_crash_is_undone_then_redone(
    loaded: Store, tee: str
) -> None:
    if tee != "TEE":
        pytest.skip("needs SKUs in different slots")
    # A crash after the SNEAKER slot was reserved at Shanghai, before the TEE slot.
    half = events.decode(raw(order("half", ("SNEAKER", 1)))).order  # type: ignore[union-attr]
    part = Part(half, ["SNEAKER"], 0, False, [("wh-shanghai", "SNEAKER", 1)])
    loaded.gen.now = 0  # the generation the batch below is decided in (its ids: 1970)
    assert loaded.skus.reserve_parts([[part]], {}, loaded.catalog_version()) == [[1]]
    recs, _ = decide(
        loaded, [order("half", ("SNEAKER", 1), (tee, 1), lat=BEIJING[0], lon=BEIJING[1])]
    )
    assert shipped(recs[0]) == [
        ("wh-beijing", "ship", "SNEAKER", 1),
        ("wh-beijing", "ship", tee, 1),
    ]
    assert stock(loaded, "SNEAKER") == {"wh-shanghai": 5, "wh-beijing": 4, "st-hangzhou": 2}


def test_a_batch_larger_than_one_call_is_decided_in_arrival_order(loaded: Store) -> None:
    """More orders of one slot than one decide.lua call takes (CALL_ORDERS): they go in
    several calls of one round trip, in arrival order, so exactly the first 12 (the stock)
    are accepted, every order gets one record and none is lost between calls."""
    from dataflows import decider as decider_module

    n = 2 * decider_module.CALL_ORDERS + 7
    calls: list[int] = []
    real = loaded.skus.decide

    def spy(groups, args):  # type: ignore[no-untyped-def]
        calls.extend(len(group) for group in groups)
        return real(groups, args)

    loaded.skus.decide = spy  # type: ignore[method-assign]
    recs, _ = decide(loaded, [order(f"big-{i:04d}", ("SNEAKER", 1)) for i in range(n)])
    loaded.skus.decide = real  # type: ignore[method-assign]
    assert len(calls) == 3, "one call per CALL_ORDERS orders of the slot"
    assert len(recs) == n and len({r.order_id for r in recs}) == n
    accepted = sorted(r.order_id for r in recs if r.status == "accepted")
    assert accepted == [f"big-{i:04d}" for i in range(12)]
    assert stock(loaded, "SNEAKER") == {"wh-shanghai": 0, "wh-beijing": 0, "st-hangzhou": 0}


def test_scripts_flushed_from_redis_are_loaded_again(loaded: Store) -> None:
    """The hot path sends EVALSHA itself (state.wire.round_trip): a Redis that lost its
    scripts (a restart, SCRIPT FLUSH) gets them again and the batch is decided once."""
    loaded.r.script_flush()
    recs, _ = decide(loaded, [order("after-flush", ("SNEAKER", 2))])
    assert [(r.order_id, r.status) for r in recs] == [("after-flush", "accepted")]
    assert sum(stock(loaded, "SNEAKER").values()) == 10


def test_one_lookup_over_several_keys_answers_as_one_command_each(store: Store) -> None:
    """``wire.Same``: the arguments after the key packed once for every key (one batch's
    order ids in two generations of a registry) get the replies separate commands get."""
    from state import wire

    store.r.hset("g:1", mapping={"a": "1", "ü-2": "x", "9": "nine"})
    store.r.hset("g:é", mapping={"b": "2", "a": "one"})
    fields: list[object] = ["a", "b", "ü-2", b"\xff", 9, "none"]
    same = wire.Same("HMGET", ("g:1", "g:é", "g:none"), fields)
    plain = [("HMGET", k, *fields) for k in same.keys]
    got = wire.reads(store.r, [("GET", "nothing"), same, ("HLEN", "g:1")])
    assert got == [None, *wire.reads(store.r, plain), 3]
    assert got[1] == [b"1", None, b"x", None, b"nine", None]
