"""Hot-SKU buckets: one SKU's stock split over hash slots, dry buckets borrowing, exact sell-out."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from dataflows import buckets
from dataflows.decider import Decider
from onestock import burst
from onestock.domain.errors import CatalogError
from onestock.ops import services as ops
from state import keys
from state.store import Store
from tests.conftest import load, make_catalog
from tests.helpers import at_once, decide, order, raw
from tests.test_flow import burst_lines, check_exactly_once, kill_9_twice_then_drain
from tests.test_movements import moved, movement

LOCATIONS = [
    {"id": "wh-a", "lat": 31.2, "lon": 121.5},
    {"id": "wh-b", "lat": 39.9, "lon": 116.4},
    {"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2, "pickup": True, "safety_stock": 2},
]


def catalog(stock: dict[str, int], buckets: int = 4, **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "channels": [{"id": "tmall"}, {"id": "jd"}, {"id": "pos", "kind": "store"}],
        "locations": LOCATIONS,
        "skus": [
            {"sku": "HOT", "stock": stock, "buckets": buckets, **extra},
            {"sku": "SIDE", "stock": {"wh-a": 50, "wh-b": 50}},
        ],
    }


def levels(store: Store, sku: str, b: int) -> dict[str, int]:
    return store.skus.stock_levels([keys.bucket(sku, b)]).get(keys.bucket(sku, b), {})


def test_a_catalog_load_splits_the_stock_over_buckets_on_different_slots(store: Store) -> None:
    load(store, catalog({"wh-a": 10, "wh-b": 3, "st-c": 5}))
    got = [levels(store, "HOT", b) for b in range(4)]
    assert [g.get("wh-a") for g in got] == [3, 3, 2, 2]
    assert [g.get("wh-b") for g in got] == [1, 1, 1, 0]
    # the safety-stock location stays whole in bucket 0
    assert [g.get("st-c", 0) for g in got] == [5, 0, 0, 0]
    assert len({key_slot(keys.stock(keys.bucket("HOT", b)).encode()) for b in range(4)}) == 4
    view = ops.stock_view(store, "HOT")["HOT"]
    assert view.total == 18 and view.locations == {"wh-a": 10, "wh-b": 3, "st-c": 5}
    assert view.available["tmall"] == 16 and view.available["pos"] == 18
    # a reload with fewer buckets gathers the stock again; the dropped buckets go
    load(store, catalog({"wh-a": 7}, buckets=2))
    assert levels(store, "HOT", 0) == {"wh-a": 4} and levels(store, "HOT", 1) == {"wh-a": 3}
    assert not store.r.exists(keys.stock(keys.bucket("HOT", 2)))
    assert ops.stock_view(store, "HOT")["HOT"].total == 7


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"per_customer_limit": 2}, "per_customer_limit"),
        ({"low_stock_threshold": 5}, "low_stock_threshold"),
        (
            {"channel_locks": [{"channel": "jd", "qty": 1, "until": "2026-11-11T02:00:00Z"}]},
            "channel_locks",
        ),
    ],
)
def test_rules_that_count_per_sku_are_refused_on_a_bucketed_sku(extra: dict, word: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(CatalogError, match=rf"\$\.skus\[0\]\.buckets: .*{word}"):
        make_catalog(catalog({"wh-a": 1}, **extra))


def test_a_campaign_on_a_bucketed_sku_is_refused() -> None:
    data = catalog({"wh-a": 1})
    data["campaigns"] = [{"id": "G", "sku": "SIDE", "gift_sku": "HOT", "first_n": 1}]
    with pytest.raises(CatalogError, match=r"\$\.campaigns\[0\]\.gift_sku: .*buckets"):
        make_catalog(data)


def test_orders_are_decided_in_the_bucket_of_their_shard_and_shown_as_the_sku(
    store: Store,
) -> None:
    load(store, catalog({"wh-a": 8, "wh-b": 8}))
    for shard in range(4):
        recs, _ = decide(store, [order(f"o{shard}", ("HOT", 1), lat=31.2, lon=121.5)], shard)
        assert recs[0].status == "accepted"
        assert recs[0].shipments[0].lines[0].sku == "HOT"
        assert recs[0].shipments[0].location == "wh-a"
    assert [levels(store, "HOT", b)["wh-a"] for b in range(4)] == [1, 1, 1, 1]
    # a basket (several lines) is decided in bucket 0
    recs, _ = decide(store, [order("basket", ("HOT", 1), ("SIDE", 1), lat=31.2, lon=121.5)], 3)
    assert recs[0].status == "accepted"
    assert levels(store, "HOT", 0)["wh-a"] == 0


def test_a_dry_bucket_borrows_from_the_others_and_sells_out_exactly(store: Store) -> None:
    load(store, catalog({"wh-a": 9, "wh-b": 3}))  # buckets: wh-a 3,2,2,2 and wh-b 1,1,1,0
    events = [order(f"o{i}", ("HOT", 1), lat=31.2, lon=121.5) for i in range(14)]
    recs, _ = decide(store, events, shard=1)  # all in bucket 1, which holds 3 units
    statuses = [r.status for r in recs]
    assert statuses == ["accepted"] * 12 + ["rejected"] * 2
    assert [r.reason for r in recs[12:]] == ["sold_out", "sold_out"]
    # nearest first within what the bucket holds, then the borrowed units
    assert sum(r.shipments[0].location == "wh-a" for r in recs[:12]) == 9
    assert ops.stock_view(store, "HOT")["HOT"].total == 0
    assert all(not store.r.hlen(keys.lent(keys.bucket("HOT", b))) for b in range(4))
    # a replay changes nothing and returns the same outcomes (stored per bucket)
    again, _ = decide(store, events, shard=1)
    assert again == []  # already emitted: nothing written twice


def test_pickup_and_store_channels_meet_the_safety_stock_in_bucket_0(store: Store) -> None:
    load(store, catalog({"st-c": 4}))  # safety stock 2 at st-c: all of it in bucket 0
    recs, _ = decide(store, [order("p1", ("HOT", 3), pickup="st-c")], shard=1)
    assert recs[0].reason == "pickup_unavailable"  # online: only the 2 above the floor
    recs, _ = decide(store, [order("p2", ("HOT", 2), pickup="st-c")], shard=2)
    assert recs[0].status == "accepted"  # borrowed from bucket 0, which kept its floor
    recs, _ = decide(store, [order("p3", ("HOT", 1), pickup="st-c")], shard=3)
    assert recs[0].reason == "pickup_unavailable"
    recs, _ = decide(store, [order("p4", ("HOT", 2), channel="pos", pickup="st-c")], shard=3)
    assert recs[0].status == "accepted"  # a store channel may take the safety stock
    assert ops.stock_view(store, "HOT")["HOT"].total == 0


def test_a_transfer_cut_in_half_by_a_crash_is_counted_and_finished(store: Store) -> None:
    load(store, catalog({"wh-a": 8}))
    lender, v = keys.bucket("HOT", 2), int(store.r.get(keys.CATALOG_VERSION))  # type: ignore[arg-type]
    got = store.buckets._lend(
        keys=[keys.stock(lender), keys.lent(lender)], args=["t1.2", 0, "all", v, "wh-a", 0]
    )
    assert got == [b"wh-a", 2]
    # the crash: the lender gave 2 units, bucket 0 never received them; the view still
    # counts them (in flight), and a worker that starts finishes the transfer, once
    assert ops.stock_view(store, "HOT")["HOT"].total == 8
    d = Decider(store, say=lambda _m: None)
    d.refresh()
    assert levels(store, "HOT", 0)["wh-a"] == 4 and levels(store, "HOT", 2)["wh-a"] == 0
    assert not store.r.hlen(keys.lent(lender))
    assert store.buckets.reconcile("HOT", 4) == 0
    assert ops.stock_view(store, "HOT")["HOT"].total == 8


def test_a_cancel_and_a_return_of_a_bucketed_order_give_units_back(store: Store) -> None:
    load(store, catalog({"wh-a": 8}))
    recs, _ = decide(store, [order("c1", ("HOT", 2), lat=31.2, lon=121.5)], shard=3)
    recs, _ = decide(store, [order("r1", ("HOT", 1), lat=31.2, lon=121.5)], shard=2)
    assert levels(store, "HOT", 3) == {"wh-a": 0} and levels(store, "HOT", 2) == {"wh-a": 1}
    recs, _ = decide(store, [{"type": "cancel", "order_id": "c1"}], shard=3)
    assert recs[0].status == "cancelled"  # the units it gave back, shown as the SKU
    assert [(s.location, ln.sku, ln.qty) for s in recs[0].shipments for ln in s.lines] == [
        ("wh-a", "HOT", 2)
    ]
    assert levels(store, "HOT", 3) == {"wh-a": 2}  # back into the bucket they came from
    ret = {"type": "return", "order_id": "r1", "lines": [{"sku": "HOT", "qty": 1}],
           "location": "wh-a"}  # fmt: skip
    _, dead = decide(store, [ret], shard=2)
    assert dead == []
    _, dead = decide(
        store, [{**ret, "lines": [{"sku": "HOT", "qty": 1}, {"sku": "SIDE", "qty": 1}]}], 2
    )
    assert "was not shipped" in dead[0][2]
    assert ops.stock_view(store, "HOT")["HOT"].total == 8  # 8 - 2 - 1, + 2 back, + 1 back


def _evalsha(store: Store) -> int:
    return int(store.r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_sold_out_bucketed_sku_is_refused_on_a_read_like_any_other(store: Store) -> None:
    load(store, catalog({"wh-a": 4}))  # one unit in each bucket
    store.r.hset(keys.stock("SIDE"), "wh-a", 0)
    store.r.hset(keys.stock("SIDE"), "wh-b", 0)
    d = Decider(store, say=lambda _m: None)
    first = [order(f"a{i}", ("HOT", 1)) for i in range(6)] + [order("s0", ("SIDE", 1))]
    recs, _ = decide(store, first, shard=1, decider=d)
    assert [r.status for r in recs[:4]] == ["accepted"] * 4
    assert {r.reason for r in recs[4:]} == {"sold_out"}
    # the next batches: the hot SKU's orders, in every bucket, are refused on the read with
    # no script but the batch's emit, no lease and no borrowing, as the plain SKU's are
    for shard in (2, 3, 0):
        calls = {}
        for n, sku in enumerate(("SIDE", "HOT", "HOT")):
            before = _evalsha(store)
            batch = [order(f"{sku}{shard}-{n}-{i}", (sku, 1)) for i in range(9)]
            recs, _ = decide(store, batch, shard, decider=d)
            assert {r.reason for r in recs} == {"sold_out"} and len(recs) == 9
            calls[n] = _evalsha(store) - before
        assert calls[1] == calls[0] == calls[2], calls  # (emit.lua and the shard's tick)
    # a store channel's order, a pickup and a basket too
    before = _evalsha(store)
    recs, _ = decide(store, [order("st", ("HOT", 1), channel="pos"),
                             order("pk", ("HOT", 1), pickup="st-c"),
                             order("bk", ("HOT", 1), ("SIDE", 1))], 2, decider=d)  # fmt: skip
    assert [r.reason for r in recs] == ["sold_out", "pickup_unavailable", "sold_out"]
    assert _evalsha(store) - before == calls[0]
    # a unit back (a cancel into bucket 2): the read sees it, the order gets it
    decide(store, [{"type": "cancel", "order_id": "a1"}], shard=1, decider=d)
    recs, _ = decide(store, [order("back", ("HOT", 1))], shard=3, decider=d)
    assert recs[0].status == "accepted"


def _sold_out_hot(store: Store) -> int:
    """HOT loaded with a unit in buckets 0 and 2, the rest sold; the catalog version."""
    load(store, catalog({"wh-a": 4}))
    for b in (1, 3):
        store.r.hset(keys.stock(keys.bucket("HOT", b)), "wh-a", 0)
    return int(store.r.get(keys.CATALOG_VERSION))  # type: ignore[arg-type]


def test_a_read_of_the_buckets_is_one_moment_or_none(store: Store) -> None:
    version = _sold_out_hot(store)
    hot = {"HOT": 4}
    got = store.buckets.snapshot(hot, version)
    assert [p.levels for p in got["HOT"]] == [{"wh-a": 1}, {"wh-a": 0}, {"wh-a": 1}, {"wh-a": 0}]
    assert store.buckets.snapshot(hot, version - 1) == {}  # rules of a newer catalog
    # units that move between the two rounds: the read cannot tell the moment, leaves it out
    into = keys.bucket("HOT", 1)
    whole = store.buckets.read_whole(hot)
    store.buckets.borrow([("HOT", 4, 1, ["wh-a"])], True, {}, version)  # 0 and 2 lend to 1
    assert store.buckets.confirm(whole, version) == {}
    assert [p.levels["wh-a"] for p in store.buckets.snapshot(hot, version)["HOT"]] == [0, 2, 0, 0]
    # a transfer in flight before the read (the lender gave, the recipient has not received)
    args = ["t9", 3, "all", version, "wh-a", 0]
    store.buckets._lend(keys=[keys.stock(into), keys.lent(into)], args=args)
    assert store.buckets.snapshot(hot, version) == {}
    store.buckets.reconcile("HOT", 4)
    assert [p.levels["wh-a"] for p in store.buckets.snapshot(hot, version)["HOT"]] == [0, 0, 0, 2]
    # a unit that comes in during the read (here by a reload of one bucket)
    whole = store.buckets.read_whole(hot)
    store.skus.set_stock(keys.bucket("HOT", 2), {"wh-a": 1}, [])
    assert store.buckets.confirm(whole, version) == {}


PROCS, ORDERS_EACH, STOCK = 8, 200, {"wh-a": 61, "wh-b": 17, "st-c": 9}


def _racer(url: str, shard: int, start: mp.Event) -> None:  # type: ignore[valid-type]
    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    events = []
    for i in range(ORDERS_EACH):
        lines = [("HOT", 1 + i % 2)] + ([("SIDE", 1)] if i % 7 == 0 else [])
        channel = "pos" if i % 11 == 0 else ("tmall" if i % 2 else "jd")
        pickup = "st-c" if i % 13 == 0 else None
        events.append(
            order(
                f"p{shard}-{i}",
                *lines,
                lat=30 + i % 10,
                lon=115 + i % 7,
                channel=channel,
                pickup=pickup,
            )  # fmt: skip
        )
    events += [order(f"p{shard}-one-{i}", ("HOT", 1), channel="pos") for i in range(20)]
    start.wait()  # type: ignore[attr-defined]
    _in_batches(d, shard, events, 20)


def _in_batches(d: Decider, shard: int, events: list[Any], size: int) -> None:
    """The events decided and emitted as one worker's batches of ``size`` on ``shard``."""
    for b in range(0, len(events), size):
        chunk = events[b : b + size]
        d.emit(d.process(shard, [(f"{b + j + 1}-0", raw(e)) for j, e in enumerate(chunk)]))


