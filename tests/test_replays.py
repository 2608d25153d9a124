"""Replays after a crash whose batches differ from the first attempt's: what an attempt
applied before it crashed stands, whatever the replay's batching puts beside it."""

from __future__ import annotations

import orjson
import pytest

from dataflows.decider import Decider
from dataflows.source import ShardSource
from onestock.domain.events import WINDOW_MS
from onestock.domain.records import iso_ms
from onestock.ops import services as ops
from state import keys
from state.store import Store
from tests.conftest import load
from tests.helpers import order
from tests.test_payments import now_ms, paid, pending, versions

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


def _hmgets(store: Store) -> int:
    """HMGET calls the server has run (scripts' included)."""
    return int(store.r.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_a_batchs_orders_are_looked_up_once_and_written_once_however_often_sent(
    store: Store,
) -> None:
    """The prelude looked the batch's orders up in the registry: emit.lua does not again
    (``Decided.known``). A call sent twice (a reply lost, the retry sends it again; or the
    batch written twice) finds its first known record written and looks every record up:
    nothing is written twice."""
    load(store, COPIES)
    store.shards.shard_count(1)
    d = Decider(store, say=lambda _m: None)
    entries = [(f"{i + 1}-0", orjson.dumps(order(f"k{i}", ("A", 1)))) for i in range(3)]
    out = d.process(0, entries)
    assert out.known == (0, 3, True)
    before = _hmgets(store)
    d.emit(out)
    assert _hmgets(store) == before  # looked up in the prelude only
    store.shards.emit(0, out.last_id, out.records, out.dead, out.meter, out.known)
    assert _hmgets(store) == before + 3  # the second run read the three generations
    assert [r.order_id for r in ops.records(store, 1)] == ["k0", "k1", "k2"]


def test_the_known_records_are_told_to_each_emit_call_of_a_large_batch() -> None:
    """A batch goes in calls of EMIT_RECORDS records: each call is told which of its own
    records (1-based, first and last) are known, or 0 0, and whether none of them is held."""
    from state.shards import EMIT_RECORDS, _emit_args

    n = 2 * EMIT_RECORDS + 11
    records = [f for i in range(n) for f in (f"o{i}", "A", f"rec{i}")]
    spans = [c[-3:] for c in _emit_args("9-0", records, [], None, (5, 2 * EMIT_RECORDS, True))]
    assert spans == [[6, EMIT_RECORDS, 1], [1, EMIT_RECORDS, 1], [1, 5, 1]]
    spans = [c[-3:] for c in _emit_args("9-0", records, [], None, (EMIT_RECORDS, 3, False))]
    assert spans == [[0, 0, 0], [1, 3, 0], [0, 0, 0]]
    assert _emit_args("9-0", records, [], None)[0][-3:] == [0, 0, 0]


class _RaisesAfterDeciding(Decider):
    """A decider whose batch raises after decide.lua decided it, when it holds order "p1",
    once (the net under the design: dataflows/quarantine.py)."""

    failing = True

    def _aftersale(self, shard, batch, *args):  # type: ignore[no-untyped-def]
        if self.failing and "p1" in batch.firsts:
            self.failing = False
            raise RuntimeError("made to fail after deciding")
        return super()._aftersale(shard, batch, *args)


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "restarted"])
def test_a_copy_of_a_quarantined_order_finds_its_decision(store: Store, restarted: bool) -> None:
    """The quarantined order was decided (its unit taken) before its batch raised, and has no
    record. A later copy comes in a batch wholly after the decide mark, which would skip the
    stored outcomes: the shard's quarantine makes it read them, so the copy gets the stored
    decision and its unit is taken once (also in a process started after the quarantine)."""
    from dataflows import quarantine

    load(store, COPIES)
    store.shards.shard_count(1)
    d = _RaisesAfterDeciding(store, say=lambda _m: None)
    said: list[str] = []
    out = quarantine.process(d, 0, [("1-0", orjson.dumps(order("p1", ("A", 1))))], said.append)
    d.emit(out)
    assert len(out.dead) == 1 and "made to fail" in out.dead[0][2] and len(said) == 1
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 4}}  # decided before the raise
    later = Decider(store, say=lambda _m: None) if restarted else d
    entries = [("2-0", orjson.dumps(order("p1", ("A", 1)))),
               ("3-0", orjson.dumps(order("x1", ("A", 1))))]  # fmt: skip
    later.emit(later.process(0, entries))
    recs = {r.order_id: r.status for r in ops.records(store, 1)}
    assert recs == {"p1": "accepted", "x1": "accepted"}
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 3}}


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "not-fresh"])
def test_a_decide_call_sent_twice_takes_its_units_once(store: Store, fresh: bool) -> None:
    """A lost reply makes the retry send the same decide.lua call again: a fresh call (which
    reads no stored outcome) finds its own mark and answers what it decided the first time."""
    from onestock.domain.types import order_decoder
    from state import skus

    load(store, COPIES)
    orders = [order_decoder.decode(orjson.dumps(order(f"f{i}", (s, 2)))) for i, s in
              enumerate("AB")]  # fmt: skip
    ids = [o.order_id for o in orders]
    version, _ = store.catalog()
    args = skus.DecideArgs(["st-c"], {"st-c": 1}, [0], 0, set(), version,
                           dict.fromkeys(ids, b"\x00\x00"), dict.fromkeys(ids, 1),
                           set(), set(), fresh=fresh, journal=keys.journal(0))  # fmt: skip
    first = store.skus.decide([orders], args)
    assert store.skus.decide([orders], args) == first
    assert [r.decode().split("\x1f")[0] for r in first[0]] == ["A", "A"]
    assert store.skus.stock_levels(["A", "B"]) == {"A": {"st-c": 3}, "B": {"st-c": 3}}
    # a fresh call's outcomes are in the journal, not the decision hashes (one write)
    assert store.r.hexists(keys.decisions("A", store.gen.now), "f0") is not fresh


