"""The dataset's layout (keys.LAYOUT, ``Store.layout``): how a basket of SKUs in different hash
slots is decided, fixed at the dataset's first use and never changed under its decisions."""

from __future__ import annotations

import orjson
import pytest

from dataflows.decider import Decider
from onestock.domain.errors import OnestockError
from state import keys
from state.store import LAYOUT_ENV, Store
from tests.conftest import load
from tests.helpers import decide, order

CATALOG = {
    "channels": [{"id": "tmall"}],
    "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
    "skus": [
        {"sku": "SNEAKER", "stock": {"wh-a": 3}},
        {"sku": "TEE", "stock": {"wh-a": 3}},  # another slot than SNEAKER's
    ],
}


def fresh(url: str) -> Store:
    """A new process's view of the dataset (nothing cached)."""
    return Store.connect(url)


def test_a_fresh_single_server_dataset_takes_the_one_call_layout(url: str) -> None:
    assert keys.sku_slot("SNEAKER") != keys.sku_slot("TEE")
    store = fresh(url)
    assert store.layout() == keys.LAYOUT_ONE
    assert store.r.get(keys.LAYOUT) == b"one"  # fixed for every later process
    assert store.slot("SNEAKER") == store.slot("TEE")


def test_a_basket_across_slots_is_one_decide_call_and_replays_its_outcome(url: str) -> None:
    store = fresh(url)
    load(store, CATALOG)
    calls: list[list[str]] = []
    real = store.skus.decide

    def counting(groups, args):  # type: ignore[no-untyped-def]
        calls.extend([ln.sku for o in g for ln in o.lines] for g in groups)
        return real(groups, args)

    store.skus.decide = counting  # type: ignore[method-assign]
    raw = orjson.dumps(order("b1", ("SNEAKER", 2), ("TEE", 1)))
    first = Decider(store, say=lambda _m: None).process(0, [("1-0", raw)])
    assert first.records[1].startswith("A") and calls == [["SNEAKER", "TEE"]]
    assert not store.r.keys("*parts*")  # no part reserved anywhere
    # killed before its record was written: a new process decides the batch again and
    # finds the stored outcome; the units are taken once
    again = Decider(fresh(url), say=lambda _m: None).process(0, [("1-0", raw)])
    assert again.records[1] == first.records[1]
    levels = store.skus.stock_levels(["SNEAKER", "TEE"])
    assert levels == {"SNEAKER": {"wh-a": 1}, "TEE": {"wh-a": 2}}


def test_a_dataset_from_before_the_layout_key_keeps_the_slot_by_slot_path(url: str) -> None:
    """A catalog but no layout key: its baskets' state lives in parts, so it stays 'slots'."""
    store = fresh(url)
    load(store, CATALOG)
    store.r.delete(keys.LAYOUT)  # as a dataset of an earlier version has it
    later = fresh(url)
    assert later.layout() == keys.LAYOUT_SLOTS
    assert fresh(url).layout() == keys.LAYOUT_SLOTS
    assert later.slot("SNEAKER") != later.slot("TEE")
    recs, _ = decide(later, [order("b1", ("SNEAKER", 1), ("TEE", 1))])
    assert recs[0].status == "accepted" and later.r.keys("*parts*")


def test_the_environment_chooses_a_fresh_datasets_layout_only(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LAYOUT_ENV, "slots")
    assert fresh(url).layout() == keys.LAYOUT_SLOTS
    monkeypatch.setenv(LAYOUT_ENV, "one")  # too late: the dataset has its layout
    assert fresh(url).layout() == keys.LAYOUT_SLOTS
    fresh(url).r.flushall()
    monkeypatch.setenv(LAYOUT_ENV, "cluster")
    with pytest.raises(OnestockError, match="ONESTOCK_LAYOUT='cluster': expected 'one' or 'slots'"):
        fresh(url).layout()


def test_a_bad_stored_layout_is_a_one_line_error(url: str) -> None:
    store = fresh(url)
    store.r.set(keys.LAYOUT, "both")
    with pytest.raises(OnestockError, match=f"{keys.LAYOUT} holds 'both'") as err:
        store.layout()
    assert "\n" not in str(err.value)


def test_a_catalog_load_after_the_database_was_emptied_writes_the_layout_again(url: str) -> None:
    """A process that asked before a FLUSHALL (the benchmark's resets) must not leave the
    emptied dataset without its key: a worker started later would read 'slots'."""
    store = fresh(url)
    assert store.layout() == keys.LAYOUT_ONE
    store.r.flushall()
    load(store, CATALOG)
    assert store.r.get(keys.LAYOUT) == b"one"
    assert fresh(url).layout() == keys.LAYOUT_ONE