@pytest.mark.parametrize("round_", range(2))
def test_racing_processes_sell_a_bucketed_sku_out_exactly(
    store: Store, url: str, round_: int
) -> None:
    load(store, catalog(STOCK))
    # shards 0, 1, 4, 5, ...: every order lands in bucket 0 or 1 (shard % 4), so the units
    # of buckets 2 and 3 sell only by being lent
    shards = [s for s in range(2 * PROCS) if s % 4 < 2]
    at_once(_racer, [(url, s) for s in shards], timeout=120)
    audit = ops.audit(store, 2 * PROCS, {"HOT": STOCK, "SIDE": {"wh-a": 50, "wh-b": 50}})
    assert audit.records == PROCS * (ORDERS_EACH + 20)
    assert audit.duplicates == 0 and audit.oversold == 0
    for b in range(4):
        assert all(q >= 0 for q in levels(store, "HOT", b).values())
    # demand far exceeds the stock and every process ends with one-unit store-channel
    # orders: every unit goes, none twice, though most were in other buckets
    assert ops.stock_view(store, "HOT")["HOT"].total == 0
    assert audit.rejected["sold_out"] > 0


@pytest.mark.slow
def test_kill_9_mid_burst_with_buckets_then_resume(cli_env: dict[str, str], url: str) -> None:
    store = Store.connect(url)
    cat = burst.bucket_catalog(buckets=4, stock_scale=0.05)  # the hot SKU sells out mid-way
    store.load_catalog(cat, [s.sku for s in cat.skus])
    lines = burst_lines(30000, seed=21)
    kill_9_twice_then_drain(cli_env, store, lines, (3000, 12000))
    ids = {orjson.loads(x)["order_id"] for x in lines}
    audit = check_exactly_once(store, ids, dead=0, loaded={s.sku: dict(s.stock) for s in cat.skus})
    hot = cat.skus[0].sku
    assert audit.rejected["sold_out"] > 0
    assert all(not store.r.hlen(keys.lent(keys.bucket(hot, b))) for b in range(4))
    # nothing left an online channel could sell (bucket 0 keeps the safety stock)
    assert ops.stock_view(store, hot)[hot].available["tmall"] == 0


