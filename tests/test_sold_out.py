"""Orders of a sold-out SKU refused on a read, without a decide.lua call, and the orders that
must still go to decide.lua: replays of decided orders, ruled SKUs, pending alerts."""

from __future__ import annotations

from typing import Any

import pytest

from dataflows.decider import Decider
from onestock.domain import events
from state import keys
from state.keys import sku_slot
from state.skus import Part
from state.store import Store
from tests.conftest import load
from tests.helpers import decide, decided_ids, order, raw

CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall"}, {"id": "pos", "kind": "store"}],
    "locations": [
        {"id": "wh-a", "lat": 31.2, "lon": 121.5},
        {"id": "st-b", "kind": "store", "lat": 30.3, "lon": 120.2, "pickup": True},
    ],
    "skus": [{"sku": "HOT", "stock": {"wh-a": 2}}, {"sku": "TEE", "stock": {"wh-a": 9}}],
}


def catalog(**hot: Any) -> dict[str, Any]:
    """CATALOG with HOT's entry updated by ``hot``."""
    return {**CATALOG, "skus": [{**CATALOG["skus"][0], **hot}, CATALOG["skus"][1]]}


def outcome(rec) -> str:  # type: ignore[no-untyped-def]
    return rec.reason if rec.status == "rejected" else rec.status


def stored(store: Store, oid: str, sku: str = "HOT") -> bool:
    """Whether decide.lua decided the order (it stores every outcome it gives)."""
    return oid in decided_ids(store, sku)


def test_once_decide_lua_says_sold_out_the_next_batch_refuses_on_the_read(store: Store) -> None:
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order(f"a{i}", ("HOT", 1)) for i in range(3)], decider=d)
    assert [outcome(r) for r in recs] == ["accepted", "accepted", "sold_out"]
    assert stored(store, "a2")
    batch = [order("b1", ("HOT", 1)), order("b2", ("HOT", 1), pickup="st-b"),
             order("b3", ("TEE", 1))]  # fmt: skip
    recs, _ = decide(store, batch, decider=d)
    # the same answers decide.lua gives, but nothing of them stored: no decide.lua call
    assert [outcome(r) for r in recs] == ["sold_out", "pickup_unavailable", "accepted"]
    assert not stored(store, "b1") and not stored(store, "b2")
    assert stored(store, "b3", "TEE")


# TEE-16840 shares HOT's hash slot (decide.lua); TEE does not (the cross-slot path).
@pytest.mark.parametrize(
    "tee",
    [
        pytest.param("TEE", marks=pytest.mark.layout("slots"), id="cross-slot"),
        pytest.param("TEE", id="basket"),  # the one-server layout: one decide.lua call
        pytest.param("TEE-16840", id="same-slot"),
    ],
)
def test_a_basket_with_a_sold_out_line_is_refused_on_the_read(
    store: Store, tee: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = {**CATALOG, "skus": [CATALOG["skus"][0], {"sku": tee, "stock": {"wh-a": 9}}]}
    load(store, cat)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 3)), order("a2", ("HOT", 2), (tee, 1))], decider=d)
    assert [outcome(r) for r in recs] == ["sold_out", "accepted"]
    called: list[str] = []
    for part, name in [(store.skus, "decide"), (store.skus, "plan_state"),
                       (store.skus, "reserve_parts")]:  # fmt: skip
        monkeypatch.setattr(part, name, lambda *a, _n=name: called.append(_n))
    batch = [order("b1", ("HOT", 1), (tee, 1)), order("b2", (tee, 2), ("HOT", 1), pickup="st-b")]
    recs, _ = decide(store, batch, decider=d)
    assert [outcome(r) for r in recs] == ["sold_out", "pickup_unavailable"]
    assert called == []  # decided on the read: no Lua call, no planning read
    monkeypatch.undo()
    recs, _ = decide(store, [order("c1", (tee, 9))], decider=d)  # the other SKU is intact
    assert outcome(recs[0]) == "sold_out" and stored(store, "c1", tee)  # 8 left: decide.lua


def test_only_lines_over_the_units_left_are_refused_on_the_read(store: Store) -> None:
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 3))], decider=d)  # 2 left: sold out for 3
    assert outcome(recs[0]) == "sold_out"
    recs, _ = decide(store, [order("b1", ("HOT", 3)), order("b2", ("HOT", 2))], decider=d)
    assert [outcome(r) for r in recs] == ["sold_out", "accepted"]
    assert not stored(store, "b1") and stored(store, "b2")
    load(store, catalog(stock={"wh-a": 5}))  # restocked: decide.lua decides again
    recs, _ = decide(store, [order("c1", ("HOT", 3))], decider=d)
    assert outcome(recs[0]) == "accepted"


