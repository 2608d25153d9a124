"""Channel locks: units of a SKU ring-fenced for one channel until a time, decided in Lua."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from dataflows.decider import Decider
from onestock.domain.records import packed_records, record_from_packed
from onestock.ops import services as ops
from state import keys
from state.store import Store
from tests.conftest import load
from tests.helpers import at_once, decide, raw, stock
from tests.test_rules import buy, reasons

UNTIL = "2026-11-11T02:00:00Z"
BEFORE, AFTER = "2026-11-11T01:59:59.999Z", "2026-11-11T10:00:00+08:00"  # AFTER == UNTIL


def catalog(tee: str, units: int = 10, lock: int = 4, until: str = UNTIL) -> dict[str, Any]:
    sneaker: dict[str, Any] = {"sku": "SNEAKER", "stock": {"wh-a": units}}
    if lock:
        sneaker["channel_locks"] = [{"channel": "douyin", "qty": lock, "until": until}]
    return {
        "channels": [{"id": "tmall"}, {"id": "douyin"}, {"id": "pos", "kind": "store"}],
        "locations": [
            {"id": "wh-a", "lat": 31.2, "lon": 121.5},
            {"id": "st-b", "kind": "store", "lat": 30.3, "lon": 120.2, "pickup": True},
        ],
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


def ms(when: str) -> int:
    return int(datetime.fromisoformat(when).timestamp() * 1000)


def used(store: Store, channel: str = "douyin") -> int:
    return int(store.r.hget(keys.stock("SNEAKER"), keys.LOCK_USED + channel) or 0)


def test_other_channels_see_the_total_minus_the_unconsumed_lock(store: Store, tee: str) -> None:
    load(store, catalog(tee))
    recs, _ = decide(store, [
        buy("t1", ("SNEAKER", 5), (tee, 1), customer="a", paid=BEFORE),  # 10 - 4 locked = 6
        buy("t2", ("SNEAKER", 2), (tee, 1), customer="b", paid=BEFORE),  # 1 left for tmall
        buy("p1", ("SNEAKER", 2), (tee, 1), customer="c", paid=BEFORE, channel="pos"),
        buy("t3", ("SNEAKER", 1), (tee, 1), customer="d", paid=BEFORE),
    ])  # fmt: skip
    assert reasons(recs) == ["ok", "sold_out", "sold_out", "ok"]
    assert stock(store, "SNEAKER") == {"wh-a": 4} and used(store) == 0
    # douyin takes its own 4; the lock is what it draws from first
    recs, _ = decide(store, [
        buy("d1", ("SNEAKER", 3), (tee, 1), customer="e", paid=BEFORE, channel="douyin"),
        buy("d2", ("SNEAKER", 2), (tee, 1), customer="f", paid=BEFORE, channel="douyin"),
        buy("d3", ("SNEAKER", 1), (tee, 1), customer="g", paid=BEFORE, channel="douyin"),
    ])  # fmt: skip
    assert reasons(recs) == ["ok", "sold_out", "ok"]
    assert stock(store, "SNEAKER") == {"wh-a": 0} and used(store) == 4


def test_the_locked_channel_takes_the_shared_pool_after_its_lock(store: Store, tee: str) -> None:
    load(store, catalog(tee))
    recs, _ = decide(store, [
        buy("d1", ("SNEAKER", 7), (tee, 1), customer="a", paid=BEFORE, channel="douyin"),
        buy("t1", ("SNEAKER", 3), (tee, 1), customer="b", paid=BEFORE),  # 3 shared left
        buy("t2", ("SNEAKER", 1), (tee, 1), customer="c", paid=BEFORE),
    ])  # fmt: skip
    assert reasons(recs) == ["ok", "ok", "sold_out"]
    assert used(store) == 4 and stock(store, "SNEAKER") == {"wh-a": 0}


def test_the_lock_dissolves_at_until_judged_at_paid_at(store: Store, tee: str) -> None:
    load(store, catalog(tee, units=4, lock=4))
    recs, _ = decide(store, [
        buy("t1", ("SNEAKER", 1), (tee, 1), customer="a", paid=BEFORE),  # all 4 locked
        buy("t2", ("SNEAKER", 3), (tee, 1), customer="b", paid=AFTER),  # dissolved at until
        buy("d1", ("SNEAKER", 1), (tee, 1), customer="c", paid=BEFORE, channel="douyin"),
        buy("d2", ("SNEAKER", 1), (tee, 1), customer="d", paid=BEFORE, channel="douyin"),
    ])  # fmt: skip
    # after t2 one unit is left; a douyin order paid before until still has its lock (1 of 4
    # units left, so d1 takes it and d2 finds nothing)
    assert reasons(recs) == ["sold_out", "ok", "ok", "sold_out"]
    assert used(store) == 1


def test_a_pickup_of_a_locked_out_channel_is_sold_out(store: Store) -> None:
    cat = catalog("TEE", units=0, lock=2)
    cat["skus"][0]["stock"] = {"wh-a": 0, "st-b": 2}
    load(store, cat)
    recs, _ = decide(store, [
        buy("p1", ("SNEAKER", 1), customer="a", paid=BEFORE, channel="pos") | {
            "delivery": {"mode": "pickup", "store": "st-b"}},
        buy("p2", ("SNEAKER", 2), customer="b", paid=BEFORE, channel="douyin") | {
            "delivery": {"mode": "pickup", "store": "st-b"}},
    ])  # fmt: skip
    assert reasons(recs) == ["sold_out", "ok"]
    assert [(s.location, s.mode) for s in recs[1].shipments] == [("st-b", "pickup")]


def test_a_replay_never_draws_from_the_lock_twice(store: Store, tee: str) -> None:
    load(store, catalog(tee))
    d = Decider(store, say=lambda _m: None)
    o = raw(buy("r1", ("SNEAKER", 3), (tee, 1), paid=BEFORE, channel="douyin"))
    d.process(0, [("1-0", o)])
    d.process(0, [("1-0", o)])  # a crash before emit: the same entry once more
    assert used(store) == 3 and stock(store, "SNEAKER") == {"wh-a": 7}


@pytest.mark.layout("slots")
def test_a_cross_slot_order_that_a_lock_rejects_leaves_nothing_behind(store: Store) -> None:
    load(store, catalog("TEE", units=4, lock=4))
    recs, _ = decide(store, [buy("x1", ("TEE", 1), ("SNEAKER", 1), paid=BEFORE)])
    assert reasons(recs) == ["sold_out"]
    assert stock(store, "TEE") == {"wh-a": 50} and store.r.hlen(keys.parts("TEE", 0)) == 0


@pytest.mark.layout("slots")
def test_cross_slot_orders_judge_the_locks_on_the_units_the_batch_left(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning takes each order's units from the round's read, and the lock judgement of the
    next order sees what is left: tmall's second order is refused on the read (5 units left,
    4 held by douyin's lock), not reserved in one slot, refused by the script and released."""
    load(store, catalog("TEE"))  # SNEAKER 10 at wh-a, 4 locked for douyin; TEE in another slot
    released: list[Any] = []
    release = store.skus.release_parts

    def counted(calls: list[Any]) -> list[int]:
        released.append(calls)
        return release(calls)

    monkeypatch.setattr(store.skus, "release_parts", counted)
    recs, _ = decide(store, [
        buy("t1", ("SNEAKER", 5), ("TEE", 1), customer="a", paid=BEFORE),  # 10 - 4 = 6 >= 5
        buy("t2", ("SNEAKER", 2), ("TEE", 1), customer="b", paid=BEFORE),  # 5 - 4 = 1 < 2
    ])  # fmt: skip
    assert reasons(recs) == ["ok", "sold_out"]
    assert released == []  # decided in one round: nothing reserved and given back
    assert stock(store, "SNEAKER") == {"wh-a": 5} and stock(store, "TEE") == {"wh-a": 49}


