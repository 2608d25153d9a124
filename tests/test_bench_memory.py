"""``onestock bench-memory``: days compressed in real time (a day, and the idempotency
window, ``--day-s`` seconds), Redis memory per day, per key family and per generation; and
its state-layer helpers (``state.replay``): keys grouped by family and by generation."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import orjson

from onestock.bench.memory import (
    Figures,
    day_events,
    first_start_ms,
    idempotency_days,
    replay_catalog,
)
from onestock.domain.events import rfc3339_ms
from onestock.domain.settings import DEFAULT_SHARDS
from state import keys, replay
from state.store import Store
from tests.conftest import onestock

P = keys.PREFIX  # key names are built, never written out (tests/test_structure.py)


def test_two_days_give_one_row_a_day_every_order_decided_and_the_families(
    tmp_path: Path,
) -> None:
    out = tmp_path / "memory.json"
    proc = onestock("bench-memory", "--days", "2", "--orders", "300", "--day-s", "10",
                    "--workers", "1", "--out", str(out), timeout=180)  # fmt: skip
    figs = msgspec.json.decode(out.read_bytes(), type=Figures)
    assert (figs.days, figs.orders_per_day, figs.day_s, figs.samples) == (2, 300, 10, 0)
    assert figs.start_ms % 10_000 == 0  # a generation's start
    assert [r.day for r in figs.rows] == [1, 2]
    for r in figs.rows:
        assert r.start_ms == figs.start_ms + (r.day - 1) * 10_000 and r.late_s >= 0
        assert r.orders == 300 and r.orders_total == 300 * r.day
        assert r.records == r.orders_total and r.dead_letters == 0  # one record per order
        assert r.used_memory > r.used_memory_dataset > 0
        assert r.bytes_per_order == r.used_memory / 300
        assert r.generations  # the day's idempotency state
        names = {f.family for f in r.families}
        assert replay.family_of(keys.outbox(0)) in names  # the records
        assert replay.family_of(keys.inbox(0)) in names
        outbox = next(f for f in r.families if f.family == replay.family_of(keys.outbox(0)))
        assert outbox.keys == DEFAULT_SHARDS and outbox.bytes > 0
        assert r.families == sorted(r.families, key=lambda f: (-f.bytes, f.family))
    steady = figs.rows[1].used_memory  # days 2..D: here one day, so max / min is 1
    assert figs.used_memory_ratio == steady / steady == 1.0 == figs.without_outbox_ratio
    text = proc.stdout.decode()
    assert "day 1 holds one generation only" in text and "Redis memory per day" in text


def test_bad_arguments_are_one_line_errors() -> None:
    for args in (["--days", "0"], ["--orders", "10"], ["--day-s", "9"], ["--day-s", "3601"]):
        proc = onestock("bench-memory", *args, check=False)
        assert proc.returncode != 0
        assert b"Traceback" not in proc.stderr


def test_days_start_on_generation_boundaries_and_the_window_is_exactly_a_day() -> None:
    assert first_start_ms(60, now_ms=1_800_000_000_123) == 1_800_000_060_000
    assert first_start_ms(60, now_ms=1_800_000_060_000) == 1_800_000_120_000  # after now
    for day_s in range(10, 3601):  # what the dataflow makes of it (domain/events.py)
        assert int(float(idempotency_days(day_s)) * 86_400_000) == day_s * 1000


def test_each_days_orders_have_ids_of_that_day_and_are_paid_now() -> None:
    catalog = replay_catalog()
    assert all(s.per_customer_limit == 1000 for s in catalog.skus)
    seen: set[str] = set()
    for day in (1, 2):
        t0 = int(time.time() * 1000)
        events = list(day_events(day, 500, catalog))
        t1 = int(time.time() * 1000)
        assert len(events) == 500
        for _shard, raw in events:
            order = orjson.loads(raw)
            assert order["order_id"].startswith(f"d{day}-")
            assert order["customer"]["id"].startswith(f"d{day}-")
            paid = rfc3339_ms(order["paid_at"])
            assert paid is not None and t0 <= paid <= t1
            seen.add(order["order_id"])
    assert len(seen) == 1000  # unique across days


def test_family_of_empties_hash_tags_and_a_trailing_number() -> None:
    assert replay.family_of("x:{s3}:done") == replay.family_of("x:{s12}:done") == "x:{}:done"
    assert replay.family_of("x:{k:TEE-M}:dec:12") == "x:{}:dec:<n>"
    assert replay.family_of("x:{s3}:done:7") == "x:{}:done:<n>"
    assert replay.family_of("x:catalog:version") == "x:catalog:version"
    assert replay.family_of("x:{s1}:hook:shopify:x-1") == "x:{}:hook:shopify:x-1"
    assert replay.family_of(keys.inbox(3)) == replay.family_of(keys.inbox(11))


def test_memory_by_family_weighs_every_key_and_generations_counts_theirs(
    store: Store,
) -> None:
    store.shards.push([(0, b'{"a": 1}'), (1, b"x"), (0, b"y")])
    store.r.set(f"{P}:{{k:A}}:test:3", "v")
    store.r.set(f"{P}:{{k:B}}:test:4", "w")
    store.r.set(keys.emitted(0, 7), "v")
    store.r.set(keys.emitted(1, 7), "v")
    store.r.set(keys.decisions("A", 8), "v")
    assert replay.generations(store) == {7: 2, 8: 1}
    fams = {f.name: f for f in replay.memory_by_family(store, batch=1)}
    assert fams[replay.family_of(keys.inbox(0))].keys == 2
    assert fams[f"{P}:{{}}:test:<n>"].keys == 2
    total = 0
    for k in store.r.scan_iter():
        used = store.r.memory_usage(k, samples=0)
        assert used is not None
        total += used
    assert sum(f.bytes for f in fams.values()) == total
    mem = replay.memory(store)
    assert mem.used > mem.dataset > 0