def test_fresh_calls_that_begin_with_the_same_order_keep_both_outcomes(store: Store) -> None:
    """A borrowing round may send a call beginning with the order an earlier call of the
    batch left short: its journal entry adds to the earlier one, and a replay of the batch
    (not fresh, after a crash) finds every order's outcome there and takes no unit again."""
    from onestock.domain.types import order_decoder
    from state import skus

    load(store, COPIES)
    orders = {i: order_decoder.decode(orjson.dumps(order(i, ("A", 1)))) for i in
              ("x1", "x2", "x3")}  # fmt: skip
    version, _ = store.catalog()

    def args(fresh: bool) -> skus.DecideArgs:
        return skus.DecideArgs(["st-c"], {"st-c": 1}, [0], 0, set(), version,
                               dict.fromkeys(orders, b"\x00\x00"), dict.fromkeys(orders, 1),
                               set(), set(), fresh=fresh, journal=keys.journal(0))  # fmt: skip

    x1, x2, x3 = orders.values()
    store.skus.decide([[x1, x2]], args(True))
    store.skus.decide([[x1, x3]], args(True))
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 2}}
    replay = store.skus.decide([[x3, x2, x1]], args(False))
    assert [r.decode().split("\x1f")[0] for r in replay[0]] == ["A", "A", "A"]
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 2}}
    assert store.r.hlen(keys.journal(0)) == 1


def test_the_journal_holds_one_batch_and_a_crash_replay_reads_it(store: Store) -> None:
    """A fresh batch's outcomes live in its shard's journal until the next fresh batch: a
    replay of the batch after its records were lost decides nothing again; the next batch
    deletes the entries before writing its own."""
    load(store, COPIES)
    store.shards.shard_count(1)
    d = Decider(store, say=lambda _m: None)
    d.process(0, [("1-0", orjson.dumps(order("j1", ("A", 2))))])  # never emitted: a crash
    assert store.r.hlen(keys.journal(0)) == 1
    later = Decider(store, say=lambda _m: None)
    later.emit(later.process(0, [("1-0", orjson.dumps(order("j1", ("A", 2)))),
                                 ("2-0", orjson.dumps(order("j2", ("A", 1))))]))  # fmt: skip
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 2}}
    later.emit(later.process(0, [("3-0", orjson.dumps(order("j3", ("B", 1))))]))
    assert store.r.hkeys(keys.journal(0)) == [b"j3"]
    recs = {r.order_id: r.status for r in ops.records(store, 1)}
    assert recs == {"j1": "accepted", "j2": "accepted", "j3": "accepted"}


