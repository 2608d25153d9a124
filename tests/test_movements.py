"""Stock movements: receipts, sales outside onestock, adjustments, transfers and counts,
applied once each, all-or-nothing, never below zero, audited with the orders."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from dataflows.decider import Decider
from onestock.domain.protocol import MOVE_APPLIED, MOVE_HELD, MOVE_REFUSED
from onestock.domain.types import MovementRecord
from onestock.ops import services as ops
from state import keys
from state.keys import sku_slot
from state.movements import ABORT, APPLY, COMMIT, HOLD, REHOLD, Answer, Call, MoveLine
from state.store import Store
from tests.conftest import ROOT, load, onestock
from tests.helpers import decide, order, stock

LOCATIONS = [
    {"id": "wh-a", "kind": "warehouse", "lat": 31.2, "lon": 121.5},
    {"id": "wh-b", "kind": "warehouse", "lat": 39.9, "lon": 116.4},
    {"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2, "safety_stock": 1},
]
CHANNELS = [{"id": "tmall"}, {"id": "pos", "kind": "store"}]


def catalog(**stock: dict[str, int]) -> dict[str, Any]:
    return {
        "channels": CHANNELS,
        "locations": LOCATIONS,
        "skus": [{"sku": sku, "stock": levels} for sku, levels in stock.items()],
    }


def two_slot_skus() -> tuple[str, str]:
    """Two SKU ids whose keys lie in different hash slots."""
    a = "SKU-A"
    b = next(f"SKU-B{i}" for i in range(100) if sku_slot(f"SKU-B{i}") != sku_slot(a))
    return a, b


def movement(
    mid: str, kind: str, location: str, *lines: tuple[str, int], **extra: Any
) -> dict[str, Any]:
    return {
        "type": "movement", "movement_id": mid, "kind": kind, "location": location,
        "lines": [{"sku": s, "qty": q} for s, q in lines], **extra,
    }  # fmt: skip


def moved(store: Store) -> dict[str, MovementRecord]:
    out: dict[str, MovementRecord] = {}
    for rec in ops.movements(store, store.shards.shard_count(1)):
        assert rec.movement_id not in out, f"two records of {rec.movement_id}"
        out[rec.movement_id] = rec
    return out


# -- movement.lua ---------------------------------------------------------------------------


def test_each_kind_changes_the_stock_as_the_contract_says(store: Store) -> None:
    load(store, catalog(A={"wh-a": 10, "wh-b": 5}))
    d = Decider(store, say=lambda _m: None)
    decide(store, [
        movement("r1", "receipt", "wh-a", ("A", 500)),
        movement("s1", "sale", "wh-b", ("A", 2)),
        movement("j1", "adjustment", "wh-a", ("A", -4), reason="damaged"),
        movement("j2", "adjustment", "wh-b", ("A", 1)),
        movement("t1", "transfer", "wh-a", ("A", 6), to="st-c"),
        movement("c1", "count", "wh-b", ("A", 9), at="2026-11-11T00:05:00Z"),
    ], decider=d)  # fmt: skip
    assert stock(store, "A") == {"wh-a": 500, "wh-b": 9, "st-c": 6}
    recs = moved(store)
    assert {m: r.status for m, r in recs.items()} == dict.fromkeys(
        ["r1", "s1", "j1", "j2", "t1", "c1"], "applied"
    )
    assert recs["r1"].lines[0].on_hand == 510
    assert (recs["t1"].lines[0].on_hand, recs["t1"].lines[0].to_on_hand) == (500, 6)
    # the count found 4 (5 - 2 sold + 1 adjusted) and counted 9
    assert recs["c1"].lines[0].discrepancy == 5 and recs["c1"].discrepancy == 5
    assert recs["c1"].at == "2026-11-11T00:05:00Z"


def test_below_zero_is_refused_whole_and_nothing_is_clamped(store: Store) -> None:
    load(store, catalog(A={"wh-a": 3}, B={"wh-a": 50}))
    decide(store, [movement("s1", "sale", "wh-a", ("B", 10), ("A", 4))])
    rec = moved(store)["s1"]
    assert (rec.status, rec.reason) == ("refused", "below_zero")
    assert "A at wh-a has 3 units" in (rec.detail or "")
    assert stock(store, "A") == {"wh-a": 3} and stock(store, "B") == {"wh-a": 50}


@pytest.mark.layout("slots")
def test_a_transfer_across_slots_is_all_or_nothing(store: Store) -> None:
    a, b = two_slot_skus()
    load(store, catalog(**{a: {"wh-a": 10}, b: {"wh-a": 1}}))
    decide(store, [movement("t1", "transfer", "wh-a", (a, 5), (b, 2), to="wh-b")])
    assert moved(store)["t1"].reason == "below_zero"
    assert stock(store, a) == {"wh-a": 10} and stock(store, b) == {"wh-a": 1}
    decide(store, [movement("t2", "transfer", "wh-a", (a, 5), (b, 1), to="wh-b")])
    assert moved(store)["t2"].status == "applied"
    assert stock(store, a) == {"wh-a": 5, "wh-b": 5} and stock(store, b) == {"wh-a": 0, "wh-b": 1}


def test_every_step_is_idempotent_and_a_crash_between_hold_and_commit_replays(
    store: Store,
) -> None:
    a, b = two_slot_skus()
    load(store, catalog(**{a: {"wh-a": 10}, b: {"wh-a": 10}}))
    run = store.movements.run
    la, lb = MoveLine(a, "move", "wh-a", 4, "wh-b"), MoveLine(b, "count", "wh-a", 3, "")
    held = run([Call(HOLD, "m", [la]), Call(HOLD, "m", [lb])])
    assert [x.state for x in held] == [MOVE_HELD, MOVE_HELD]
    assert stock(store, a) == {"wh-a": 6} and stock(store, b) == {"wh-a": 0}  # taken out
    # a crash here: the replay holds again (nothing changes), then commits, twice
    assert [x.state for x in run([Call(HOLD, "m", [la]), Call(HOLD, "m", [lb])])] == [MOVE_HELD] * 2
    assert stock(store, a) == {"wh-a": 6}
    done = run([Call(COMMIT, "m", [la]), Call(COMMIT, "m", [lb])])
    again = run([Call(COMMIT, "m", [la]), Call(APPLY, "m", [lb]), Call(HOLD, "m", [lb])])
    assert [x.state for x in done] == [MOVE_APPLIED] * 2 and again[:2] == done
    assert again[2].state == MOVE_APPLIED  # a hold after the commit: the applied answer
    assert stock(store, a) == {"wh-a": 6, "wh-b": 4} and stock(store, b) == {"wh-a": 3}
    assert done[1].payload.split("\x1f") == ["3", "", "-7"]  # counted 3, expected 10


@pytest.mark.layout("slots")
def test_a_movement_after_a_count_across_slots_meets_the_count_done(store: Store) -> None:
    """A movement across slots holds, then commits: a later movement of its batch comes
    after the commit (two counts added up, a sale of a counted SKU was refused)."""
    a, b = two_slot_skus()
    load(store, catalog(**{a: {"wh-a": 40}, b: {"wh-a": 40}}))
    decide(store, [movement("c1", "count", "wh-a", (a, 12), (b, 7)),
                   movement("c2", "count", "wh-a", (a, 20), (b, 9)),
                   movement("s1", "sale", "wh-a", (b, 3))])  # fmt: skip
    assert {r.status for r in moved(store).values()} == {"applied"}
    assert stock(store, a) == {"wh-a": 20} and stock(store, b) == {"wh-a": 6}


def test_an_abort_gives_back_what_the_hold_took_once(store: Store) -> None:
    load(store, catalog(A={"wh-a": 10}))
    line = MoveLine("A", "out", "wh-a", 4, "")
    run = store.movements.run
    assert run([Call(HOLD, "m", [line])])[0].state == MOVE_HELD
    assert stock(store, "A") == {"wh-a": 6}
    why = "below_zero\x1fB at wh-a has 0 units"
    first = run([Call(ABORT, "m", [line], why)])
    assert first == run([Call(ABORT, "m", [line], why), Call(HOLD, "m", [line])])[:1]
    assert first[0].state == MOVE_REFUSED and first[0].payload == why
    assert stock(store, "A") == {"wh-a": 10}


def test_a_rehold_takes_again_at_its_moment_and_keeps_the_new_guard(store: Store) -> None:
    """A hold keeps its guard (every hold after it answers it); a rehold gives back what the
    hold took and takes again now, with a new guard; refused when the lines no longer fit;
    after a commit, a rehold answers the applied state."""
    load(store, catalog(A={"wh-a": 10}))
    run = store.movements.run
    count, out = MoveLine("A", "count", "wh-a", 3, ""), MoveLine("A", "out", "wh-a", 2, "")
    assert run([Call(HOLD, "m", [out, count], "7,9")]) == [Answer(MOVE_HELD, "7,9")]
    assert run([Call(HOLD, "m", [out, count], "other")]) == [Answer(MOVE_HELD, "7,9")]
    assert stock(store, "A") == {"wh-a": 0}  # the sale took 2, the count the other 8
    store.skus.set_stock("A", {"wh-a": 5}, [])  # 5 came in after the hold: they stay
    assert run([Call(REHOLD, "m", [out, count], "8,9")]) == [Answer(MOVE_HELD, "8,9")]
    assert stock(store, "A") == {"wh-a": 0}  # given back 10, taken all 15 now
    assert run([Call(HOLD, "m", [out, count])]) == [Answer(MOVE_HELD, "8,9")]
    done = run([Call(COMMIT, "m", [out, count])])
    assert done[0].state == MOVE_APPLIED and stock(store, "A") == {"wh-a": 3}
    assert run([Call(REHOLD, "m", [out, count], "9,9")]) == done
    # a rehold that no longer fits (the SKU gone from this Redis): refused
    sale = MoveLine("A", "out", "wh-a", 3, "")
    assert run([Call(HOLD, "s", [sale], "1")])[0].state == MOVE_HELD
    store.r.delete(keys.stock("A"))
    got = run([Call(REHOLD, "s", [sale], "2")])[0]
    assert got.state == MOVE_REFUSED and got.payload.startswith("unknown_sku")
    assert run([Call(HOLD, "s", [sale], "3")]) == [got]


# -- through the decider ----------------------------------------------------------------------


def test_copies_and_replays_apply_once_and_record_once(store: Store) -> None:
    load(store, catalog(A={"wh-a": 10}))
    d = Decider(store, say=lambda _m: None)
    grn = movement("g1", "receipt", "wh-a", ("A", 5))
    decide(store, [grn, grn, order("o1", ("A", 1))], decider=d)
    decide(store, [grn], decider=d)  # a webhook retry, a later batch
    entries = [("1-0", orjson.dumps(grn))]
    d.process(0, entries)  # a replay whose emit never happened: no second change either
    assert stock(store, "A") == {"wh-a": 14}
    assert list(moved(store)) == ["g1"]


def test_bad_movements_end_as_refused_records_and_dead_letters(store: Store) -> None:
    load(store, catalog(A={"wh-a": 10}))
    _, dead = decide(store, [
        movement("x1", "receipt", "nowhere", ("A", 1)),
        movement("x2", "receipt", "wh-a", ("NOPE", 1)),
        movement("x3", "count", "wh-a", ("A", 1), ("A", 2)),
        movement("x4", "transfer", "wh-a", ("A", 1)),
        movement("x5", "receipt", "wh-a", ("A", 0)),
        movement("x6", "adjustment", "wh-a", ("A", 0)),
        movement("x7", "levitate", "wh-a", ("A", 1)),
        movement("x8", "receipt", "wh-a", ("A\x07", 1)),
        movement("x9", "sale", "wh-a", ("A", 1), to="wh-b"),
        {"type": "movement", "kind": "receipt"},
        {"type": "movement", "movement_id": "", "kind": "receipt"},
    ])  # fmt: skip
    recs = moved(store)
    assert {m: r.reason for m, r in recs.items()} == {
        "x1": "unknown_location", "x2": "unknown_sku", "x3": "invalid", "x4": "invalid",
        "x5": "invalid", "x6": "invalid", "x7": "invalid", "x8": "invalid", "x9": "invalid",
    }  # fmt: skip
    assert all(r.status == "refused" and r.detail for r in recs.values())
    assert "`$.lines[1].sku`" in (recs["x3"].detail or "")
    assert [row[2] for row in dead] == [
        "movement_id missing",
        "movement_id must be 1 to 256 characters",
    ]
    assert stock(store, "A") == {"wh-a": 10}


def test_a_hot_skus_movement_sees_every_bucket(store: Store) -> None:
    cat = catalog()
    cat["skus"] = [{"sku": "HOT", "stock": {"wh-a": 90, "wh-b": 9}, "buckets": 3}]
    load(store, cat)
    decide(store, [
        movement("s1", "sale", "wh-a", ("HOT", 80)),  # more than bucket 0 holds there
        movement("c1", "count", "wh-b", ("HOT", 4)),
    ])  # fmt: skip
    recs = moved(store)
    assert (recs["s1"].status, recs["s1"].lines[0].on_hand) == ("applied", 10)
    assert recs["c1"].lines[0].discrepancy == -5
    levels = store.skus.stock_levels({"HOT": {}}, {"HOT": 3})["HOT"]
    assert (levels["wh-a"], levels["wh-b"]) == (10, 4)


def test_the_audit_adds_movements_to_the_conservation_law(store: Store) -> None:
    a, b = two_slot_skus()
    cat = load(store, catalog(**{a: {"wh-a": 20, "wh-b": 5}, b: {"wh-a": 3}}))
    d = Decider(store, say=lambda _m: None)
    events: list[Any] = [
        order(f"o{i}", (a, 1), (b, 1) if i % 3 == 0 else (a, 1)) for i in range(12)
    ]
    events[4:4] = [movement("g", "receipt", "wh-b", (b, 4)), movement("c", "count", "wh-a", (a, 2))]
    events += [
        movement("t", "transfer", "wh-b", (a, 1), (b, 1), to="st-c"),
        {"type": "cancel", "order_id": "o3"},
    ]
    for i in range(0, len(events), 5):
        decide(store, events[i : i + 5], decider=d)
    audit = ops.audit(store, 1, {s.sku: dict(s.stock) for s in cat.skus})
    assert audit.oversold == 0 and audit.records == 12
    # and a change that no record explains is caught
    store.r.hincrby(keys.stock(a), "wh-a", 1)
    assert ops.audit(store, 1, {s.sku: dict(s.stock) for s in cat.skus}).oversold == 1


# -- through the CLI and a running dataflow -------------------------------------------------


def _run(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "onestock", "run", "--workers", "2"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for(what: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_receipt_in_the_middle_of_a_burst_is_sold_exactly(
    store: Store, cli_env: dict[str, str], tmp_path: Path
) -> None:
    import os

    cat = tmp_path / "cat.json"
    cat.write_bytes(orjson.dumps(catalog(HOT={"wh-a": 700, "wh-b": 300})))
    onestock("catalog", "load", str(cat), env=cli_env)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    orders = [orjson.dumps(order(f"o{i}", ("HOT", 1))) for i in range(3000)]
    first.write_bytes(b"\n".join(orders[:1500]) + b"\n")
    second.write_bytes(b"\n".join(orders[1500:]) + b"\n")
    grn = tmp_path / "grn.jsonl"
    grn.write_bytes(orjson.dumps(movement("GRN-1", "receipt", "wh-a", ("HOT", 500))) + b"\n")
    count = tmp_path / "count.jsonl"
    count.write_bytes(orjson.dumps(movement("CNT-1", "count", "wh-b", ("HOT", 40))) + b"\n")
    onestock("orders", "push", str(first), "--shards", "4", env=cli_env)
    flow = _run({**os.environ, **cli_env})
    try:
        _wait_for(lambda: store.shards.outcome_counts(4)[0] >= 300)  # the burst is on
        onestock("orders", "push", str(grn), env=cli_env)
        onestock("orders", "push", str(count), env=cli_env)
        onestock("orders", "push", str(second), env=cli_env)
        moves = lambda: sum(store.r.xlen(keys.movements(s)) for s in range(4))  # noqa: E731
        _wait_for(lambda: store.shards.outcome_counts(4)[0] == 3000 and moves() == 2)
    finally:
        flow.send_signal(signal.SIGTERM)
    assert flow.wait(timeout=60) == 0, flow.stderr.read().decode()[-2000:] if flow.stderr else ""
    out = onestock("movements", env=cli_env).stdout.splitlines()
    recs = {r["movement_id"]: r for r in map(orjson.loads, out)}
    assert recs["GRN-1"]["status"] == recs["CNT-1"]["status"] == "applied"
    disc = recs["CNT-1"]["discrepancy"]
    records = [orjson.loads(x) for x in onestock("fulfilments", env=cli_env).stdout.splitlines()]
    accepted = Counter(r["status"] for r in records)["accepted"]
    assert accepted == 1000 + 500 + disc  # every unit sold, not one more
    assert sum(stock(store, "HOT").values()) == 0
    audit = ops.audit(store, 4, {"HOT": {"wh-a": 700, "wh-b": 300}})
    assert audit.oversold == 0 and audit.records == 3000


def test_post_movements_is_signed_and_takes_only_movements(
    cli_env: dict[str, str], store: Store
) -> None:
    from tests.helpers import Server
    from tests.test_intake import SECRETS, orders_headers

    server = Server({**cli_env, **SECRETS})
    try:
        one = orjson.dumps(movement("GRN-9", "receipt", "wh-a", ("A", 5)))
        status, _, reply = server.post("/movements", one, orders_headers(one))
        assert (status, reply) == (202, {"status": "stored", "events": 1})
        assert server.post("/movements", one, {"X-Onestock-Signature": "t=1,v1=00"})[0] == 401
        an_order = orjson.dumps(order("o-1", ("A", 1)))
        status, _, reply = server.post("/movements", an_order, orders_headers(an_order))
        assert status == 400 and "only movements" in reply["error"]
    finally:
        server.stop()
    k = store.shards.shard_count()
    stored = [raw for s in range(k) for _, raw in store.shards.read(s, "0-0", 100)]
    assert stored == [one]  # on the shard of its movement id, as `orders push` puts it
