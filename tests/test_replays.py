"""Replays after a crash whose batches differ from the first attempt's: what an attempt
applied before it crashed stands, whatever the replay's batching puts beside it."""

from __future__ import annotations

import orjson

from dataflows.decider import Decider
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