class _RaisesOnBoth(Decider):
    """Raises after deciding a batch holding both o1 and o2, once: the quarantine splits it
    and both halves succeed (nothing is quarantined)."""

    failing = True

    def _aftersale(self, shard, batch, *args):  # type: ignore[no-untyped-def]
        if self.failing and {"o1", "o2"} <= set(batch.firsts):
            self.failing = False
            raise RuntimeError("made to fail after deciding")
        return super()._aftersale(shard, batch, *args)


def test_a_split_batch_is_written_in_its_own_generation(store: Store) -> None:
    """The quarantine's halves merged into one batch without its generation: written after
    another shard's tick, its records went to that tick's generation, where a later copy's
    registry read never looks (a second record; with a fresh batch, a second take). Found
    by a helper's review."""
    from dataflows import quarantine

    load(store, COPIES)
    store.shards.shard_count(2)
    d = _RaisesOnBoth(store, say=lambda _m: None)
    batch = [("1-0", orjson.dumps(order("o1", ("A", 1)))),
             ("2-0", orjson.dumps(order("o2", ("A", 1))))]  # fmt: skip
    out = quarantine.process(d, 0, batch, lambda _m: None)  # split; both halves succeed
    assert out.dead == [] and out.gen >= 0
    tick = d.process(1, [])  # another shard's tick, mapped before the sink
    d.emit(out)
    d.emit(tick)
    d.emit(d.process(0, [("3-0", orjson.dumps(order("o2", ("A", 1))))]))  # a copy
    assert [r.order_id for r in ops.records(store, 2)] == ["o1", "o2"]
    assert store.skus.stock_levels(["A"])["A"] == {"st-c": 3}


def test_an_expiry_replayed_a_generation_back_is_written_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The randomized check's seed 345087 (fast, all,-capacity_rules): a batch's parts are
    written one by one without moving the watermark; the part holding a pending order
    (deadline passed) was written in generation G, then the worker died before the last part.
    The restart read a batch of the entries before it, in generation G-1, which found the
    order due and wrote its ``expired`` version 2 there; generation G's registry still said
    ``reserved`` (newest first), so the order's replay expired it again: version 3."""
    from state import gens

    t = now_ms()
    monkeypatch.setattr(gens, "OFFSET_MS", (-t) % WINDOW_MS)  # generation G starts at t
    load(store, COPIES | {"skus": [{"sku": "SOCKS", "stock": {"st-c": 10}}]})
    store.shards.shard_count(1)
    entries = [(f"{t - 10}-0", orjson.dumps(order("f1", ("SOCKS", 1), paid_at=iso_ms(t)))),
               (f"{t}-0", orjson.dumps(pending("o1", t - 5000))),
               (f"{t}-1", orjson.dumps(paid("o1")))]  # fmt: skip
    for eid, raw in entries:
        store.r.xadd(keys.inbox(0), {"e": raw}, id=eid)
    d = Decider(store, say=lambda _m: None)
    d.process(0, entries)  # parts f1 (G-1) and o1 (G) written; the worker dies before the last
    later = Decider(store, say=lambda _m: None)
    later.emit(later.process(0, entries[:1]))  # resumed at the watermark: f1 alone
    later.emit(later.process(0, entries[1:]))
    statuses = [(r.status, r.version) for r in versions(store)["o1"]]
    assert statuses == [("reserved", 1), ("expired", 2)]
    assert store.skus.stock_levels(["SOCKS"])["SOCKS"] == {"st-c": 9}


def test_each_process_start_deletes_the_journal_of_the_one_before(store: Store) -> None:
    """A process that decides one fresh batch of a shard and stops (`run --until-drained`
    with little input, a crash loop) knew no mark before its first read: its first fresh
    batch deletes the journal once the stored mark says so, or every start would leave a
    batch's calls there, read by every later replay and outliving the generations."""
    load(store, COPIES)
    store.shards.shard_count(1)
    for i in range(1, 21):
        d = Decider(store, say=lambda _m: None)  # a new process
        d.emit(d.process(0, [(f"{i}-0", orjson.dumps(order(f"r{i}", ("A", 1))))]))
        d.close()
    assert store.r.hkeys(keys.journal(0)) == [b"r20"]
    assert len(list(ops.records(store, 1))) == 20