def test_an_order_decided_before_a_crash_keeps_its_stored_acceptance(store: Store) -> None:
    """Accepted by decide.lua, then killed before its record was written: on the replay its
    SKU looks sold out precisely because the order took the units, and the new process
    already knows the SKU as sold out. The shard's decide mark sends its batch to the
    scripts, and decide.lua returns the stored acceptance; a batch after the mark is
    refused on the read."""
    load(store, CATALOG)
    first = Decider(store, say=lambda _m: None)
    crashed = first.process(0, [("100-0", raw(order("a1", ("HOT", 2))))])  # never emitted
    assert crashed.records[1].startswith("A")
    restarted = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("x1", ("HOT", 1))], shard=1, decider=restarted)
    assert outcome(recs[0]) == "sold_out"  # HOT is a suspect of the new process now
    before = store.r.xlen(keys.outbox(0))
    out = restarted.process(0, [("100-0", raw(order("a1", ("HOT", 2)))),
                                ("101-0", raw(order("a2", ("HOT", 1))))])  # fmt: skip
    restarted.emit(out)
    assert store.r.xlen(keys.outbox(0)) == before + 1
    assert out.records[1].startswith("A")  # a1: its stored acceptance
    assert out.records[4] == "R" and stored(store, "a2")  # a2: its batch went to decide.lua
    restarted.emit(restarted.process(0, [("102-0", raw(order("a3", ("HOT", 1))))]))
    assert not stored(store, "a3")  # a batch after the mark: refused on the read


@pytest.mark.layout("slots")
def test_parts_a_crash_left_reserved_go_back_before_the_batchs_later_orders(
    store: Store,
) -> None:
    """A crashed attempt reserved one part of a1 (HOT; its ZZZ part never was). On the
    replay the cross-slot path gives that part back before it decides b1, which gets the
    unit: a read taken while the part still held it must not refuse b1."""
    cat = {**CATALOG, "skus": [{"sku": "HOT", "stock": {"wh-a": 1}},
                               {"sku": "TEE", "stock": {"wh-a": 9}},
                               {"sku": "ZZZ", "stock": {}}]}  # fmt: skip
    assert len({sku_slot(s) for s in ("HOT", "TEE", "ZZZ")}) == 3
    load(store, cat)
    crashed = Decider(store, say=lambda _m: None)
    crashed.refresh()
    a1 = order("a1", ("HOT", 1), ("ZZZ", 1))
    part = Part(events.decode(raw(a1)).order, ["HOT"], 0, False, [("wh-a", "HOT", 1)])  # type: ignore[union-attr]
    view = crashed.view
    # the HOT part is reserved, then kill -9 before the ZZZ part
    store.gen.now = 0  # the generation of the batch below (its entry ids: 1970)
    assert store.skus.reserve_parts([[part]], view.floors, view.version) == [[1]]
    store.shards.set_mark(0, "100-0")  # the crashed run's batch ended at a1
    restarted = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("x1", ("HOT", 1))], shard=1, decider=restarted)
    assert outcome(recs[0]) == "sold_out"  # HOT is a suspect of the new process now
    b1 = order("b1", ("HOT", 1), ("TEE", 1))
    out = restarted.process(0, [("100-0", raw(a1)), ("101-0", raw(b1))])
    assert out.records[1] == "R" and out.records[4].startswith("A")  # a1 released, b1 took it


