"""First-N gifts: ranked by paid_at (ties by order id), settled after the lateness bound."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.decider import Decider
from onestock import burst, ops
from onestock.records import packed_records, record_from_packed
from onestock.types import FulfilmentRecord
from state import keys
from state.store import Store
from tests.conftest import load, onestock
from tests.helpers import order
from tests.test_flow import outcomes, start_run, wait_for

SHARDS = 16
T0 = datetime(2026, 11, 11, tzinfo=UTC)
LATE = 600_000  # 10 minutes of event time: never reached as wall-clock idleness in a test


def catalog(first_n: int = 3, gift_units: int = 100, stock: int = 50) -> dict[str, Any]:
    return {
        "channels": [{"id": "tmall"}],
        "locations": [
            {"id": "wh-sh", "lat": 31.23, "lon": 121.47},
            {"id": "wh-bj", "lat": 39.9, "lon": 116.4},
        ],
        "skus": [
            {"sku": "SNEAKER", "stock": {"wh-sh": stock}},
            {"sku": "TOTE", "stock": {"wh-bj": gift_units}},
            {"sku": "SOCKS", "stock": {"wh-sh": 100}},
        ],
        "campaigns": [
            {"id": "D11", "sku": "SNEAKER", "gift_sku": "TOTE", "first_n": first_n,
             "lateness_ms": LATE}
        ],
    }  # fmt: skip


def paid(ms: int) -> str:
    return (
        (T0 + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def buy(oid: str, at_ms: int, *lines: tuple[str, int]) -> dict[str, Any]:
    return order(oid, *(lines or [("SNEAKER", 1)]), lat=31.2, lon=121.5, paid_at=paid(at_ms))


def send(d: Decider, events: list[dict[str, Any]], seq: list[int]) -> None:
    """Decide and emit events the way the dataflow does, each on its shard, in the order
    given (consecutive events of one shard go in one batch)."""
    runs: list[tuple[int, list[tuple[str, bytes]]]] = []
    for e in events:
        raw = orjson.dumps(e)
        seq[0] += 1
        shard = ops.shard_of(raw, SHARDS)
        if not runs or runs[-1][0] != shard:
            runs.append((shard, []))
        runs[-1][1].append((f"{seq[0]}-0", raw))
    for shard, entries in runs:
        d.emit(d.process(shard, entries))


def final_records(store: Store) -> dict[str, FulfilmentRecord]:
    out: dict[str, FulfilmentRecord] = {}
    for fields in store.entries(keys.outbox, SHARDS):
        for p in packed_records(fields):
            rec = record_from_packed(p)
            assert rec.order_id not in out, f"two records for {rec.order_id}"
            out[rec.order_id] = rec
    return out


def setup(store: Store, cat: dict[str, Any]) -> Decider:
    load(store, cat)
    store.shard_count(SHARDS)
    return Decider(store, say=lambda _m: None)


def test_the_first_n_by_paid_at_get_the_gift_once_settled(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [buy("o5", 5000), buy("o1", 1000), buy("o9", 9000)], seq)
    send(d, [buy("o3", 3000), buy("o2b", 2000), buy("o2a", 2000), buy("s1", 0, ("SOCKS", 1))], seq)
    recs = final_records(store)
    assert set(recs) == {"s1"}  # orders without a campaign SKU are not delayed
    decided = [
        p for f in store.entries(keys.decided, SHARDS) for p in f[b"v"].decode().split("\x1e")
    ]
    assert sorted(decided) == sorted(f"{o}\x1fA" for o in ("o5", "o1", "o9", "o3", "o2b", "o2a"))
    assert d.settler.run(force=True) == 6
    recs = final_records(store)
    gifts = {o: r.gift.rank for o, r in recs.items() if r.gift}
    assert gifts == {"o1": 1, "o2a": 2, "o2b": 3}  # ties by order id
    assert all(r.gift.location == "wh-bj" for r in recs.values() if r.gift)  # only TOTE there
    view = ops.gifts(store, "D11")
    assert [(w.order_id, w.rank) for w in view.winners] == [("o1", 1), ("o2a", 2), ("o2b", 3)]
    assert (view.settled, view.pending, view.ended_early_at) == (6, 0, None)
    assert store.stock_levels(["TOTE"])["TOTE"] == {"wh-bj": 97}
    assert d.settler.run(force=True) == 0  # settling again changes nothing


def test_rejected_orders_never_hold_a_slot(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=2, stock=2)), [0]
    send(d, [buy("big", 1, ("SNEAKER", 5)), buy("a", 2), buy("b", 3), buy("c", 4)], seq)
    d.settler.run(force=True)
    recs = final_records(store)
    assert recs["big"].reason == "sold_out" and recs["c"].reason == "sold_out"
    assert {o: r.gift.rank for o, r in recs.items() if r.gift} == {"a": 1, "b": 2}


def test_an_order_beyond_the_lateness_bound_is_ranked_after_the_settled_ones(store: Store) -> None:
    cat = catalog(first_n=5)
    cat["campaigns"][0]["lateness_ms"] = 1000
    d, seq = setup(store, cat), [0]
    send(d, [buy("a", 0), buy("b", 500), buy("c", 5000)], seq)  # watermark 4000: a, b settle
    d.settler.run()
    send(d, [buy("early-but-late", 100), buy("d", 4500)], seq)  # 100 < 4000: late
    d.settler.run(force=True)
    recs = final_records(store)
    ranks = {o: (r.gift.rank, r.late) for o, r in recs.items() if r.gift}
    assert ranks == {"a": (1, None), "b": (2, None), "early-but-late": (3, True),
                     "d": (4, None), "c": (5, None)}  # fmt: skip
    assert ops.gifts(store, "D11").late == 1


def test_gift_stock_smaller_than_n_ends_the_campaign_early(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=5, gift_units=2)), [0]
    send(d, [buy(f"o{i}", i * 10) for i in range(6)], seq)
    d.settler.run(force=True)
    recs = final_records(store)
    assert {o: r.gift.rank for o, r in recs.items() if r.gift} == {"o0": 1, "o1": 2}
    view = ops.gifts(store, "D11")
    assert view.ended_early_at == 3 and len(view.winners) == 2
    assert store.stock_levels(["TOTE"])["TOTE"] == {"wh-bj": 0}
    assert len(recs) == 6  # every order has its record, gift or not


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[int], int, int, int]:
    n = draw(st.integers(1, 30))
    # paid_at on a coarse grid with small offsets, delays at and near the bound: orders meet
    # the watermark exactly where an off-by-one would show
    grid = st.tuples(st.integers(0, 3), st.integers(0, 2)).map(lambda t: t[0] * LATE + t[1])
    times = draw(st.lists(grid, min_size=n, max_size=n))
    delay = st.one_of(st.sampled_from([0, 1, LATE - 2, LATE - 1]), st.integers(0, LATE - 1))
    jitter = draw(st.lists(delay, min_size=n, max_size=n))
    orders = [(f"o{i:02d}", t) for i, t in enumerate(times)]
    # arrival order: paid_at + a delay under the bound, so no order comes later than it
    arrival = sorted(range(n), key=lambda i: (times[i] + jitter[i], i))
    cuts = draw(st.lists(st.integers(1, n), max_size=5))
    first_n = draw(st.integers(1, 8))
    stock = draw(st.integers(0, 30))
    gift_units = draw(st.integers(0, 10))
    return (
        orders,
        [arrival.index(i) for i in range(n)] + sorted(set(cuts)),
        first_n,
        stock,
        gift_units,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=arrivals())
def test_winners_equal_an_offline_sort_for_any_arrival_within_the_bound(
    store: Store, case: tuple[list[tuple[str, int]], list[int], int, int, int]
) -> None:
    orders, rest, first_n, stock, gift_units = case
    n = len(orders)
    position, cuts = rest[:n], rest[n:]
    store.r.flushall()
    d, seq = setup(store, catalog(first_n=first_n, gift_units=gift_units, stock=stock)), [0]
    arriving = sorted(range(n), key=lambda i: position[i])
    start = 0
    for cut in [*cuts, n]:
        batch = [buy(orders[i][0], orders[i][1]) for i in arriving[start:cut]]
        if batch:
            send(d, batch, seq)
            d.settler.run()  # settles what the watermark has passed
        start = max(start, cut)
    d.settler.run(force=True)
    recs = final_records(store)
    assert len(recs) == n
    accepted = sorted((t, o) for o, t in orders if recs[o].status == "accepted")
    want = [o for _, o in accepted][: min(first_n, gift_units)]
    view = ops.gifts(store, "D11")
    assert [w.order_id for w in view.winners] == want
    assert [w.rank for w in view.winners] == list(range(1, len(want) + 1))
    assert not any(r.late for r in recs.values())
    assert sum(1 for r in recs.values() if r.gift) == len(want)


def test_an_order_exactly_at_the_bound_still_takes_its_rank(store: Store) -> None:
    """Latest paid_at seen = LATE + 1: an order paid at 1 may still come (1 >= LATE + 1 -
    LATE), so nothing paid at 1 may settle yet, or a tie could rank the wrong way."""
    d, seq = setup(store, catalog(first_n=1)), [0]
    send(d, [buy("b", 1), buy("z", LATE + 1)], seq)
    d.settler.run()
    send(d, [buy("a", 1)], seq)  # within the bound: takes rank 1 (a < b)
    d.settler.run(force=True)
    assert [(w.order_id, w.rank) for w in ops.gifts(store, "D11").winners] == [("a", 1)]


# -- through the real dataflow ---------------------------------------------------------------


def _campaign_catalog(tmp_path: Path, first_n: int, lateness_ms: int) -> Path:
    cat = orjson.loads(burst.demo_catalog_bytes())
    cat["campaigns"] = [{"id": "D11-GIFT", "sku": "SNEAKER-42", "gift_sku": "TOTE-BAG",
                         "first_n": first_n, "lateness_ms": lateness_ms}]  # fmt: skip
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(cat))
    return path


def _check_campaign(store: Store, order_ids: set[str], first_n: int) -> None:
    k = store.shard_count()
    recs = {r.order_id: r for r in ops.records(store, k)}
    assert set(recs) == order_ids  # one record each, none still held
    audit = ops.audit(store, k, {s.sku: dict(s.stock) for s in burst.demo_catalog().skus})
    assert audit.duplicates == 0 and audit.oversold == 0  # gift units included
    gifted = sorted((r.gift.rank, o) for o, r in recs.items() if r.gift)
    assert [rank for rank, _ in gifted] == list(range(1, first_n + 1))
    assert all(recs[o].status == "accepted" for _, o in gifted)
    view = ops.gifts(store, "D11-GIFT")
    assert [(w.rank, w.order_id) for w in view.winners] == gifted and view.pending == 0
    # a unit of TOTE-BAG per winner, no more (the audit above counts them out of the stock)
    taken = store.r.hvals(keys.gift_taken("TOTE-BAG"))
    assert len(taken) == first_n and b"-" not in taken
    shipped = [s for r in recs.values() for s in r.shipments for ln in s.lines
               if ln.sku == "SNEAKER-42"]  # fmt: skip
    assert len(shipped) >= first_n


def test_until_drained_waits_for_the_gifts_and_releases_every_record(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(_campaign_catalog(tmp_path, 200, 300)), env=cli_env)
    lines = list(burst.orders(3000, burst.demo_catalog(), seed=12, garbage=0.0))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    store = Store.connect(url)
    _check_campaign(store, {orjson.loads(x)["order_id"] for x in lines}, 200)
    out = onestock("gifts", "D11-GIFT", "--json", env=cli_env).stdout
    assert len(orjson.loads(out)["winners"]) == 200


@pytest.mark.slow
def test_kill_9_mid_campaign_then_resume_gives_exactly_n_gifts(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(_campaign_catalog(tmp_path, 2000, 200)), env=cli_env)
    lines = list(burst.orders(30000, burst.demo_catalog(), seed=13, garbage=0.0))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    store = Store.connect(url)
    for kill_at in (2000, 9000):
        proc = start_run(cli_env, "--workers", "2")
        wait_for(lambda p=proc, k=kill_at: outcomes(store) >= k or p.poll() is not None, timeout=90)
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert outcomes(store) < len(lines), "the burst drained before the kill: make it bigger"
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=180)
    _check_campaign(store, {orjson.loads(x)["order_id"] for x in lines}, 2000)


# -- cancellations ---------------------------------------------------------------------------


def cancel(oid: str) -> dict[str, Any]:
    return {"type": "cancel", "order_id": oid}


def test_a_cancel_gives_the_units_back_and_supersedes_the_record(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [buy("s1", 0, ("SOCKS", 4))], seq)
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 96}
    send(d, [cancel("s1"), cancel("s1")], seq)  # a duplicated cancel
    send(d, [cancel("s1")], seq)  # and a later copy
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 100}
    rec = final_records_last(store)["s1"]
    assert rec.status == "cancelled"
    assert [(s.location, ln.sku, ln.qty) for s in rec.shipments for ln in s.lines] == [
        ("wh-sh", "SOCKS", 4)
    ]


def test_a_cancel_before_its_order_is_kept_and_applied_when_it_comes(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [cancel("early")], seq)
    send(d, [buy("early", 0, ("SOCKS", 1)), buy("other", 1, ("SOCKS", 1))], seq)
    recs = final_records_last(store)
    assert recs["early"].status == "cancelled" and recs["early"].shipments == []
    assert recs["other"].status == "accepted"
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 99}


def test_an_order_and_its_cancel_in_one_batch(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [buy("x", 0, ("SOCKS", 2)), cancel("x"), buy("y", 0, ("SOCKS", 1))], seq)
    recs = final_records_last(store)
    assert recs["x"].status == "cancelled" and recs["y"].status == "accepted"
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 99}


def test_an_unsettled_cancelled_order_passes_its_slot_to_the_next(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=2)), [0]
    send(d, [buy("a", 10), buy("b", 20), buy("c", 30)], seq)
    send(d, [cancel("a")], seq)  # before settlement: "a" never holds a rank
    d.settler.run(force=True)
    recs = final_records_last(store)
    assert recs["a"].status == "cancelled"
    assert {o: r.gift.rank for o, r in recs.items() if r.gift} == {"b": 1, "c": 2}
    assert store.stock_levels(["SNEAKER", "TOTE"]) == {
        "SNEAKER": {"wh-sh": 48},
        "TOTE": {"wh-bj": 98},
    }


def test_after_settlement_the_gift_is_cancelled_with_its_order_and_the_slot_stays_used(
    store: Store,
) -> None:
    d, seq = setup(store, catalog(first_n=2)), [0]
    send(d, [buy("a", 10), buy("b", 20), buy("c", 30)], seq)
    d.settler.run(force=True)
    assert store.stock_levels(["TOTE"])["TOTE"] == {"wh-bj": 98}
    send(d, [cancel("a")], seq)
    send(d, [cancel("a")], seq)  # duplicated: nothing twice
    recs = final_records_last(store)
    assert recs["a"].status == "cancelled"
    assert {o: r.gift.rank for o, r in recs.items() if r.gift} == {"b": 2}  # "c" stays rank 3
    assert store.stock_levels(["SNEAKER", "TOTE"]) == {
        "SNEAKER": {"wh-sh": 48},
        "TOTE": {"wh-bj": 99},
    }


def test_a_cancel_between_settlement_and_release_returns_the_gift(store: Store) -> None:
    """The rank is settled, the gift taken, then the cancel lands before the record is
    released: the settler meets the cancellation and puts the gift back."""
    d, seq = setup(store, catalog(first_n=1)), [0]
    send(d, [buy("a", 10)], seq)
    real = store.release_held
    calls = []

    def cancel_first(shard, items):  # type: ignore[no-untyped-def]
        if not calls:
            calls.append(1)
            send(d, [cancel("a")], seq)
        return real(shard, items)

    store.release_held = cancel_first  # type: ignore[method-assign]
    d.settler.run(force=True)
    store.release_held = real  # type: ignore[method-assign]
    assert final_records_last(store)["a"].status == "cancelled"
    assert store.stock_levels(["SNEAKER", "TOTE"]) == {
        "SNEAKER": {"wh-sh": 50},
        "TOTE": {"wh-bj": 100},
    }
    assert ops.gifts(store, "D11").winners == []


def final_records_last(store: Store) -> dict[str, FulfilmentRecord]:
    """The final record per order id (a cancellation supersedes the first record)."""
    out: dict[str, FulfilmentRecord] = {}
    for fields in store.entries(keys.outbox, SHARDS):
        for p in packed_records(fields):
            rec = record_from_packed(p)
            out[rec.order_id] = rec
    return out


def test_a_cancellation_storm_during_the_burst(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    """A burst with a campaign, 20% of its orders cancelled (some cancels before their
    order, some twice), through two workers: stock conserved, every order one final record,
    no cancelled order keeps a gift, gift units taken = gifts held."""
    import random

    onestock("catalog", "load", str(_campaign_catalog(tmp_path, 300, 300)), env=cli_env)
    lines = list(burst.orders(4000, burst.demo_catalog(), seed=21, garbage=0.0))
    rnd = random.Random(5)
    stream: list[bytes] = []
    cancelled: set[str] = set()
    for raw in lines:
        oid = orjson.loads(raw)["order_id"]
        c = orjson.dumps(cancel(oid))
        if rnd.random() < 0.2:
            cancelled.add(oid)
            if rnd.random() < 0.3:
                stream += [c, raw]  # the cancel comes first
            else:
                stream += [raw, c] + ([c] if rnd.random() < 0.3 else [])
        else:
            stream.append(raw)
    onestock("orders", "push", "-", input=b"\n".join(stream), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    store = Store.connect(url)
    k = store.shard_count()
    recs = {r.order_id: r for r in ops.records(store, k)}
    assert set(recs) == {orjson.loads(x)["order_id"] for x in lines}
    # a cancelled order ends cancelled, or rejected if it was (nothing to give back)
    assert {o for o, r in recs.items() if r.status == "cancelled"} <= cancelled
    assert all(recs[o].status in ("cancelled", "rejected") for o in cancelled)
    assert sum(recs[o].status == "cancelled" for o in cancelled) > 0.5 * len(cancelled)
    audit = ops.audit(store, k, {s.sku: dict(s.stock) for s in burst.demo_catalog().skus})
    assert audit.duplicates == 0 and audit.oversold == 0
    gifted = [r for r in recs.values() if r.gift]
    assert all(r.status == "accepted" for r in gifted)
    ranks = [r.gift.rank for r in gifted]  # type: ignore[union-attr]
    assert len(ranks) == len(set(ranks)) and max(ranks) <= 300
    taken = store.r.hvals(keys.gift_taken("TOTE-BAG"))
    assert sum(1 for v in taken if v not in (b"-",) and not v.startswith(b"~")) == len(gifted)
    assert store.r.hlen(keys.held(0)) == 0


# -- returns ----------------------------------------------------------------------------------


def ret(oid: str, location: str, *lines: tuple[str, int]) -> dict[str, Any]:
    return {"type": "return", "order_id": oid, "location": location,
            "lines": [{"sku": s, "qty": q} for s, q in lines]}  # fmt: skip


def dead_reasons(store: Store) -> list[str]:
    return [f[b"reason"].decode() for f in store.entries(keys.deadbox, SHARDS)]


def test_returns_restock_the_named_location_once_and_never_more_than_shipped(
    store: Store,
) -> None:
    d, seq = setup(store, catalog()), [0]
    send(d, [buy("o", 0, ("SOCKS", 3))], seq)  # shipped from wh-sh
    send(d, [ret("o", "wh-bj", ("SOCKS", 2)), ret("o", "wh-bj", ("SOCKS", 2))], seq)  # a copy
    send(d, [ret("o", "wh-bj", ("SOCKS", 2))], seq)  # and a later copy
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 97, "wh-bj": 2}
    send(d, [ret("o", "wh-sh", ("SOCKS", 2))], seq)  # 2 + 2 > 3 shipped
    send(d, [ret("o", "wh-sh", ("SOCKS", 1))], seq)  # exactly the last one
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 98, "wh-bj": 2}
    back = list(ops.returns(store, SHARDS))
    assert [(r.location, [(ln.sku, ln.qty) for ln in r.lines]) for r in back] == [
        ("wh-bj", [("SOCKS", 2)]), ("wh-sh", [("SOCKS", 1)])
    ]  # fmt: skip
    assert dead_reasons(store) == [
        "return refused: SOCKS: 2 more would exceed the 3 shipped (2 back already)"
        " - at `$.lines[0].qty`"
    ]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ret("nope", "wh-sh", ("SOCKS", 1)), "no such order"),
        (ret("rej", "wh-sh", ("SNEAKER", 1)), "the order was rejected"),
        (ret("can", "wh-sh", ("SOCKS", 1)), "the order was cancelled"),
        (ret("ok", "wh-mars", ("SOCKS", 1)), "unknown location 'wh-mars' - at `$.location`"),
        (ret("ok", "wh-sh", ("TOTE", 1)), "'TOTE' was not shipped in this order"),
        ({"type": "return", "order_id": "ok", "lines": []}, "not a return:"),
    ],
)
def test_returns_that_cannot_be_are_dead_letters_with_the_reason(
    store: Store, event: dict[str, Any], reason: str
) -> None:
    d, seq = setup(store, catalog(stock=0)), [0]
    send(d, [buy("rej", 0), buy("can", 1, ("SOCKS", 1)), buy("ok", 2, ("SOCKS", 1))], seq)
    send(d, [cancel("can")], seq)
    send(d, [event], seq)
    assert len(dead_reasons(store)) == 1 and reason in dead_reasons(store)[0]
    assert store.stock_levels(["SOCKS"])["SOCKS"] == {"wh-sh": 99}  # only "ok" took one


def test_returns_through_the_dataflow_keep_the_stock_conserved(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(_campaign_catalog(tmp_path, 100, 300)), env=cli_env)
    lines = list(burst.orders(2000, burst.demo_catalog(), seed=31, garbage=0.0))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    store = Store.connect(url)
    k = store.shard_count()
    accepted = [r for r in ops.records(store, k) if r.status == "accepted"][:60]
    events = []
    for r in accepted:  # one unit of the first line back to a store, each sent twice
        line = r.shipments[0].lines[0]
        e = orjson.dumps(ret(r.order_id, "st-hangzhou-1", (line.sku, 1)))
        events += [e, e]
    onestock("orders", "push", "-", input=b"\n".join(events), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    out = onestock("returns", env=cli_env).stdout.splitlines()
    assert sorted(orjson.loads(x)["order_id"] for x in out) == sorted(r.order_id for r in accepted)
    audit = ops.audit(store, k, {s.sku: dict(s.stock) for s in burst.demo_catalog().skus})
    assert audit.oversold == 0 and audit.duplicates == 0 and audit.dead == 0