PICKUP_DAY = {
    "channels": [{"id": "tmall"}],
    "locations": [
        {
            "id": "st-c",
            "kind": "store",
            "lat": 30.3,
            "lon": 120.2,
            "pickup": True,
            "daily_capacity": 1,
        }
    ],  # fmt: skip
    "skus": [{"sku": "A", "stock": {"st-c": 5}}],
}


def test_a_quarantined_pickups_copy_finds_its_decision_on_a_full_day(store: Store) -> None:
    """The randomized check's seed 212395 (a helper's review): a poisoned pickup order was
    decided (its unit taken, the store's one slot of the day counted) before its batch
    raised; its later copy came after the decide mark, so the day's capacity read judged it
    a new order and refused it (the store full with itself): the unit stayed taken with no
    record. While a quarantine may have left a decision without its record, no order is
    refused on the capacity read: the copy gets its stored acceptance."""
    from dataflows import quarantine

    load(store, PICKUP_DAY)
    store.shards.shard_count(1)
    d = _RaisesAfterDeciding(store, say=lambda _m: None)
    p1 = order("p1", ("A", 1))
    p1["delivery"] = {"mode": "pickup", "store": "st-c"}
    d.emit(quarantine.process(d, 0, [("1-0", orjson.dumps(p1))], lambda _m: None))
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 4}}  # decided before the raise
    d.emit(d.process(0, [("3-0", orjson.dumps(p1))]))  # the later copy
    assert {r.order_id: r.status for r in ops.records(store, 1)} == {"p1": "accepted"}
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 4}}


PICKUP = {
    "channels": [{"id": "tmall"}, {"id": "jd"}],
    "locations": [{"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2, "pickup": True}],
    "skus": [{"sku": "A", "stock": {"st-c": 5}}, {"sku": "B", "stock": {"st-c": 5}}],
}


def _pickup(oid: str, *lines: tuple[str, int]) -> dict:  # type: ignore[type-arg]
    o = order(oid, *lines)
    o["delivery"] = {"mode": "pickup", "store": "st-c"}
    return o


def _no_pickup(cat: dict, levels: dict[str, int]) -> dict:  # type: ignore[type-arg]
    """The catalog, pickup ended at its store, stock as the store counts it now."""
    return {
        **cat,
        "locations": [{**cat["locations"][0], "pickup": False}],
        "skus": [{"sku": s, "stock": {"st-c": n}} for s, n in levels.items()],
    }


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([("A", 1)], id="one-line"),
        pytest.param([("A", 1), ("B", 1)], marks=pytest.mark.layout("slots"), id="cross-slot"),
    ],
)
def test_a_replayed_order_keeps_its_decision_under_a_catalog_that_refuses_it(
    store: Store, lines: list[tuple[str, int]]
) -> None:
    """An order decided by a run that died before its record was written, then a catalog
    that ends pickup at its store: the replay is not refused before the scripts can answer
    (its units would stay taken with no record); its stored acceptance stands."""
    load(store, PICKUP)
    store.shards.shard_count(1)
    p1 = _pickup("p1", *lines)
    Decider(store, say=lambda _m: None).process(0, [("1-0", orjson.dumps(p1))])  # dies here
    taken = {s: 4 for s, _ in lines}
    assert {s: v["st-c"] for s, v in store.skus.stock_levels(list(taken)).items()} == taken
    load(store, _no_pickup(PICKUP, {"A": 4, "B": 5 if len(lines) == 1 else 4}))
    later = Decider(store, say=lambda _m: None)
    later.emit(later.process(0, [("1-0", orjson.dumps(p1))]))
    assert {r.order_id: r.status for r in ops.records(store, 1)} == {"p1": "accepted"}
    assert {s: v["st-c"] for s, v in store.skus.stock_levels(list(taken)).items()} == taken


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([("A", 1)], id="one-line"),
        pytest.param([("A", 1), ("B", 1)], marks=pytest.mark.layout("slots"), id="cross-slot"),
    ],
)
def test_an_undecided_order_before_the_mark_gets_the_catalogs_refusal(
    url: str, store: Store, lines: list[tuple[str, int]]
) -> None:
    """An order at or before the decide mark that no run decided (the run died before it
    came to it) is asked for its stored outcome only: none, so the catalog's refusal
    stands and nothing is taken."""
    load(store, PICKUP)
    store.shards.shard_count(1)
    entries = [("1-0", orjson.dumps(_pickup("p2", *lines)))]

    def dies(*_a: object) -> None:
        raise ConnectionError("killed")

    first = Decider(store, say=lambda _m: None)
    first._decide = dies  # type: ignore[method-assign,assignment]
    with pytest.raises(ConnectionError):
        first.process(0, entries)  # the mark moved past 1-0; nothing decided
    load(store, _no_pickup(PICKUP, {"A": 5, "B": 5}))
    later = Decider(Store.connect(url), say=lambda _m: None)
    later.emit(later.process(0, entries))
    got = {r.order_id: (r.status, r.reason) for r in ops.records(store, 1)}
    assert got == {"p2": ("rejected", "pickup_unavailable")}
    assert store.skus.stock_levels(["A", "B"]) == {"A": {"st-c": 5}, "B": {"st-c": 5}}
    assert store.r.hlen(keys.parts("A", store.gen.now)) == 0