def test_a_pickup_at_a_store_the_buckets_lack_is_refused_without_borrowing(store: Store) -> None:
    load(store, catalog({"wh-a": 40, "st-c": 4}))  # st-c: all in bucket 0, 2 of safety stock
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("p1", ("HOT", 2), pickup="st-c")], shard=1, decider=d)
    assert recs[0].status == "accepted"  # bucket 1 borrowed the 2 above the floor
    recs, _ = decide(store, [order("p2", ("HOT", 1), pickup="st-c")], shard=2, decider=d)
    assert recs[0].reason == "pickup_unavailable"  # (after borrowing: only the floor is left)
    before = _evalsha(store)
    decide(store, [order("u", ("NOPE", 1))], shard=3, decider=d)  # no script: the reference
    plain = _evalsha(store) - before
    for shard in (1, 2, 3, 0):  # every bucket: refused on the read, no lease, no borrowing
        before = _evalsha(store)
        recs, _ = decide(store, [order(f"q{shard}", ("HOT", 1), pickup="st-c")], shard, d)
        assert recs[0].reason == "pickup_unavailable"
        assert _evalsha(store) - before == plain
    # a store channel may take the safety stock: the read lets its pickup through
    recs, _ = decide(store, [order("s", ("HOT", 2), channel="pos", pickup="st-c")], 1, d)
    assert recs[0].status == "accepted"