@pytest.mark.layout("slots")
def test_a_released_cross_slot_part_gives_its_lock_units_back(store: Store) -> None:
    """douyin's order is planned on a stale read that still shows TEE: its SNEAKER part is
    reserved (2 units drawn from the lock), its TEE part fails, the SNEAKER part is released."""
    load(store, catalog("TEE"))
    stale = store.skus.stock_state(["SNEAKER", "TEE"])
    store.r.hset(keys.stock("TEE"), "wh-a", 0)  # someone took every TEE since the read
    fresh_read, reads = store.skus.plan_state, []

    def stale_once(skus: list[str], pairs: list[tuple[str, str]]) -> Any:
        reads.append(skus)
        if len(reads) == 1:
            return {k: (dict(v[0]), v[1]) for k, v in stale.items()}, [0] * len(pairs)
        return fresh_read(skus, pairs)

    store.skus.plan_state = stale_once  # type: ignore[method-assign]
    recs, _ = decide(store, [buy("x2", ("SNEAKER", 2), ("TEE", 1), paid=BEFORE, channel="douyin")])
    store.skus.plan_state = fresh_read  # type: ignore[method-assign]
    assert len(reads) >= 2 and reasons(recs) == ["sold_out"]
    assert used(store) == 0 and stock(store, "SNEAKER") == {"wh-a": 10}
    assert store.r.hlen(keys.parts("SNEAKER", 0)) == 0


