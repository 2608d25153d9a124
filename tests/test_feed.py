"""The availability change feed: every status change of a (SKU, channel) once, in order,
fenced by the publisher's lease, also for changes no decision makes (a lock's end)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dataflows.decider import Decider
from onestock.ops.feed import Publisher
from state import keys
from state.store import Store
from tests.conftest import load
from tests.helpers import decide, order

CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall"}, {"id": "pos", "kind": "store"}],
    "locations": [
        {"id": "wh-a", "lat": 31.2, "lon": 121.5},
        {"id": "st-c", "kind": "store", "lat": 30.3, "lon": 120.2, "safety_stock": 1},
    ],
    "skus": [
        {"sku": "A", "stock": {"wh-a": 3, "st-c": 1}, "low_stock_threshold": 1},
        {"sku": "B", "stock": {"wh-a": 0}},
    ],
}


def feed(store: Store, after: int = 0) -> list[tuple[str, str, str, int]]:
    return [(t.sku, t.channel, t.status, t.available) for t in store.feed.after(after)]


def quiet(store: Store) -> Publisher:
    return Publisher(store, say=lambda _m: None, sweep_s=3600)


def test_each_change_of_status_is_one_transition_in_order(store: Store) -> None:
    load(store, CATALOG)
    pub = quiet(store)
    assert pub.step() == 4  # what every (SKU, channel) starts as
    assert feed(store) == [
        ("A", "tmall", "in_stock", 3), ("A", "pos", "in_stock", 4),
        ("B", "tmall", "sold_out", 0), ("B", "pos", "sold_out", 0),
    ]  # fmt: skip
    assert pub.step() == 0  # nothing changed, nothing published
    d = Decider(store, say=lambda _m: None)
    decide(store, [order("o1", ("A", 2))], decider=d)  # 1 left online (+1 safety in store)
    assert store.r.smembers(keys.FEED_DIRTY) == {b"A"}  # the decider marked what it touched
    assert pub.step() == 1  # online: 1 (the store's unit is safety stock); pos: 2, in stock
    assert feed(store, 4) == [("A", "tmall", "low_stock", 1)]
    decide(store, [order("o2", ("A", 1)), {"type": "cancel", "order_id": "o1"}], decider=d)
    pub.step()
    decide(store, [{"type": "movement", "movement_id": "m1", "kind": "sale",
                    "location": "wh-a", "lines": [{"sku": "A", "qty": 2}]}], decider=d)  # fmt: skip
    pub.step()
    tail = feed(store, 5)
    assert tail == [("A", "tmall", "in_stock", 2), ("A", "tmall", "sold_out", 0),
                    ("A", "pos", "low_stock", 1)]  # fmt: skip
    seqs = [t.seq for t in store.feed.after(0)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_publishing_is_fenced_by_the_lease(store: Store) -> None:
    load(store, CATALOG)
    first, second = quiet(store), quiet(store)
    assert first.step() == 4
    assert second.step() == -1  # the lease is the first's
    store.r.hincrby(keys.stock("B"), "wh-a", 5)
    store.feed.mark(["B"])
    # a stalled first publisher lost its lease to the second: its late write changes nothing
    assert first.token is not None
    store.r.delete(keys.FEED_LEASE)
    assert second.step() == 2  # took over, knew what was published: only B's change
    assert store.feed.publish(first.token, 0, [("B", "tmall", "sold_out", 0)]) == -1
    first.renewed = 0.0  # its next renewal finds the lease gone
    assert first.step() == -1 and first.token is None
    assert [t.status for t in store.feed.after(4)] == ["in_stock", "in_stock"]


def test_a_lock_end_is_a_transition_without_any_decision(store: Store) -> None:
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    cat = {
        **CATALOG,
        "skus": [{"sku": "L", "stock": {"wh-a": 5},
                  "channel_locks": [{"channel": "pos", "qty": 5, "until": until.isoformat()}]}],
    }  # fmt: skip
    load(store, cat)
    pub = quiet(store)
    pub.step()
    assert feed(store) == [("L", "tmall", "sold_out", 0), ("L", "pos", "in_stock", 5)]
    time.sleep(max(0.0, until.timestamp() - time.time()) + 0.05)
    assert pub.step() == 1
    assert feed(store, 2) == [("L", "tmall", "in_stock", 5)]


def test_a_sweep_catches_a_change_nobody_marked_and_a_new_catalog_is_judged(
    store: Store,
) -> None:
    load(store, CATALOG)
    pub = quiet(store)
    pub.step()
    store.r.hincrby(keys.stock("B"), "wh-a", 2)  # not through a script: nobody marks it
    assert pub.step() == 0
    pub.next_sweep = 0.0
    assert pub.step() == 2
    load(store, {**CATALOG, "skus": [{"sku": "B", "stock": {"wh-a": 1}, "low_stock_threshold": 3}]})
    assert pub.step() == 2  # a threshold changed what B's units mean
    assert feed(store, 6) == [("B", "tmall", "low_stock", 1), ("B", "pos", "low_stock", 1)]


def test_follow_replays_from_a_seq_then_prints_as_they_happen(
    store: Store, cli_env: dict[str, str]
) -> None:
    import os
    import signal
    import subprocess
    import sys

    import orjson

    from tests.conftest import ROOT, onestock

    load(store, CATALOG)
    pub = quiet(store)
    pub.step()  # seq 1..4
    follower = subprocess.Popen(
        [sys.executable, "-m", "onestock", "availability", "--follow", "--from", "1",
         "--channel", "tmall"],
        env={**os.environ, **cli_env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        first = orjson.loads(follower.stdout.readline())  # replayed: seq 3 (B, tmall)
        assert (first["seq"], first["sku"], first["status"]) == (3, "B", "sold_out")
        store.r.hincrby(keys.stock("B"), "wh-a", 7)
        store.feed.mark(["B"])
        pub.step()  # seq 5, 6: B in stock on both channels; only tmall's is printed
        live = orjson.loads(follower.stdout.readline())
        assert {k: live[k] for k in ("seq", "sku", "channel", "status", "available")} == {
            "seq": 5, "sku": "B", "channel": "tmall", "status": "in_stock", "available": 7,
        }  # fmt: skip
        assert live["at"].endswith("Z")
    finally:
        follower.send_signal(signal.SIGTERM)
    assert follower.wait(timeout=10) == 0
    bad = onestock("availability", "--from", "3", env=cli_env, check=False)
    assert bad.returncode == 2 and b"goes with --follow" in bad.stderr


def test_a_kill_9_of_the_run_leaves_no_feed_process_behind(
    store: Store, cli_env: dict[str, str]
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    load(store, CATALOG)
    run = subprocess.Popen(
        [sys.executable, "-m", "onestock", "run", "--workers", "1"],
        env={**os.environ, **cli_env}, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def feeds() -> list[str]:
        pattern = f"onestock feed --redis-url {cli_env['ONESTOCK_REDIS_URL']}$"
        got = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        return got.stdout.split()

    deadline = time.monotonic() + 30
    while not (feeds() and store.feed.last_seq() == 4):  # it published the first statuses
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 15
    while feeds():
        assert time.monotonic() < deadline, "the feed process outlived its run"
        time.sleep(0.2)