def test_no_decision_waits_on_the_mover_lease_unless_the_read_cannot_tell(store: Store) -> None:
    load(store, catalog({"wh-a": 8}))  # 2 units in each bucket
    d = Decider(store, say=lambda _m: None)
    held: list[bool] = []
    decide_calls = d._decide

    def watched(orders, outcome, held_ids):  # type: ignore[no-untyped-def]
        held.append(bool(store.r.exists(keys.lend_lock("HOT"))))
        decide_calls(orders, outcome, held_ids)

    d._decide = watched  # type: ignore[method-assign]
    batch = [order(f"o{i}", ("HOT", 1)) for i in range(5)] + [order("big", ("HOT", 4))]
    recs, _ = decide(store, batch, shard=1, decider=d)  # all in bucket 1
    # 2 from bucket 1, 3 borrowed (half of the others' 1+1+1, rounded up), then 3 left in
    # the other buckets: the read refuses the order of 4 (no last round under the lease)
    assert [r.status for r in recs] == ["accepted"] * 5 + ["rejected"]
    assert recs[5].reason == "sold_out"
    assert held == [False, False]  # the batch's decision, the one after borrowing
    # where the read cannot tell (units kept moving, say: here it never can), the last round
    # decides under the lease, exactly as before
    store.buckets.snapshot = lambda *_a: {}  # type: ignore[method-assign]
    held.clear()
    recs, _ = decide(store, [order("huge", ("HOT", 9))], shard=1, decider=d)
    assert recs[0].reason == "sold_out"
    first = held.index(True)  # the tries of the last round, then its refusal at once
    assert not any(held[:first]) and held[first:] == [True] * (buckets.LAST_TRIES + 1)
    assert ops.stock_view(store, "HOT")["HOT"].total == 3


def test_a_replayed_order_of_a_dry_sku_gets_its_stored_acceptance(store: Store) -> None:
    load(store, catalog({"wh-a": 4}))  # one unit per bucket
    for b in (0, 2, 3):  # the rest sold: only bucket 1 holds a unit
        store.r.hset(keys.stock(keys.bucket("HOT", b)), "wh-a", 0)
    entries = [("100-0", raw(order("A", ("HOT", 1))))]
    Decider(store, say=lambda _m: None).process(1, entries)  # A takes it; kill -9: no emit
    d = Decider(store, say=lambda _m: None)  # the restarted worker
    recs, _ = decide(store, [order("B", ("HOT", 1))], shard=5, decider=d)  # bucket 1 too
    assert recs[0].reason == "sold_out"  # (the worker now knows the SKU as dry)
    out = d.process(1, entries)  # the crashed batch again: straight to borrowing, and then
    d.emit(out)  # to the scripts, which answer A's replay with its stored acceptance
    assert out.records[1][:1] == "A"
    assert ops.audit(store, 8, {"HOT": {"wh-a": 1}}).oversold == 0  # (3 set to 0 above)


def test_a_reload_between_borrowing_rounds_lends_nothing_from_the_new_stock(store: Store) -> None:
    load(store, catalog({"wh-a": 8}))  # 2 units in each of 4 buckets
    d = Decider(store, say=lambda _m: None)
    decide(store, [order("warm", ("SIDE", 1))], shard=1, decider=d)  # d on this catalog
    real = store.skus.decide
    loaded: list[bool] = []

    def decided(*a: Any) -> Any:  # a reload to one bucket lands after the batch's decision
        got = real(*a)
        if not loaded:
            loaded.append(True)
            load(store, catalog({"wh-a": 8}, buckets=1))
        return got

    store.skus.decide = decided  # type: ignore[method-assign,assignment]
    recs, _ = decide(store, [order("big", ("HOT", 3))], shard=1, decider=d)  # bucket 1: 2
    # the worker's plan of four buckets is stale: lend.lua refuses, the batch is decided
    # again under the new catalog (one hash), and no unit left the SKU
    assert recs[0].status == "accepted"
    assert not store.r.exists(keys.stock(keys.bucket("HOT", 1)))
    assert ops.stock_view(store, "HOT")["HOT"].total == 5


def test_a_move_cut_by_a_lost_connection_is_finished_by_the_next_move(store: Store) -> None:
    load(store, catalog({"wh-a": 4}))  # one unit per bucket
    d = Decider(store, say=lambda _m: None)
    decide(store, [order("warm", ("SIDE", 1))], shard=1, decider=d)
    finish, forget, cut = store.buckets._finish, store.buckets._forget, []

    def lost(real: Any) -> Any:
        def call(*a: Any) -> Any:
            if real.__name__ not in cut and a[0]:  # (once each)
                cut.append(real.__name__)
                raise redis.ConnectionError("connection lost")  # (Waiter retries the move)
            return real(*a)

        return call

    store.buckets._finish = lost(finish)  # type: ignore[method-assign]
    recs, _ = decide(store, [order("o1", ("HOT", 2))], shard=1, decider=d)
    assert cut == ["_finish"] and recs[0].status == "accepted"  # (the retried move found
    # the transfer the first try left in flight, and finished it first)
    store.buckets._forget = lost(forget)  # type: ignore[method-assign]
    recs, _ = decide(store, [order("o2", ("HOT", 2))], shard=2, decider=d)
    assert cut == ["_finish", "_forget"] and recs[0].status == "accepted"
    # the received transfer the lost forget left behind is forgotten by the next move, not
    # received again (its mark stays)
    recs, _ = decide(store, [order("o3", ("HOT", 1))], shard=3, decider=d)
    assert recs[0].reason == "sold_out"
    assert ops.stock_view(store, "HOT")["HOT"].total == 0
    assert all(not store.r.hlen(keys.lent(keys.bucket("HOT", b))) for b in range(4))


def test_a_worker_finishes_stray_transfers_under_the_lease_a_load_takes(store: Store) -> None:
    import threading

    load(store, catalog({"wh-a": 8}))
    lease = store.buckets.lease("HOT")
    assert lease.acquire()  # a catalog load (or a move) holds it
    started = threading.Thread(target=Decider(store, say=lambda _m: None).refresh)
    started.start()
    started.join(0.5)
    assert started.is_alive()  # the starting worker's reconcile waits for the lease
    lease.release()
    started.join(10)
    assert not started.is_alive()