def test_a_replayed_order_of_a_channel_since_removed_keeps_its_decision(store: Store) -> None:
    """The same for an order whose channel a later catalog no longer has."""
    load(store, PICKUP)
    store.shards.shard_count(1)
    o1 = order("o1", ("A", 2))
    o1["channel"] = "jd"
    Decider(store, say=lambda _m: None).process(0, [("1-0", orjson.dumps(o1))])  # dies here
    load(store, {**PICKUP, "channels": [{"id": "tmall"}], "skus": [
        {"sku": "A", "stock": {"st-c": 3}}, {"sku": "B", "stock": {"st-c": 5}}]})  # fmt: skip
    later = Decider(store, say=lambda _m: None)
    later.emit(later.process(0, [("1-0", orjson.dumps(o1))]))
    assert {r.order_id: r.status for r in ops.records(store, 1)} == {"o1": "accepted"}
    assert store.skus.stock_levels(["A"]) == {"A": {"st-c": 3}}


def _hot(stock: int, channels: list[dict[str, str]], buckets: int = 4) -> dict:  # type: ignore[type-arg]
    return {
        "channels": channels,
        "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
        "skus": [{"sku": "HOT", "stock": {"wh-a": stock}, "buckets": buckets}],
    }


_WITH_POS = [{"id": "tmall"}, {"id": "pos", "kind": "store"}]


@pytest.mark.parametrize(
    ("shard", "later_channels"),
    [
        pytest.param(0, [{"id": "tmall"}], id="removed-shard-0"),
        pytest.param(1, [{"id": "tmall"}], id="removed"),
        pytest.param(1, [{"id": "tmall"}, {"id": "pos"}], id="made-online"),
    ],
)
def test_a_hot_sku_replay_goes_to_the_bucket_that_decided_it(
    url: str, store: Store, shard: int, later_channels: list[dict[str, str]]
) -> None:
    """(A helper's review.) A one-line order of a hot SKU from a store-kind channel is
    decided in bucket 0, an online channel's in bucket shard % B. A run decided it (not
    fresh: into bucket 0's decision hash) and died before its record; a reload then removed
    the channel, or made it an online one. Its replay went to bucket shard % B, found no
    outcome there and was refused (unknown_channel) or decided again: a unit taken twice,
    or taken with no record. A replay now goes to the bucket whose decision hash holds its
    outcome."""

    def dies(*_a: object) -> None:
        raise ConnectionError("killed")

    load(store, _hot(8, _WITH_POS))
    store.shards.shard_count(4)
    o1 = order("o1", ("HOT", 1), lat=31.2, lon=121.5)
    o1["channel"] = "pos"
    entries = [("1-0", orjson.dumps(o1))]
    first = Decider(store, say=lambda _m: None)
    first._decide = dies  # type: ignore[method-assign,assignment]
    with pytest.raises(ConnectionError):
        first.process(shard, entries)  # the mark moves past 1-0; nothing decided
    Decider(Store.connect(url), say=lambda _m: None).process(shard, entries)  # dies after
    load(store, _hot(7, later_channels))  # stock as counted now
    later = Decider(Store.connect(url), say=lambda _m: None)
    later.emit(later.process(shard, entries))
    got = {r.order_id: (r.status, r.reason) for r in ops.records(store, 4)}
    assert got == {"o1": ("accepted", None)}
    assert ops.stock_view(store, "HOT")["HOT"].total == 7