def test_a_reload_keeps_what_the_channel_drew_from_its_lock(store: Store, tee: str) -> None:
    load(store, catalog(tee))
    decide(store, [buy("d1", ("SNEAKER", 3), paid=BEFORE, channel="douyin")])
    load(store, catalog(tee, units=20, lock=5))  # stock counted again, the lock raised
    assert used(store) == 3
    view = ops.stock_view(store, "SNEAKER", at_ms=ms(BEFORE))
    assert view["SNEAKER"].available == {"tmall": 18, "douyin": 20, "pos": 18}
    assert view["SNEAKER"].locks["douyin"].left == 2
    after = ops.stock_view(store, "SNEAKER", at_ms=ms(UNTIL))  # dissolved
    assert after["SNEAKER"].available == {"tmall": 20, "douyin": 20, "pos": 20}
    load(store, catalog(tee, units=20, lock=0))  # the lock removed: its count goes too
    assert used(store) == 0 and ops.stock_view(store)["SNEAKER"].locks == {}
    load(store, catalog(tee, units=20, lock=5))  # a new lock starts from nothing drawn
    assert ops.stock_view(store, at_ms=0)["SNEAKER"].available["tmall"] == 15


def _channel_buyer(url: str, shard: int, channel: str, tee: str, start: Any) -> None:
    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    start.wait()
    for i in range(30):
        lines = [("SNEAKER", 1)] if tee == "" else [("SNEAKER", 1), (tee, 1)]
        o = buy(f"{channel}-{shard}-{i}", *lines, customer=f"c{i}", paid=BEFORE, channel=channel)
        d.emit(d.process(shard, [(f"{i + 1}-0", raw(o))]))


@pytest.mark.parametrize(
    "tee",
    [
        pytest.param("", id="one-sku"),
        pytest.param("TEE", marks=pytest.mark.layout("slots"), id="cross-slot"),
        pytest.param("TEE", id="basket"),  # the one-server layout: one decide.lua call
        pytest.param("TEE-11093", id="same"),
    ],
)
def test_two_channels_race_for_the_last_locked_units(store: Store, url: str, tee: str) -> None:
    """6 units, 4 locked for douyin: 3 tmall and 3 douyin processes fire 30 orders each at
    once. tmall never gets more than the 2 shared units, douyin always gets its 4, and
    exactly 6 are sold."""
    load(store, catalog(tee or "TEE", units=6, lock=4))
    at_once(_channel_buyer, [(url, s, ch, tee) for s, ch in enumerate(["tmall", "douyin"] * 3)])
    sold = {"tmall": 0, "douyin": 0}
    for shard in range(6):
        rows: Any = store.r.xrange(keys.outbox(shard))
        for _, fields in rows:
            for rec in map(record_from_packed, packed_records(fields)):
                if rec.status == "accepted":
                    sold[rec.channel or ""] += 1
    assert sold["tmall"] <= 2 and sold["douyin"] >= 4
    assert sold["tmall"] + sold["douyin"] == 6
    assert stock(store, "SNEAKER") == {"wh-a": 0} and used(store) == 4
