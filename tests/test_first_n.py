"""First-N is decided by event time per input shard, and ranks go only to orders accepted
whole: processing skew, a restart or a crashed cross-slot attempt cannot change who wins."""

from __future__ import annotations

import time

import orjson
import pytest

from dataflows.decider import Decider
from onestock.domain import events, sharding
from onestock.ops import services as ops
from state import keys
from state.keys import sku_slot
from state.skus import Part
from state.store import Store
from tests.helpers import raw
from tests.test_gifts import SHARDS, buy, catalog, idle, setup


def on_shard(d: Decider, shard: int, orders: list[dict[str, object]], seq: list[int]) -> None:
    """Decide and emit ``orders`` as one batch of ``shard`` (their ids hash to it)."""
    entries = []
    for o in orders:
        assert sharding.shard_of_id(str(o["order_id"]), SHARDS) == shard, o["order_id"]
        seq[0] += 1
        entries.append((f"{seq[0]}-0", orjson.dumps(o)))
    d.emit(d.process(shard, entries))


def oid(name: str, shard: int) -> str:
    """``name`` with the first suffix that puts it on ``shard``."""
    return next(
        f"{name}{i}" for i in range(10_000) if sharding.shard_of_id(f"{name}{i}", SHARDS) == shard
    )


def winners(store: Store) -> list[str]:
    return [w.order_id for w in ops.gifts(store, "D11").winners]


# 9: the watermark was the latest paid_at seen on any shard: a fast shard made a slow
# shard's rightful winners "late"
def test_a_shard_with_unread_input_holds_the_watermark_back(store: Store) -> None:
    cat = catalog(first_n=2)
    cat["campaigns"][0]["lateness_ms"] = 1000
    d, seq = setup(store, cat), [0]
    # shard 1 read its first order (paid at 0) and still has a backlog; shard 0 raced ahead
    slow_a, slow_b, fast_x, fast_y = oid("slow-a", 1), oid("slow-b", 1), oid("x", 0), oid("y", 0)
    on_shard(d, 1, [buy(slow_a, 0)], seq)
    on_shard(d, 0, [buy(fast_x, 9000), buy(fast_y, 9500)], seq)
    for shard in range(SHARDS):
        if shard != 1:
            d.emit(d.process(shard, []))  # every other shard has read all it has
    d.settler.run()  # the watermark is shard 1's: 0 - 1000: nothing may settle yet
    assert ops.gifts(store, "D11").settled == 0
    on_shard(d, 1, [buy(slow_b, 500)], seq)  # shard 1's backlog: paid before the others
    idle(d)
    d.settler.run(force=True)
    assert winners(store) == [slow_a, slow_b]  # the offline ranking by paid_at


def test_a_stale_idle_report_does_not_settle_everything(store: Store) -> None:
    """A worker that said "idle" and then went quiet (restarting, cut off from Redis) is not
    idle any more: the wall-clock rule waits for fresh reports."""
    cat = catalog(first_n=1)
    cat["campaigns"][0]["lateness_ms"] = 1  # idleness would settle at once
    d, seq = setup(store, cat), [0]
    a, b = oid("a", 3), oid("b", 0)
    on_shard(d, 0, [buy(b, 5000)], seq)
    idle(d)
    stale = int(time.time() * 1000) - 60_000
    d.store.campaigns.report(3, 100, True, stale)  # shard 3's worker went quiet a minute ago
    time.sleep(0.01)
    d.settler.run()  # shard 3 holds the watermark at 100 - 1: b (5000) waits
    assert ops.gifts(store, "D11").settled == 0
    on_shard(d, 3, [buy(a, 4000)], seq)  # shard 3 comes back with an earlier order
    idle(d)
    d.settler.run(force=True)
    assert winners(store) == [a]