def _everything_into(store: Store, d: Decider, b: int, real_borrow: Any) -> None:
    """Another worker's move (under the SKU's lease, as a move is): everything into bucket b."""
    plan = d.view.buckets
    with store.buckets.lease("HOT"):
        real_borrow([("HOT", 4, b, plan.locations)], True, plan.floors, plan.version)


def _cut_finish_once(store: Store, armed: list[bool]) -> None:
    """The connection is lost between a move's lends and its receive, once, when armed."""
    finish = store.buckets._finish

    def cut(*a: Any) -> Any:
        if armed and armed[0]:
            armed[0] = False
            raise redis.ConnectionError("connection lost")  # (Waiter retries the borrow)
        return finish(*a)

    store.buckets._finish = cut  # type: ignore[method-assign,assignment]


def test_a_last_round_move_cut_by_a_lost_connection_is_finished_before_deciding(
    store: Store,
) -> None:
    load(store, catalog({"wh-a": 8}))  # 2 units per bucket
    d = Decider(store, say=lambda _m: None)
    decide(store, [order("warm", ("SIDE", 1))], shard=1, decider=d)
    real_borrow, real_decide = store.buckets.borrow, store.skus.decide
    borrows: list[int] = []
    armed: list[bool] = []

    def borrow(*a: Any) -> Any:
        borrows.append(1)
        if len(borrows) == 4:  # the last round's move (half, round 1, round 2, last)
            armed.append(True)
        return real_borrow(*a)

    def decided(*a: Any) -> Any:
        # rounds decided without the lease: another worker (whose orders land in bucket 2)
        # borrows everything first, so "o" stays short until the last round
        if not store.r.exists(keys.lend_lock("HOT")):
            _everything_into(store, d, 2, real_borrow)
        return real_decide(*a)

    store.buckets.borrow = borrow  # type: ignore[method-assign,assignment]
    store.skus.decide = decided  # type: ignore[method-assign,assignment]
    _cut_finish_once(store, armed)
    recs, _ = decide(store, [order("o", ("HOT", 3))], shard=1, decider=d)  # bucket 1
    total = ops.stock_view(store, "HOT")["HOT"].total
    in_flight = store.buckets.in_flight("HOT", 4)
    # all 8 units of the SKU exist (lent by bucket 2, not yet received by bucket 1) and
    # nothing sold them: the order of 3 must not be refused
    got = (recs[0].status, recs[0].reason, total, in_flight)
    assert got == ("accepted", None, 5, {}), got


def test_a_movements_gathering_cut_by_a_lost_connection_is_finished_first(store: Store) -> None:
    load(store, catalog({"wh-a": 40}))  # 10 at wh-a in each bucket
    armed = [True]
    _cut_finish_once(store, armed)  # the gather's receive is cut once
    d = Decider(store, say=lambda _m: None)
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))], shard=1, decider=d)
    assert not armed[0]  # (the cut happened)
    # the count says wh-a holds 12 units; the next move of the SKU finishes the transfer
    store.buckets.reconcile("HOT", 4)
    at_a = sum(levels(store, "HOT", b).get("wh-a", 0) for b in range(4))
    assert at_a == 12, f"a count to 12 left {at_a} units at wh-a"


def test_the_last_round_refuses_only_on_a_read_while_units_come_back(
    store: Store, url: str
) -> None:
    load(store, catalog({"wh-a": 8}))  # 2 units per bucket
    other = Store.connect(url)  # the other workers (their own clients, no lease)
    d2 = Decider(other, say=lambda _m: None)
    recs, _ = decide(other, [order("x", ("HOT", 2))], shard=2, decider=d2)  # bucket 2
    assert recs[0].status == "accepted"  # the SKU now has 6 units
    d = Decider(store, say=lambda _m: None)
    decide(store, [order("warm", ("SIDE", 1))], shard=1, decider=d)
    real_decide = store.skus.decide
    done: list[int] = []

    def decided(*a: Any) -> Any:
        if not store.r.exists(keys.lend_lock("HOT")):  # another worker borrows it all first
            _everything_into(other, d, 3, other.buckets.borrow)
        elif not done:  # the last round, lease held, between its move and its decision:
            done.append(1)  # x is cancelled (2 units back into bucket 2), and y, an order
            # of another shard deciding in bucket 1, takes 2 units there
            decide(other, [{"type": "cancel", "order_id": "x"}], shard=2, decider=d2)
            r, _ = decide(other, [order("y", ("HOT", 2))], shard=5, decider=d2)
            assert r[0].status == "accepted"
        return real_decide(*a)

    store.skus.decide = decided  # type: ignore[method-assign,assignment]
    recs, _ = decide(store, [order("o", ("HOT", 6))], shard=1, decider=d)  # bucket 1
    # the SKU held 6 units before the cancel, 8 after it, 6 after y: never fewer than 6
    left = ops.stock_view(store, "HOT")["HOT"].total
    assert done and (recs[0].status, recs[0].reason, left) == ("accepted", None, 0)


RACE_STOCK = {"wh-a": 41, "wh-b": 23, "st-c": 11}


def _racer2(url: str, shard: int, n: int, start: mp.Event) -> None:  # type: ignore[valid-type]
    store = Store.connect(url)
    d = Decider(store, say=lambda _m: None)
    events: list[Any] = []
    for i in range(n):
        lines = [("HOT", 1 + i % 3)] + ([("SIDE", 1)] if i % 9 == 0 else [])
        channel = "pos" if i % 7 == 0 else "tmall"
        pickup = "st-c" if i % 5 == 0 else None
        events.append(order(f"r{shard}-{i}", *lines, lat=30 + i % 9, lon=115 + i % 5,
                            channel=channel, pickup=pickup))  # fmt: skip
        if i % 4 == 3:  # a cancel of an earlier order of this shard
            events.append({"type": "cancel", "order_id": f"r{shard}-{i - 3}"})
    start.wait()  # type: ignore[attr-defined]
    _in_batches(d, shard, events, 15)


