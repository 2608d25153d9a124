"""``onestock bench``: the bare loop, the dataflow and the rules run alternated on the same
orders (medians), and a run that lost or doubled an event refused."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import msgspec
import orjson
import pytest

from onestock.bench import Figures, check_outcomes
from onestock.bench.measure import Measured, Run
from onestock.bench.render import bench_table
from onestock.bench.summary import summarise
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
    # what an order costs: Redis's and the dataflow's own accounting, less a small drain's
    assert figs.accepted_drain_orders_per_s is not None and figs.accepted_drain_orders_per_s > 0
    for cost in (figs.core_cost, figs.accepted_cost, figs.refused_cost):  # (CPU differences:
        assert cost is not None and cost.scripts_us > 0  # noise in sign, here; not timed)
        assert math.isfinite(cost.redis_cpu_us) and math.isfinite(cost.python_us)
        assert cost.commands and cost.commands[0][0].isupper()
    assert "Redis CPU per" in text  # (the label wraps in a narrow table)


def test_the_figures_are_the_medians_of_the_runs_and_the_table_marks_them() -> None:
    """Summarising and rendering alone, on runs measured by hand (no Redis)."""
    m = Measured(4000, 2, script_calls=10, script_usec=4500.0, script_slow=1)
    m.runs = [Run(100.0, 80.0, 400.0, 0.8, 200.0, 0.5), Run(300.0, 90.0, 600.0, 0.3, 150.0, 0.25),
              Run(200.0, 70.0, 500.0, 0.35, 300.0, 0.6)]  # fmt: skip
    m.gifts_drain_s, m.gifts_latency = 2.0, (5, 9)
    figs = summarise(m)
    assert (figs.bare_orders_per_s, figs.dataflow_orders_per_s) == (200.0, 80.0)
    assert (figs.dataflow_drain_orders_per_s, figs.ratio) == (500.0, 0.35)
    assert (figs.rules_drain_orders_per_s, figs.rules_ratio) == (200.0, 0.5)
    assert (figs.gifts_drain_orders_per_s, figs.gifts_ratio) == (2000.0, 4.0)
    assert figs.script_avg_us == 450.0 and figs.core_fulfilment_ms == (0, 0)
    rows = [str(c) for c in bench_table(figs).columns[0].cells]
    assert rows[:2] == [
        "run 1: bare / dataflow drained, orders/s (ratio, wall)",
        "run 1: every rule on, drained, orders/s (ratio to run 1's core)",
    ]
    assert "bare loop (ceiling), orders/s (median)" in rows
    assert "ratio gifts / core (drain)" in rows
    m.runs = m.runs[:1]
    m.runs[0].rules_drain_orders_per_s = m.runs[0].rules_ratio = None
    m.gifts_drain_s = None
    figs = summarise(m)
    assert figs.rules_drain_orders_per_s is None and figs.gifts_ratio is None
    rows = [str(c) for c in bench_table(figs).columns[0].cells]
    assert rows[0] == "bare loop (ceiling), orders/s" and not any("rule" in r for r in rows)


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
    check_outcomes(store, 10, "dataflow")  # 8 records + 2 dead letters: every event once
    with pytest.raises(RuntimeError, match=r"^dataflow: 8 records \+ 2 dead letters for 11 "):
        check_outcomes(store, 11, "dataflow")  # one lost
    with pytest.raises(RuntimeError, match=r"for 9 events$"):
        check_outcomes(store, 9, "dataflow")  # one doubled


def test_bench_scripts_finds_each_call_s_items_where_the_state_layer_puts_them() -> None:
    """The positions of the order ids (decide.lua, reserve_parts.lua) and record keys
    (emit.lua) in ARGV as state/ packs them: the replay makes exactly those new."""
    from onestock.bench.scripts import items_of
    from onestock.domain.types import order_decoder
    from state import shards, skus
    from tests.helpers import order

    orders = [
        order_decoder.decode(orjson.dumps(order(f"o{i}", ("A", 1), ("B", 2)))) for i in range(3)
    ]
    ids = [o.order_id for o in orders]
    args = skus.DecideArgs(["wh", "st"], {"wh": 1, "st": 2}, [0, 3], 0, {"pos"}, 7,
                           dict.fromkeys(ids, b"\x01\x00"), dict.fromkeys(ids, 1),
                           set(), set())  # fmt: skip
    _, argv = skus._decide_args(orders, args)
    assert [argv[p] for p in items_of("decide.lua", argv)] == ids
    parts = [skus.Part(o, ["A"], 1, False, [("wh", "A", 1), ("st", "A", 2)]) for o in orders]
    _, argv = skus._parts_args(parts, ({"st": 3}, 7))
    assert [argv[p] for p in items_of("reserve_parts.lua", argv)] == ids
    records = [f for oid in ids for f in (oid, "A", f"rec-{oid}")]
    (argv,) = shards._emit_args("5-0", records, [["6-0", "raw", "why"]], None)
    assert [argv[p] for p in items_of("emit.lua", argv)] == ids


def test_bench_scripts_against_this_checkout_answers_alike() -> None:
    """The whole bench, small, the baseline being this checkout's own Lua: every call answered
    alike on both servers (and by the control)."""
    from onestock.bench.scripts import run_bench_scripts

    lua_dir = Path(__file__).resolve().parents[1] / "state" / "lua"
    rows = run_bench_scripts(str(lua_dir), 2000, 1, "slots")
    assert {r.script for r in rows} >= {"decide.lua", "reserve_parts.lua", "emit.lua"}
    assert all(r.items > 0 and r.differing == 0 for r in rows), rows
    assert all(r.baseline_us > 0 and r.current_us > 0 for r in rows), rows


def test_bench_scripts_says_when_the_baselines_arguments_differ(tmp_path: Path) -> None:
    """A baseline whose script refuses this checkout's calls (another ARGV layout) ends the
    bench with one line saying so, not a traceback."""
    import shutil

    from onestock.bench.scripts import run_bench_scripts
    from onestock.domain.errors import OnestockError

    lua_dir = tmp_path / "lua"
    shutil.copytree(Path(__file__).resolve().parents[1] / "state" / "lua", lua_dir)
    decide = lua_dir / "decide.lua"
    decide.write_text("do return redis.error_reply('ERR decide.lua: bad order count') end\n"
                      + decide.read_text())  # fmt: skip
    with pytest.raises(OnestockError, match="baseline's decide.lua refused a call .* layout"):
        run_bench_scripts(str(lua_dir), 500, 1, "one")


def test_bench_scripts_own_calls_replays_each_sides_own_calls() -> None:
    """``--own-calls``: a revision's code drains the same orders in a subprocess of its own
    tree, and each server replays its side's calls: HEAD against this checkout (the same
    code in CI) answers alike, and so does the control."""
    from onestock.bench.scripts import run_bench_scripts

    rows = run_bench_scripts("HEAD", 1500, 1, "one", own_calls=True)
    assert {r.script for r in rows} == {"decide.lua", "decide.lua (control)", "emit.lua",
                                        "emit.lua (control)"}  # fmt: skip
    assert all(r.items > 0 and r.baseline_us > 0 and r.current_us > 0 for r in rows), rows
    assert all(r.differing == 0 for r in rows if r.script.endswith("(control)")), rows
