"""``onestock bench``: the bare loop, the dataflow and the rules run alternated on the same
orders (medians), and a run that lost or doubled an event refused."""

from __future__ import annotations

import statistics
from pathlib import Path

import msgspec
import pytest

from onestock.bench import Figures, _check_outcomes
from state import keys
from state.store import Store
from tests.conftest import onestock


def test_bench_alternates_bare_loop_and_dataflow_and_reports_their_medians(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    proc = onestock("bench", "--orders", "4000", "--repeat", "3", "--no-gifts",
                    "--out", str(out), timeout=300)  # fmt: skip
    figs = msgspec.json.decode(out.read_bytes(), type=Figures)
    assert len(figs.runs) == 3
    assert all(r.bare_orders_per_s > 0 and r.dataflow_drain_orders_per_s > 0 for r in figs.runs)
    assert figs.bare_orders_per_s == statistics.median(r.bare_orders_per_s for r in figs.runs)
    assert figs.dataflow_drain_orders_per_s == statistics.median(
        r.dataflow_drain_orders_per_s for r in figs.runs
    )
    assert figs.ratio == statistics.median(r.ratio for r in figs.runs)
    assert figs.gifts_drain_orders_per_s is None
    # every rule on: a run beside each core run, its ratio to that run, and their medians
    rates = [r.rules_drain_orders_per_s for r in figs.runs]
    ratios = [r.rules_ratio for r in figs.runs]
    assert all(x is not None and x > 0 for x in rates) and all(x is not None for x in ratios)
    assert figs.rules_drain_orders_per_s == statistics.median(rates)  # type: ignore[type-var]
    assert figs.rules_ratio == statistics.median(ratios)  # type: ignore[type-var]
    for r in figs.runs:
        assert r.rules_ratio == r.rules_drain_orders_per_s / r.dataflow_drain_orders_per_s  # type: ignore[operator]
    text = proc.stdout.decode()
    assert "run 3: bare / dataflow drained" in text and "(median)" in text
    assert "run 3: every rule on, drained" in text


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--repeat", "0"], "--repeat must be 1..20, not 0"),
        (["--orders", "10"], "--orders must be at least 1000, not 10"),
    ],
)
def test_bench_refuses_bad_options_in_one_line(args: list[str], error: str) -> None:
    proc = onestock("bench", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode() == f"onestock: error: {error}\n"


def test_a_run_whose_outcomes_do_not_match_its_events_is_refused(store: Store) -> None:
    store.r.hset(keys.counters(0), mapping={"records": 7, "dead": 2})
    store.r.hset(keys.counters(3), mapping={"records": 1})
    _check_outcomes(store, 10, "dataflow")  # 8 records + 2 dead letters: every event once
    with pytest.raises(RuntimeError, match=r"^dataflow: 8 records \+ 2 dead letters for 11 "):
        _check_outcomes(store, 11, "dataflow")  # one lost
    with pytest.raises(RuntimeError, match=r"for 9 events$"):
        _check_outcomes(store, 9, "dataflow")  # one doubled