@pytest.mark.parametrize("round_", range(2))
def test_racing_workers_with_cancels_pickups_and_baskets_in_every_bucket(
    store: Store, url: str, round_: int
) -> None:
    load(store, catalog(RACE_STOCK))
    shards = list(range(8))
    at_once(_racer2, [(url, s, 120) for s in shards], timeout=240)
    audit = ops.audit(store, 16, {"HOT": RACE_STOCK, "SIDE": {"wh-a": 50, "wh-b": 50}})
    assert audit.duplicates == 0 and audit.oversold == 0, audit
    for b in range(4):
        assert all(q >= 0 for q in levels(store, "HOT", b).values())
    assert store.buckets.in_flight("HOT", 4) == {}
    _sold_exactly_what_is_left(store)
    assert ops.stock_view(store, "HOT")["HOT"].total == 0


def _reloader(url: str, start: mp.Event) -> None:  # type: ignore[valid-type]
    import time

    store = Store.connect(url)
    start.wait()  # type: ignore[attr-defined]
    for k in range(6):
        time.sleep(0.05)
        load(store, catalog({"wh-a": 30 + k, "wh-b": 9, "st-c": 5}, buckets=(4, 2, 4, 3, 4, 4)[k]))


def _race_role(url: str, role: int, start: mp.Event) -> None:  # type: ignore[valid-type]
    if role < 0:
        _reloader(url, start)
    else:
        _racer2(url, role, 200, start)


@pytest.mark.parametrize("round_", range(2))
def test_racing_workers_and_reloads_that_change_the_buckets(
    store: Store, url: str, round_: int
) -> None:
    load(store, catalog({"wh-a": 30, "wh-b": 9, "st-c": 5}))
    at_once(_race_role, [(url, r) for r in [-1, *range(8)]], timeout=300)
    audit = ops.audit(store, 16, {"HOT": {}, "SIDE": {}})
    assert audit.duplicates == 0, audit
    for b in range(4):
        assert all(q >= 0 for q in levels(store, "HOT", b).values())
    assert store.buckets.in_flight("HOT", 4) == {}
    _sold_exactly_what_is_left(store)


def test_a_rejected_shipment_of_a_bucketed_order_is_rerouted_from_every_bucket(
    store: Store,
) -> None:
    load(store, catalog({"wh-a": 4, "wh-b": 40}))  # per bucket: wh-a 1, wh-b 10
    d = Decider(store, say=lambda _m: None)
    recs, _ = decide(store, [order("o", ("HOT", 1), lat=31.2, lon=121.5)], shard=1, decider=d)
    assert recs[0].status == "accepted"  # bucket 1, from wh-a
    recs, _ = decide(store, [order("b0", ("HOT", 10), lat=39.9, lon=116.4)], shard=0, decider=d)
    assert recs[0].status == "accepted"  # bucket 0's wh-b sold
    said = {"type": "fulfilment", "order_id": "o", "location": "wh-a", "status": "rejected"}
    recs, _ = decide(store, [said], shard=1, decider=d)
    left = ops.stock_view(store, "HOT")["HOT"].total
    # wh-b still holds 30 units of HOT (buckets 1-3): the shipment can go there
    assert (recs[-1].status, recs[-1].reason, left) == ("accepted", None, 29 + 3)


def _bought_in_bucket_2(store: Store, url: str) -> tuple[Store, Decider]:
    """HOT with 10 at wh-a per bucket; order x took 2 of them from bucket 2 (shard 2)."""
    load(store, catalog({"wh-a": 40}))
    other = Store.connect(url)
    d2 = Decider(other, say=lambda _m: None)
    recs, _ = decide(other, [order("x", ("HOT", 2))], shard=2, decider=d2)
    assert recs[0].status == "accepted"
    return other, d2


def _at_a(store: Store) -> int:
    return sum(levels(store, "HOT", b).get("wh-a", 0) for b in range(4))


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([("HOT", 12)], id="one"),
        pytest.param([("HOT", 12), ("SIDE", 7)], marks=pytest.mark.layout("slots"), id="two"),
        pytest.param([("HOT", 12), ("SIDE", 7)], id="two-one-call"),  # the one-server layout
    ],
)
def test_a_count_of_a_bucketed_sku_counts_units_back_during_it(
    store: Store, url: str, lines: list[tuple[str, int]]
) -> None:
    """x's 2 units come back into bucket 2 after the gathering, before the count's hold (a
    cancel takes no lease): the count holds again, so it counts them (one slot, and a count
    across slots)."""
    other, d2 = _bought_in_bucket_2(store, url)
    real_run = store.movements.run
    done: list[int] = []

    def run(*a: Any) -> Any:  # after the gather, before the count's hold: x is cancelled
        if not done:
            done.append(1)
            decide(other, [{"type": "cancel", "order_id": "x"}], shard=2, decider=d2)
        return real_run(*a)

    store.movements.run = run  # type: ignore[method-assign,assignment]
    decide(store, [movement("c1", "count", "wh-a", *lines)], shard=0)
    assert done and _at_a(store) == 12, f"a count to 12 left {_at_a(store)} units at wh-a"
    assert moved(store)["c1"].lines[0].discrepancy == 12 - 40  # (x's 2 were back: counted)


def test_a_replayed_count_of_a_bucketed_sku_holds_by_its_first_guard(
    store: Store, url: str
) -> None:
    """Killed after the count's hold, before its commit; x's units come back into bucket 2;
    the replay's gathering moves them into bucket 0 after the hold: a guard read anew would
    let them survive the count, the one kept with the hold says they came before it."""
    other, d2 = _bought_in_bucket_2(store, url)
    real_run = store.movements.run

    def killed(calls: Any) -> Any:
        got = real_run(calls)
        if any(c.mode == "hold" for c in calls):
            raise SystemExit("kill -9 after the hold")
        return got

    store.movements.run = killed  # type: ignore[method-assign,assignment]
    with pytest.raises(SystemExit):
        decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))], shard=0)
    store.movements.run = real_run  # type: ignore[method-assign]
    decide(other, [{"type": "cancel", "order_id": "x"}], shard=2, decider=d2)
    assert _at_a(store) == 2  # (the held units are out; x's are back in bucket 2)
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))], shard=0)
    assert moved(store)["c1"].status == "applied"
    assert _at_a(store) == 12, f"a count to 12 left {_at_a(store)} units at wh-a"


