"""Replays after a crash whose batches differ from the first attempt's: what an attempt
applied before it crashed stands, whatever the replay's batching puts beside it."""

from __future__ import annotations

import orjson
import pytest

from dataflows.decider import Decider
from dataflows.source import ShardSource
from onestock.ops import services as ops
from state.store import Store
from tests.conftest import load
from tests.helpers import order

CATALOG = {
    "channels": [{"id": "tmall"}],
    "locations": [
        {"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2},
        {"id": "st-d", "kind": "store", "lat": 22.5, "lon": 114.1},
    ],
    "skus": [{"sku": "A", "stock": {"st-c": 1, "st-d": 1}}],
}
COPIES = {
    "channels": [{"id": "tmall"}],
    "locations": [{"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2}],
    "skus": [{"sku": "A", "stock": {"st-c": 5}}, {"sku": "B", "stock": {"st-c": 5}}],
}


def test_a_return_applied_before_a_crash_stands_when_its_replay_meets_a_cancel(
    store: Store,
) -> None:
    """The randomized check's seed 187180: a return put back 2 units, the batch crashed
    before its records were written, and the replay read the return together with a later
    cancel of its order. Cancels go first in a batch, so the return found its order
    cancelled and was refused: its units stayed back with no record of them (the audit 2
    units off). Now the return stands, and the cancel gives back only what it did not."""
    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    store.shards.shard_count(1)
    d.emit(d.process(0, [("1-0", orjson.dumps(order("o1", ("A", 2))))]))
    ret = orjson.dumps({"type": "return", "order_id": "o1", "lines": [{"sku": "A", "qty": 2}],
                        "location": "st-c"})  # fmt: skip
    cancel = orjson.dumps({"type": "cancel", "order_id": "o1"})
    d.process(0, [("2-0", ret)])  # the return is applied ... and the worker dies here
    again = Decider(store, say=lambda _m: None)  # the replay reads the cancel beside it
    out = again.process(0, [("2-0", ret), ("3-0", cancel)])
    again.emit(out)
    assert out.dead == []
    assert [r.order_id for r in ops.returns(store, 1)] == ["o1"]
    assert store.skus.stock_levels({"A": {}})["A"] == {"st-c": 2, "st-d": 0}
    assert ops.audit(store, 1, {"A": {"st-c": 1, "st-d": 1}}).oversold == 0


@pytest.mark.parametrize(
    "copy",
    [
        pytest.param([("B", 1)], id="other-sku"),
        pytest.param([("A", 1), ("B", 1)], marks=pytest.mark.layout("slots"), id="basket-slots"),
        pytest.param([("A", 1)], id="same"),
    ],
)
def test_a_shards_next_batch_is_read_once_its_last_is_written(
    store: Store, copy: list[tuple[str, int]]
) -> None:
    """The source hands out a shard's next batch only once the decider wrote the last one's
    outcomes. Decided ahead of its sink, a copy of an order with other lines (a webhook
    resent with the order changed) found no record and no stored decision: it was decided
    again, its units taken and its record then skipped as a copy (the units lost); a
    payment, return or fulfilment event found no order at all."""
    load(store, COPIES)
    store.shards.shard_count(1)
    d = Decider(store, say=lambda _m: None)
    store.shards.push([(0, orjson.dumps(order("x", ("A", 1))))])
    store.shards.push([(0, orjson.dumps(order("x", *copy)))])
    part = ShardSource(lambda: store, 1, d.written, batch_size=1).build_part("read", "0", None)
    ((shard, first),) = part.next_batch()
    decided = d.process(shard, first)
    assert part.next_batch() == []  # its outcomes are not written yet
    d.emit(decided)
    ((_, second),) = part.next_batch()
    d.emit(d.process(shard, second))
    recs = list(ops.records(store, 1))
    assert len(recs) == 1 and recs[0].status == "accepted"
    assert [(ln.sku, ln.qty) for s in recs[0].shipments for ln in s.lines] == [("A", 1)]
    assert store.skus.stock_levels(["A", "B"]) == {"A": {"st-c": 4}, "B": {"st-c": 5}}