def test_a_catalog_loaded_under_the_read_refuses_nothing_on_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOT split into 2 hot-SKU buckets (2 units each), then merged back into one hash (4
    units) by a catalog loaded between the batch's read and its decisions: the read saw
    bucket 0 alone, the newest catalog (the one the decider refreshes to) says HOT has no
    buckets; b1 (3 units) is for the scripts, which find the 4 units."""
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 3))], decider=d)
    assert outcome(recs[0]) == "sold_out"  # HOT: a suspect
    load(store, catalog(stock={"wh-a": 4}, buckets=2))  # (the decider has not seen it yet)
    read = store.shards.prelude

    def prelude(*args: Any) -> Any:
        got = read(*args)
        load(store, catalog(stock={"wh-a": 4}))
        return got

    monkeypatch.setattr(store.shards, "prelude", prelude)
    recs, _ = decide(store, [order("b1", ("HOT", 3))], decider=d)
    assert outcome(recs[0]) == "accepted"


def test_online_orders_are_refused_before_the_safety_stock_store_channels_may_take(
    store: Store,
) -> None:
    cat = catalog(stock={"wh-a": 2, "st-b": 1})
    cat["locations"] = [CATALOG["locations"][0], {**CATALOG["locations"][1], "safety_stock": 1}]
    load(store, cat)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order(f"a{i}", ("HOT", 1)) for i in range(3)], decider=d)
    assert [outcome(r) for r in recs] == ["accepted", "accepted", "sold_out"]
    batch = [order("b1", ("HOT", 1)), order("b2", ("HOT", 1), channel="pos"),
             order("b3", ("HOT", 1), channel="pos")]  # fmt: skip
    recs, _ = decide(store, batch, decider=d)
    assert [outcome(r) for r in recs] == ["sold_out", "accepted", "sold_out"]
    assert not stored(store, "b1") and stored(store, "b2")  # b1 on the read, b2 by decide.lua
    recs, _ = decide(store, [order("c1", ("HOT", 1), channel="pos")], decider=d)
    assert outcome(recs[0]) == "sold_out" and not stored(store, "c1")


def test_the_decide_mark_of_a_shard(store: Store) -> None:
    load(store, CATALOG)
    assert store.shards.prelude(0, [], [], [], None).mark == "0-0"  # nothing ever written
    for oid in ("a1", "a2"):
        store.r.xadd(keys.inbox(0), {"e": raw(order(oid, ("HOT", 1)))}, id=f"{oid[1]}00-0")
    store.r.hset(keys.emitted(0, store.gen.now), "older", "R")
    # written by a version without the mark: every entry in the stream may be decided
    assert store.shards.prelude(0, [], [], [], None).mark == "200-0"
    store.shards.prelude(0, [], [], [], "300-0")
    assert store.shards.prelude(0, [], [], [], None).mark == "300-0"
    d = Decider(store, say=lambda _m: None)
    d.process(0, [("250-0", raw(order("a3", ("HOT", 1))))])  # a replay: the mark stays
    assert store.r.get(keys.decide_mark(0)) == b"300-0"
    d.process(0, [("400-0", raw(order("a4", ("HOT", 1))))])  # past it, before deciding
    assert store.r.get(keys.decide_mark(0)) == b"400-0"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"per_customer_limit": 1}, "limit_exceeded"),
        ({"vip_presale_until": "2030-01-01T00:00:00Z"}, "vip_only"),
    ],
)
def test_a_ruled_sku_is_judged_by_its_rules_first_also_on_the_read(
    store: Store, rule: dict[str, Any], reason: str
) -> None:
    load(store, catalog(stock={}, **rule))
    d = Decider(store, say=lambda _m: None)
    for oid in ("a1", "a2", "a3"):
        o = order(oid, ("HOT", 1) if oid != "a2" else ("HOT", 2))
        o["customer"] = {"id": "c1" if oid != "a3" else "c3", "vip": oid != "a2"}
        recs, _ = decide(store, [o], decider=d)
        # (a VIP within a limit of 1 meets no rule: sold out; the rule comes first)
        assert outcome(recs[0]) == (reason if oid == "a2" else "sold_out")
        # decide.lua said sold_out to a1: HOT is a suspect; a2 and a3 judged on the read
        # (asked at once: the next fresh batch deletes the journal)
        assert stored(store, oid) == (oid == "a1")


def test_a_customers_second_order_in_a_batch_counts_the_first(store: Store) -> None:
    """Customer c1 has two orders of HOT (limit 3) in one batch: the first takes 2 units,
    so the second (3 units) breaks the limit, which a read of the units sold before the
    batch (0) cannot tell; decide.lua judges it after the first."""
    load(store, catalog(stock={"wh-a": 2}, per_customer_limit=3))
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 3))], decider=d)  # 2 left: sold out for 3
    assert outcome(recs[0]) == "sold_out"
    batch = [order("b1", ("HOT", 2)), order("b2", ("HOT", 3)), order("b3", ("HOT", 3))]
    for o in batch[:2]:
        o["customer"] = {"id": "c1"}
    recs, _ = decide(store, batch, decider=d)
    assert [outcome(r) for r in recs] == ["accepted", "limit_exceeded", "sold_out"]
    assert stored(store, "b2") and not stored(store, "b3")  # b3: c-b3's only order, read


def test_a_channel_lock_refuses_other_channels_on_the_read(store: Store) -> None:
    """HOT's 2 units are douyin's (a lock until 2030): tmall's orders are sold out on the
    read, douyin's go to decide.lua and draw from the lock; once the lock has dissolved
    (an order paid after its end) tmall may buy."""
    lock = {"channel": "douyin", "qty": 2, "until": "2026-11-11T01:00:00Z"}
    cat = catalog(stock={"wh-a": 3}, channel_locks=[lock])
    cat["channels"] = [*CATALOG["channels"], {"id": "douyin"}]
    load(store, cat)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order(f"a{i}", ("HOT", 1)) for i in range(2)], decider=d)
    assert [outcome(r) for r in recs] == ["accepted", "sold_out"]  # 1 unit was free
    batch = [order("b1", ("HOT", 1)), order("b2", ("HOT", 1), channel="douyin"),
             order("b3", ("HOT", 1), paid_at="2026-11-11T01:00:00Z")]  # fmt: skip
    recs, _ = decide(store, batch, decider=d)
    assert [outcome(r) for r in recs] == ["sold_out", "accepted", "accepted"]
    assert not stored(store, "b1") and stored(store, "b2") and stored(store, "b3")


def test_a_pickup_a_channel_lock_refuses_first_is_sold_out(store: Store) -> None:
    """A pickup of HOT's last unit, held as safety stock (online channels cannot take it)
    and by douyin's lock: the lock is judged before the stock, so sold_out, not
    pickup_unavailable; the read leaves it to decide.lua."""
    lock = {"channel": "douyin", "qty": 1, "until": "2030-01-01T00:00:00Z"}
    cat = catalog(stock={"st-b": 1}, channel_locks=[lock])
    cat["channels"] = [*CATALOG["channels"], {"id": "douyin"}]
    cat["locations"] = [CATALOG["locations"][0], {**CATALOG["locations"][1], "safety_stock": 1}]
    load(store, cat)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 1))], decider=d)
    assert outcome(recs[0]) == "sold_out" and stored(store, "a1")
    recs, _ = decide(store, [order("b1", ("HOT", 1), pickup="st-b"), order("b2", ("HOT", 1))],
                     decider=d)  # fmt: skip
    assert [outcome(r) for r in recs] == ["sold_out", "sold_out"]
    assert stored(store, "b1") and not stored(store, "b2")


def test_a_pending_low_stock_alert_is_still_raised(store: Store) -> None:
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    decide(store, [order(f"a{i}", ("HOT", 1)) for i in range(3)], decider=d)  # sold out
    load(store, catalog(stock={}, low_stock_threshold=1))  # at 0, its alert not raised yet
    recs, _ = decide(store, [order("b1", ("HOT", 1))], decider=d)
    assert outcome(recs[0]) == "sold_out"
    alerts: Any = store.r.xrange(keys.alerts("HOT"))
    assert [a[b"reason"] for _, a in alerts] == [b"sold_out"]
    recs, _ = decide(store, [order("c1", ("HOT", 1))], decider=d)  # raised: refused on a read
    assert outcome(recs[0]) == "sold_out" and not stored(store, "c1")
    assert store.r.xlen(keys.alerts("HOT")) == 1


def test_a_sku_split_into_buckets_since_borrows_before_refusing(store: Store) -> None:
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("a1", ("HOT", 3))], decider=d)  # 2 left: sold out for 3
    assert outcome(recs[0]) == "sold_out"
    load(store, catalog(stock={"wh-a": 4}, buckets=2))  # 2 units in each bucket now
    assert int(store.r.hget(keys.stock("HOT"), "wh-a")) < 3  # type: ignore[arg-type]
    recs, _ = decide(store, [order("b1", ("HOT", 3))], decider=d)
    assert outcome(recs[0]) == "accepted"  # its bucket borrowed from the other one


def test_a_pickup_at_a_store_without_the_units_is_refused_on_the_read(store: Store) -> None:
    load(store, catalog(stock={"wh-a": 9, "st-b": 1}))
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("p1", ("HOT", 2), pickup="st-b")], decider=d)
    assert outcome(recs[0]) == "pickup_unavailable" and stored(store, "p1")
    # the SKU is far from sold out, but its store is: a pickup there is refused on the read,
    # one it can serve and the shipments still go to decide.lua
    batch = [order("p2", ("HOT", 2), pickup="st-b"), order("p3", ("HOT", 1), pickup="st-b"),
             order("s1", ("HOT", 1))]  # fmt: skip
    recs, _ = decide(store, batch, decider=d)
    assert [outcome(r) for r in recs] == ["pickup_unavailable", "accepted", "accepted"]
    assert not stored(store, "p2") and stored(store, "p3") and stored(store, "s1")
    # (that read saw the store's last unit: the next pickup there goes to decide.lua, which
    # says again that the store lacks the units)
    for oid, asked in (("p4", True), ("p5", False)):
        recs, _ = decide(store, [order(oid, ("HOT", 1), pickup="st-b")], decider=d)
        assert outcome(recs[0]) == "pickup_unavailable" and stored(store, oid) == asked
    # units back at the store: the read lets the pickups through again
    store.r.hset(keys.stock("HOT"), "st-b", 3)
    recs, _ = decide(store, [order("p6", ("HOT", 2), pickup="st-b")], decider=d)
    assert outcome(recs[0]) == "accepted"