def _sold_exactly_what_is_left(store: Store) -> None:
    """Alone now: store-channel one-unit orders take every unit left, and only then refuse."""
    d = Decider(store, say=lambda _m: None)
    left = ops.stock_view(store, "HOT")["HOT"].total
    for i in range(left + 1):
        recs, _ = decide(store, [order(f"sweep{i}", ("HOT", 1), channel="pos")], 9, d)
        assert (recs[0].status == "accepted") == (i < left), (i, left, recs[0].reason)


def _at(store: Store, sku: str, loc: str = "wh-a") -> int:
    return sum(levels(store, sku, b).get(loc, 0) for b in range(4))


@pytest.mark.parametrize(
    ("later", "left"),
    [
        (("c2", "count", ("HOT", 20)), 20),
        (("s1", "sale", ("HOT", 3)), 9),
        (("r1", "receipt", ("HOT", 5)), 17),
    ],  # fmt: skip
    ids=["count", "sale", "receipt"],
)
def test_a_movement_after_a_count_in_one_batch_meets_the_count_done(
    store: Store, later: tuple[str, str, tuple[str, int]], left: int
) -> None:
    """A count of a bucketed SKU is held, then committed: a later movement of its batch is
    applied after the commit (a second count's hold found nothing left, and both added up; a
    sale found the units held and was refused). Found by a review of the count's guard."""
    load(store, catalog({"wh-a": 40}))
    mid, kind, line = later
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12)), movement(mid, kind, "wh-a", line)])
    assert {r.status for r in moved(store).values()} == {"applied"}
    assert _at(store, "HOT") == left


def test_a_rehold_leaves_a_later_receipt_of_the_batch_alone(store: Store, url: str) -> None:
    """x's units come back during the count: it holds again, and that must not take the units
    of a receipt that comes after it in the batch."""
    other, d2 = _bought_in_bucket_2(store, url)
    real_run = store.movements.run
    done: list[int] = []

    def run(calls: Any) -> Any:
        if not done and any(c.mode == "hold" for c in calls):
            decide(other, [{"type": "cancel", "order_id": "x"}], shard=2, decider=d2)
            done.append(1)
        return real_run(calls)

    store.movements.run = run  # type: ignore[method-assign,assignment]
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12)),
                   movement("r1", "receipt", "wh-a", ("HOT", 5))])  # fmt: skip
    assert done and _at(store, "HOT") == 17
    assert moved(store)["c1"].lines[0].discrepancy == 12 - 40


def test_a_count_waits_while_units_keep_coming_back_and_says_so(store: Store) -> None:
    """Changes in the other buckets at every check (here at another location: the guard is
    per bucket): the count keeps trying, pausing after a while, says so once, and counts
    right once they stop."""
    load(store, catalog({"wh-a": 40, "wh-b": 40}))
    real = store.buckets.change_counts
    calls = [0]

    def noisy(*a: Any) -> Any:  # a cancel into bucket 2 at wh-b before each check
        calls[0] += 1
        if calls[0] <= 120:
            store.r.hincrby(keys.stock(keys.bucket("HOT", 2)), keys.STOCK_UP, 1)
        return real(*a)

    store.buckets.change_counts = noisy  # type: ignore[method-assign,assignment]
    said: list[str] = []
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))],
           decider=Decider(store, say=said.append))  # fmt: skip
    assert calls[0] == 121 and _at(store, "HOT") == 12
    assert len([m for m in said if "waits" in m]) == 1, said


def test_a_later_part_of_the_batch_gathers_what_came_back_meanwhile(store: Store, url: str) -> None:
    """A count to 2, then x's 2 units come back into bucket 2 (after the count: they stay),
    then a sale of 4 at the location: the sale's part gathers again and finds the 4."""
    other, d2 = _bought_in_bucket_2(store, url)
    real_run = store.movements.run
    done: list[int] = []

    def run(calls: Any) -> Any:
        got = real_run(calls)
        if not done and any(c.mode == "commit" for c in calls):
            done.append(1)
            decide(other, [{"type": "cancel", "order_id": "x"}], shard=2, decider=d2)
        return got

    store.movements.run = run  # type: ignore[method-assign,assignment]
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 2)),
                   movement("s1", "sale", "wh-a", ("HOT", 4))])  # fmt: skip
    recs = moved(store)
    assert done and recs["s1"].status == "applied", recs["s1"]
    assert _at(store, "HOT") == 0