# 5: a crash between a cross-slot part's reservation and its release left a rejected order
# holding a rank
@pytest.mark.layout("slots")
def test_a_part_reserved_by_a_crashed_attempt_never_takes_a_rank(store: Store) -> None:
    cat = catalog(first_n=1)
    cat["skus"].append({"sku": "ZZZ", "stock": {}})
    assert sku_slot("SNEAKER") != sku_slot("ZZZ")
    d = setup(store, cat)
    d.refresh()
    a1 = buy(oid("a", 0), 100, ("SNEAKER", 1), ("ZZZ", 1))  # can never be served: ZZZ has nothing
    o = events.decode(raw(a1)).order  # type: ignore[union-attr]
    part = Part(o, ["SNEAKER"], 100, o.channel in d.view.store_channels, [("wh-sh", "SNEAKER", 1)])
    # the SNEAKER part is reserved, then kill -9 before the ZZZ part
    assert store.skus.reserve_parts([[part]], d.view.floors, d.view.version) == [[1]]
    idle(d)
    d.settler.run(force=True)  # another worker settles meanwhile
    seq = [10]
    store.r.delete(keys.lease("SNEAKER"))  # (the crashed worker's settling lease expired)
    restarted = Decider(store, say=lambda _m: None)
    b1 = oid("b", 0)
    on_shard(restarted, 0, [a1, buy(b1, 200)], seq)
    idle(restarted)
    restarted.settler.run(force=True)
    recs = {r.order_id: r for r in ops.records(store, SHARDS)}
    a = recs[str(a1["order_id"])]
    assert a.status == "rejected" and a.gift is None
    assert winners(store) == [b1] and recs[b1].gift is not None


@pytest.mark.layout("slots")
def test_a_replayed_cross_slot_order_takes_one_rank(store: Store) -> None:
    cat = catalog(first_n=3)
    cat["skus"].append({"sku": "ZZZ", "stock": {"wh-sh": 5}})
    d, seq = setup(store, cat), [1]  # (entry 1-0 is the basket's)
    c1, c2 = oid("c", 0), oid("d", 0)
    basket = buy(c1, 100, ("SNEAKER", 1), ("ZZZ", 1))
    crashed = d.process(0, [("1-0", orjson.dumps(basket))])  # decided, never emitted
    assert crashed.records[1].startswith("H")
    idle(d)
    d.settler.run()  # not emitted yet: its rank waits for its record
    store.r.delete(keys.lease("SNEAKER"))
    restarted = Decider(store, say=lambda _m: None)
    restarted.emit(restarted.process(0, [("1-0", orjson.dumps(basket))]))
    on_shard(restarted, 0, [buy(c2, 200)], seq)
    idle(restarted)
    restarted.settler.run(force=True)
    assert [(w.order_id, w.rank) for w in ops.gifts(store, "D11").winners] == [(c1, 1), (c2, 2)]


def test_a_drain_waits_for_ranks_released_but_not_acknowledged(store: Store) -> None:
    """Killed between releasing a winner's record and acknowledging its rank: nothing is
    held any more, but `onestock gifts` would miss the winner. The drain waits, and the next
    settlement round acknowledges it."""
    d, seq = setup(store, catalog(first_n=2)), [0]
    a = oid("a", 0)
    on_shard(d, 0, [buy(a, 100)], seq)
    idle(d)
    store.r.delete(keys.lease("SNEAKER"))
    camp = d.settler.store.campaigns
    got = camp.settle("SNEAKER", "crashed", 3000, True, None, True)
    assert got is not None and len(got[1]) == 1
    [loc] = camp.take_gifts("TOTE", [(f"D11\x1f{a}", ["wh-bj"])])
    gift = "\x1d".join(["D11", "TOTE", "1", loc])
    assert camp.release_held(0, [(a, gift, "")]) == [1]  # released; killed before the ack
    store.r.delete(keys.lease("SNEAKER"))
    assert not store.shards.drained(0, "1-0")
    d.settler.run()
    assert store.shards.drained(0, "1-0")
    assert [w.order_id for w in ops.gifts(store, "D11").winners] == [a]
