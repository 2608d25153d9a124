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
from onestock import burst
from onestock.domain import sharding
from onestock.domain.records import packed_records, record_from_packed
from onestock.domain.types import FulfilmentRecord
from onestock.ops import services as ops
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
        shard = sharding.shard_of(raw, SHARDS)
        if not runs or runs[-1][0] != shard:
            runs.append((shard, []))
        runs[-1][1].append((f"{seq[0]}-0", raw))
    for shard, entries in runs:
        d.emit(d.process(shard, entries))
    idle(d)


def idle(d: Decider) -> None:
    """Every shard reports it has read all it has (the source's tick of a caught-up shard)."""
    for shard in range(SHARDS):
        d.emit(d.process(shard, []))


def final_records(store: Store) -> dict[str, FulfilmentRecord]:
    out: dict[str, FulfilmentRecord] = {}
    for fields in store.shards.entries(keys.outbox, SHARDS):
        for p in packed_records(fields):
            rec = record_from_packed(p)
            assert rec.order_id not in out, f"two records for {rec.order_id}"
            out[rec.order_id] = rec
    return out


def setup(store: Store, cat: dict[str, Any]) -> Decider:
    load(store, cat)
    store.shards.shard_count(SHARDS)
    return Decider(store, say=lambda _m: None)


def test_the_first_n_by_paid_at_get_the_gift_once_settled(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [buy("o5", 5000), buy("o1", 1000), buy("o9", 9000)], seq)
    send(d, [buy("o3", 3000), buy("o2b", 2000), buy("o2a", 2000), buy("s1", 0, ("SOCKS", 1))], seq)
    recs = final_records(store)
    assert set(recs) == {"s1"}  # orders without a campaign SKU are not delayed
    decided = [
        p
        for f in store.shards.entries(keys.decided, SHARDS)
        for p in f[b"v"].decode().split("\x1e")
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
    assert store.skus.stock_levels(["TOTE"])["TOTE"] == {"wh-bj": 97}
    assert d.settler.run(force=True) == 0  # settling again changes nothing


def test_rejected_orders_never_hold_a_slot(store: Store) -> None:
    d, seq = setup(store, catalog(first_n=2, stock=2)), [0]
    send(d, [buy("big", 1, ("SNEAKER", 5)), buy("a", 2), buy("b", 3), buy("c", 4)], seq)
    d.settler.run(force=True)
    recs = final_records(store)
    assert recs["big"].reason == "sold_out" and recs["c"].reason == "sold_out"
    assert {o: r.gift.rank for o, r in recs.items() if r.gift} == {"a": 1, "b": 2}


def test_every_campaign_orders_decision_goes_to_the_decisions_stream_once(store: Store) -> None:
    """Accepted (held) and rejected campaign orders, in a batch with a held record and in
    one of rejections only (written as they came, emit.lua's fast path); the second batch
    emitted twice (a replay) adds nothing."""
    d = setup(store, catalog(first_n=2, stock=1))
    d.emit(d.process(0, [("1-0", orjson.dumps(buy("a", 1))), ("2-0", orjson.dumps(buy("b", 2)))]))
    second = d.process(0, [("3-0", orjson.dumps(buy("c", 3))),
                           ("4-0", orjson.dumps(buy("s", 4, ("SOCKS", 1)))),
                           ("5-0", orjson.dumps(buy("d", 5)))])  # fmt: skip
    d.emit(second)
    d.emit(second)
    decided = [
        p for f in store.shards.entries(keys.decided, SHARDS) for p in f[b"v"].split(b"\x1e")
    ]
    assert decided == [b"a\x1fA", b"b\x1fR", b"c\x1fR", b"d\x1fR"]
    assert store.r.hget(keys.counters(0), "records") == b"4"  # b, c, s, d (a is held)


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
    assert store.skus.stock_levels(["TOTE"])["TOTE"] == {"wh-bj": 0}
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


def run_campaign(
    tmp_path: Path, cli_env: dict[str, str], first_n: int, events: list[bytes]
) -> Store:
    """Load the demo catalog with a first-N campaign (lateness 300 ms), push the events, run
    the dataflow with two workers until drained."""
    onestock("catalog", "load", str(_campaign_catalog(tmp_path, first_n, 300)), env=cli_env)
    onestock("orders", "push", "-", input=b"\n".join(events), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    return Store.connect(cli_env["ONESTOCK_REDIS_URL"])


def _check_campaign(store: Store, order_ids: set[str], first_n: int) -> None:
    k = store.shards.shard_count()
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
    assert len(taken) == first_n and keys.GIFT_NONE.encode() not in taken
    shipped = [s for r in recs.values() for s in r.shipments for ln in s.lines
               if ln.sku == "SNEAKER-42"]  # fmt: skip
    assert len(shipped) >= first_n


def test_until_drained_waits_for_the_gifts_and_releases_every_record(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    lines = list(burst.orders(3000, burst.demo_catalog(), seed=12, garbage=0.0))
    store = run_campaign(tmp_path, cli_env, 200, lines)
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