def test_a_count_that_waits_keeps_the_movers_lease(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count waits past the lease's time (units keep coming back); another worker's sale at
    the location meanwhile waits for the lease, then sells from the counted units (the lease
    ran out under the count, and the sale met the held location: found by a review)."""
    import threading
    import time

    from state import buckets as state_buckets

    monkeypatch.setattr(state_buckets, "LEASE_S", 1.0)
    monkeypatch.setattr(buckets, "RENEW_S", 0.2)
    load(store, catalog({"wh-a": 40, "wh-b": 40}))
    real = store.buckets.change_counts
    t0 = time.monotonic()
    other = Store.connect(url)
    sale = threading.Thread(target=lambda: decide(
        other, [movement("s1", "sale", "wh-a", ("HOT", 4))], shard=1,
        decider=Decider(other, say=lambda _m: None)))  # fmt: skip

    def noisy(*a: Any) -> Any:  # units back into bucket 2 before each check, for 2.5 s
        if time.monotonic() - t0 > 1.5 and not sale.is_alive() and sale.ident is None:
            sale.start()
        if time.monotonic() - t0 < 2.5:
            store.r.hincrby(keys.stock(keys.bucket("HOT", 2)), keys.STOCK_UP, 1)
        return real(*a)

    store.buckets.change_counts = noisy  # type: ignore[method-assign,assignment]
    decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))])
    sale.join(30)
    recs = {r.movement_id: r for r in ops.movements(store, 2)}
    assert recs["s1"].status == "applied", recs["s1"]
    assert _at(store, "HOT") == 8


def test_a_lease_lost_under_a_count_decides_the_batch_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease runs out under a count (a stall): the batch is decided again under a new
    lease; the count's hold and guard stand, it is applied and recorded once."""
    load(store, catalog({"wh-a": 40}))
    taken: list[int] = []
    enter = buckets.Leases.__enter__

    def counted(self: buckets.Leases) -> buckets.Leases:
        taken.append(1)
        return enter(self)

    monkeypatch.setattr(buckets.Leases, "__enter__", counted)
    real = store.buckets.change_counts
    calls = [0]

    def stall(*a: Any) -> Any:  # the first check after the hold: the lease is gone
        calls[0] += 1
        if calls[0] == 1:
            store.r.delete(keys.lend_lock("HOT"))
            store.r.hincrby(keys.stock(keys.bucket("HOT", 2)), keys.STOCK_UP, 1)
        return real(*a)

    store.buckets.change_counts = stall  # type: ignore[method-assign,assignment]
    buckets.RENEW_S, renew = 0.0, buckets.RENEW_S
    d = Decider(store, say=lambda _m: None)
    d.refresh()  # (a new worker reconciles its buckets under their leases first)
    taken.clear()
    try:
        decide(store, [movement("c1", "count", "wh-a", ("HOT", 12))], decider=d)
    finally:
        buckets.RENEW_S = renew
    assert len(taken) == 2, "the batch was not decided again under a new lease"
    assert calls[0] >= 2 and _at(store, "HOT") == 12
    assert moved(store)["c1"].discrepancy == 12 - 40


def test_leases_are_renewed_while_held_and_a_lost_one_says_so(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases: taken in one order, renewed (their time to live back to the full lease) once
    RENEW_S passed, released at the end; one gone meanwhile raises LeaseLost."""
    from state import buckets as state_buckets

    monkeypatch.setattr(state_buckets, "LEASE_S", 2.0)
    monkeypatch.setattr(buckets, "RENEW_S", 0.0)
    names = [keys.lend_lock(s) for s in ("A", "B")]
    with buckets.Leases(store, lambda fn, *a: fn(*a), ["B", "A"]) as leases:
        assert all(store.r.pttl(k) > 0 for k in names)
        store.r.pexpire(names[0], 300)
        leases.renew()
        assert store.r.pttl(names[0]) > 1500  # back to the lease's full time
        store.r.delete(names[1])
        with pytest.raises(buckets.LeaseLost):
            leases.renew()
    assert not any(store.r.exists(k) for k in names)


@pytest.mark.parametrize(
    "layout",
    [pytest.param("slots", marks=pytest.mark.layout("slots")), pytest.param("one")],
)
def test_a_basket_whose_plain_line_is_sold_out_moves_no_hot_units(
    store: Store, layout: str
) -> None:
    """decide.lua says short for a whole basket with a hot SKU; when its other SKU (no
    buckets) is what is missing, borrowing cannot help: refused at once, nothing borrowed
    (it gathered every unit of HOT into bucket 0, round after round, in batch after batch)."""
    cat = catalog({"wh-a": 20, "wh-b": 8})
    cat["skus"][1]["stock"] = {"wh-a": 0}  # SIDE sold out
    load(store, cat)
    assert keys.sku_slot("HOT") != keys.sku_slot("SIDE") and store.layout() == layout
    before = [levels(store, "HOT", b) for b in range(4)]
    borrowed: list[int] = []
    real = store.buckets.borrow

    def counted(*a: Any, **k: Any) -> Any:
        borrowed.append(1)
        return real(*a, **k)

    store.buckets.borrow = counted  # type: ignore[method-assign]
    d = Decider(store, say=lambda _m: None)
    for i in range(3):
        basket = order(f"b{i}", ("HOT", 1), ("SIDE", 1), lat=31.2, lon=121.5)
        recs, _ = decide(store, [basket, order(f"s{i}", ("HOT", 1), lat=31.2, lon=121.5)], 3, d)
        got = {r.order_id: (r.status, r.reason) for r in recs}
        assert got == {f"b{i}": ("rejected", "sold_out"), f"s{i}": ("accepted", None)}
    assert not borrowed
    after = [levels(store, "HOT", b) for b in range(4)]
    assert after[0] == before[0] and after[1:] != before[1:]  # the singles took from bucket 3
    assert sum(sum(x.values()) for x in after) == sum(sum(x.values()) for x in before) - 3


@pytest.mark.parametrize(
    "layout",
    [pytest.param("slots", marks=pytest.mark.layout("slots")), pytest.param("one")],
)
def test_a_replayed_basket_of_a_dry_hot_sku_keeps_its_stored_decision(
    store: Store, layout: str
) -> None:
    """A basket took SIDE's last unit and its run died before the record. The process that
    replays the batch found HOT's other buckets dry (a borrow earlier): such orders go
    straight to borrowing, and a basket there was refused on a read of SIDE (0 units, taken
    by the basket itself) without decide.lua being asked: rejected, with its units held
    (the randomized check's seed 920557). A basket is asked first: it keeps its decision."""
    cat = catalog({"wh-a": 20, "wh-b": 8})
    cat["skus"][1]["stock"] = {"wh-a": 1}
    load(store, cat)
    assert store.layout() == layout
    store.shards.shard_count(1)
    basket = raw(order("b1", ("HOT", 1), ("SIDE", 1), lat=31.2, lon=121.5))
    entries = [("1-0", basket)]
    Decider(store, say=lambda _m: None).process(0, entries)  # then the process dies
    again = Decider(store, say=lambda _m: None)
    again.refresh()  # (a catalog read clears it)
    again.borrowing.dry.add(("HOT", ""))  # what a borrow that found nothing to lend leaves
    again.emit(again.process(0, entries))
    recs = {r.order_id: r.status for r in ops.records(store, 1)}
    assert recs == {"b1": "accepted"}
    assert store.skus.stock_levels(["SIDE"])["SIDE"] == {"wh-a": 0}


def test_a_lease_whose_reply_was_lost_is_held_without_waiting(store: Store) -> None:
    """The SET NX of a lease reached Redis and its reply was lost: the client's retry finds
    the key taken by its own token, and holds the lease at once (not after LEASE_S)."""
    import time

    lease = store.buckets.lease("HOT")
    store.r.set(keys.lend_lock("HOT"), b"tok", px=5000)  # the first send got through
    started = time.monotonic()
    assert lease.acquire(token="tok", blocking_timeout=1)
    assert time.monotonic() - started < 0.5
    assert not store.buckets.lease("HOT").acquire(blocking=False)  # and nobody else does
    lease.release()
    assert store.r.get(keys.lend_lock("HOT")) is None
