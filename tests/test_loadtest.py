"""The Locust scenarios, short and headless, through `onestock loadtest` (which starts a real
Redis, `onestock serve` and `onestock run`), and the gate checked both ways."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from onestock import burst
from onestock.loadtest_run import scenarios
from tests.conftest import onestock
from tests.helpers import decide, order

SHORT = {  # scenario -> extra options of its short run
    "flash_sale": ["--rate", "150"],
    "double_eleven_day": ["--scale", "0.00005"],  # 1,000 orders, the midnight rush first
    "hot_sku": ["--rate", "100"],  # 120 units: sold out within the run
    "hot_sku_buckets": ["--rate", "100"],  # 120 units in 4 buckets: sold out, borrowing
    "retry_storm": ["--rate", "60"],
    "bad_payloads": ["--rate", "100"],
    "multichannel": ["--rate", "100"],
}


def test_every_scenario_file_has_a_short_run_here() -> None:
    assert sorted(SHORT) == scenarios()


def run(tmp_path: Path, name: str, *extra: str, check: bool = True) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out = tmp_path / "out"
    proc = onestock("loadtest", name, "--seconds", "4", "--out", str(out), *extra,
                    timeout=240, check=False)  # fmt: skip
    text = proc.stdout.decode() + proc.stderr.decode()
    if check:
        assert proc.returncode == 0, text[-3000:]
    verdict = msgspec.json.decode((out / f"{name}_verdict.json").read_bytes())
    for suffix in ("_stats.csv", "_stats_history.csv", ".html", ".png"):
        assert (out / f"{name}{suffix}").exists(), suffix
    return proc.returncode, verdict, text


@pytest.mark.parametrize("name", sorted(SHORT))
def test_scenario_passes_its_gate(tmp_path: Path, name: str) -> None:
    _, verdict, text = run(tmp_path, name, *SHORT[name])
    assert verdict["passed"] and verdict["requests"] > 50
    assert all(c["ok"] for c in verdict["checks"])
    assert "gate: PASS" in text


def test_stream_users_closed_model_and_two_processes(tmp_path: Path) -> None:
    _, verdict, _ = run(tmp_path, "flash_sale", "--rate", "200", "--via", "stream")
    assert verdict["passed"]
    _, verdict, _ = run(tmp_path, "multichannel", "--rate", "100", "--model", "closed")
    assert verdict["passed"] and verdict["requests"] > 200
    _, verdict, _ = run(tmp_path, "multichannel", "--rate", "100", "--processes", "2")
    assert verdict["passed"]
    acked = next(c for c in verdict["checks"] if c["name"].startswith("every acked"))
    # every request the two worker processes counted was acknowledged and decided
    assert acked["detail"].startswith(f"{verdict['requests']:,} acked")


def test_gate_fails_a_run_past_its_p99_bound(tmp_path: Path) -> None:
    rc, verdict, text = run(tmp_path, "multichannel", "--rate", "50", "--max-p99-ms", "0.01",
                            check=False)  # fmt: skip
    assert rc == 1 and not verdict["passed"] and "gate: FAIL" in text
    failed = [c["name"] for c in verdict["checks"] if not c["ok"]]
    assert failed == ["p99 from intended send time"]


def test_gate_fails_when_an_acked_order_has_no_outcome(store) -> None:  # type: ignore[no-untyped-def]
    from loadtest import checks as gate
    from loadtest.checks import ACKED

    cat = burst.demo_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    decide(store, [order("ok-1", ("SNEAKER-42", 1))])
    store.r.sadd(ACKED, "ok-1", "lost-1")  # acknowledged, never decided
    sc = gate.Scenario("t", burst.demo_catalog, lambda t, o: 1.0)
    checks = {c.name: c for c in gate.invariants(sc, store, timeout=1.0)}
    lost = checks["every acked order has exactly one outcome"]
    assert not lost.ok and "1 without a record (e.g. lost-1)" in lost.detail
    assert not checks["pipeline drained"].ok  # it waited for lost-1, then gave up
    assert checks["nothing oversold"].ok
