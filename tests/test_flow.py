"""End to end through the real ``onestock`` commands and real Bytewax runs (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from onestock import burst
from onestock.domain.settings import DEFAULT_SHARDS
from onestock.ops import services as ops
from onestock.ops.metrics import Reader
from state.server import RedisServer
from state.store import Store
from tests.conftest import ROOT, onestock

CATALOG = ROOT / "onestock" / "demo" / "catalog.json"
GARBAGE = [
    b"not json",
    b"[1,2]",
    b'{"no_id": 1}',
    b'{"order_id": 3}',
    b'{"order_id": "bad-1", "lines": 5}',
]


def burst_lines(n: int, seed: int = 3) -> list[bytes]:
    return list(burst.orders(n, burst.demo_catalog(), seed=seed, garbage=0.0))


def loaded_stock() -> dict[str, dict[str, int]]:
    return {s.sku: dict(s.stock) for s in burst.demo_catalog().skus}


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "onestock", "run", *args],
        env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def wait_for(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def outcomes(store: Store) -> int:
    return sum(store.shards.outcome_counts(store.shards.shard_count()))


def check_exactly_once(
    store: Store, order_ids: set[str], dead: int, loaded: dict[str, dict[str, int]] | None = None
) -> ops.Audit:
    """One record per order id, stock conserved against ``loaded`` (default: the demo
    catalog's), and the ops counters agreeing; returns the audit."""
    k = store.shards.shard_count()
    audit = ops.audit(store, k, loaded or loaded_stock())
    seen = [r.order_id for r in ops.records(store, k)]
    assert audit.duplicates == 0
    assert set(seen) == order_ids
    assert len(seen) == len(order_ids)
    assert audit.dead == dead
    assert audit.oversold == 0
    # the ops counters say the same, also after kill -9 and replays (counted once, in emit.lua)
    figures = Reader(store).read()
    assert figures.decided == len(order_ids) == sum(figures.received)
    assert figures.dead == dead and figures.oversold == 0
    assert figures.decisions["accepted"] == audit.accepted
    assert sum(figures.backlog) == 0
    return audit


def kill_9_twice_then_drain(
    cli_env: dict[str, str], store: Store, lines: list[bytes], kills: tuple[int, int]
) -> None:
    """Push ``lines``, SIGKILL a two-worker run once it has written each count of outcomes
    in ``kills``, then run until drained."""
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    for kill_at in kills:
        proc = start_run(cli_env, "--workers", "2")
        wait_for(lambda p=proc, k=kill_at: outcomes(store) >= k or p.poll() is not None, timeout=90)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert outcomes(store) < len(lines), "the burst drained before the kill: make it bigger"
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=180)


def test_until_drained_gives_every_event_exactly_one_outcome(
    cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = burst_lines(3000) + GARBAGE
    lines.insert(10, lines[5])  # a duplicate delivery
    # 16 shards: ~190 entries each, so each has whole stream nodes to trim
    push = ("orders", "push", "-", "--shards", "16")
    onestock(*push, input=b"\n".join(lines) + b"\n", env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    store = Store.connect(url)
    ids = {
        orjson.loads(x)["order_id"]
        for x in lines
        if x.startswith(b'{"order_id": "') or b'"D11-' in x
    }
    ids.add("bad-1")
    check_exactly_once(store, ids, dead=4)
    out = onestock("fulfilments", env=cli_env).stdout.splitlines()
    assert len(out) == len(ids)
    bad = [orjson.loads(x) for x in out if b'"bad-1"' in x][0]
    assert bad["status"] == "rejected" and bad["reason"] == "invalid" and "$.lines" in bad["detail"]
    dead = [orjson.loads(x) for x in onestock("deadletters", env=cli_env).stdout.splitlines()]
    assert sorted(d["raw"] for d in dead) == sorted(x.decode() for x in GARBAGE[:4])
    # Input is trimmed behind the outputs (whole stream nodes of <= 100 entries at a time).
    assert (
        store.shards.backlog(store.shards.shard_count())
        <= 100 * store.shards.shard_count()
        < len(lines)
    )


def forked_children(pid: int) -> list[int]:
    """The children of ``pid`` that run its own command line (forked, not exec'd)."""
    mine = Path(f"/proc/{pid}/cmdline").read_bytes()
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for kid in kids:
        try:
            if Path(f"/proc/{kid}/cmdline").read_bytes() == mine:
                out.append(int(kid))
        except OSError:
            pass
    return out


@pytest.mark.slow
def test_kill_9_mid_burst_then_resume_loses_and_duplicates_nothing(
    cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = burst_lines(40000, seed=9)
    store = Store.connect(url)
    kill_9_twice_then_drain(cli_env, store, lines, (3000, 15000))
    check_exactly_once(store, {orjson.loads(x)["order_id"] for x in lines}, dead=0)


@pytest.mark.parametrize("fork", ["0", "1"])
def test_sigterm_stops_cleanly_and_the_next_run_carries_on(
    cli_env: dict[str, str], url: str, fork: str
) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    first = burst_lines(2000, seed=4)
    onestock("orders", "push", "-", input=b"\n".join(first), env=cli_env)
    store = Store.connect(url)
    proc = start_run({**cli_env, "ONESTOCK_FORK_WORKERS": fork}, "--workers", "2")
    wait_for(lambda: outcomes(store) >= 500)
    # ONESTOCK_FORK_WORKERS=1: the workers were forked from the run's process (the dataflow
    # imported once), else fresh interpreters; the SIGTERM reaches them through it
    assert len(forked_children(proc.pid)) == (2 if fork == "1" else 0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    second = burst_lines(1000, seed=5)
    second = [x.replace(b"D11-", b"B-") for x in second]
    onestock("orders", "push", "-", input=b"\n".join(second), env=cli_env)
    onestock("run", "--until-drained", env=cli_env, timeout=120)
    ids = {orjson.loads(x)["order_id"] for x in first + second}
    check_exactly_once(store, ids, dead=0)


@pytest.mark.slow
def test_redis_restarted_under_a_running_dataflow(tmp_path: Path, home: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    env = {"ONESTOCK_REDIS_URL": server.url, "ONESTOCK_HOME": str(home)}
    try:
        onestock("catalog", "load", str(CATALOG), env=env)
        lines = burst_lines(6000, seed=6)
        onestock("orders", "push", "-", input=b"\n".join(lines[:3000]), env=env)
        store = Store.connect(server.url)
        proc = start_run(env, "--workers", "2")
        wait_for(lambda: outcomes(store) >= 3000, timeout=90)
        server.stop()  # SIGTERM: the AOF is flushed, as in a planned restart
        time.sleep(2.0)
        server.start()
        onestock("orders", "push", "-", input=b"\n".join(lines[3000:]), env=env)
        store = Store.connect(server.url)
        wait_for(lambda: outcomes(store) >= 6000, timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert "unreachable" in err and "back" in err, err
        check_exactly_once(store, {orjson.loads(x)["order_id"] for x in lines}, dead=0)
    finally:
        server.stop()


HOT_CATALOG = {
    "channels": [{"id": "tmall"}, {"id": "douyin"}],
    "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}, {"id": "st-b", "kind": "store"}],
    "skus": [{"sku": "HOT", "stock": {"wh-a": 29, "st-b": 8}}],
}


def test_four_dataflow_workers_race_on_one_hot_sku(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    path = tmp_path / "hot.json"
    path.write_bytes(orjson.dumps(HOT_CATALOG))
    onestock("catalog", "load", str(path), env=cli_env)
    orders = [
        orjson.dumps({
            "order_id": f"H-{i}", "channel": "tmall" if i % 2 else "douyin",
            "customer": {"id": f"c{i}", "lat": 30 + i % 5, "lon": 120},
            "lines": [{"sku": "HOT", "qty": 1 + i % 3}], "paid_at": "2026-11-11T00:00:00Z",
        })
        for i in range(4000)
    ]  # fmt: skip
    onestock("orders", "push", "-", input=b"\n".join(orders), env=cli_env)
    run = onestock("run", "--until-drained", "--workers", "4", env=cli_env, timeout=180)
    said = (run.stdout + run.stderr).decode()
    assert "error connecting" not in said, "a quiet start: each waits for the lower ones"
    store = Store.connect(url)
    recs = list(ops.records(store, store.shards.shard_count()))
    assert len(recs) == 4000 and len({r.order_id for r in recs}) == 4000
    sold = sum(ln.qty for r in recs for s in r.shipments for ln in s.lines)
    left = store.skus.stock_levels(["HOT"])["HOT"]
    assert sold == 37 and left == {"wh-a": 0, "st-b": 0}


def test_recovery_snapshots_hold_each_shards_read_position(
    cli_env: dict[str, str], home: Path
) -> None:
    import sqlite3

    onestock("catalog", "load", str(CATALOG), env=cli_env)
    onestock("orders", "push", "-", input=b"\n".join(burst_lines(500, seed=8)), env=cli_env)
    onestock("run", "--until-drained", env=cli_env, timeout=120)
    parts = list((home / "recovery").glob("*/part-*.sqlite3"))
    assert parts, "no recovery partitions"
    snaps = []
    for p in parts:
        with sqlite3.connect(p) as db:
            snaps += db.execute("SELECT step_id, state_key FROM snaps").fetchall()
    read = {key for step, key in snaps if step.endswith("read")}
    assert read == {str(s) for s in range(DEFAULT_SHARDS)}


EVERY_GARBAGE = [
    b"\x00\x01\x02 binary",
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b"[" * 5000 + b"]" * 5000,  # nested past any parser's depth
    b'{"order_id": "huge", "note": "' + b"x" * 1_000_000 + b'"}',  # a 1 MB invalid order
    b"null",
    b"true",
    b'"just a string"',
    b"1e999",
    b'{"order_id": NaN}',
    b'{"order_id": "tab\\tid", "channel": "tmall"}',
    b'{"order_id": ["a"]}',
    b'{"order_id": "inv-1", "lines": "many"}',
    b'{"order_id": "inv-1", "lines": "again"}',  # a second copy of an invalid order
    b'{"order_id": "vip", "channel": "tmall", "customer": {"id": "c", "vip": "yes"},'
    b' "lines": [{"sku": "TEE-M", "qty": 1}], "paid_at": "2026-11-11T00:00:00Z"}',
    b'{"type": "return", "order_id": "r-1"}',
    '{"order_id": "\u00fcn\u00efc\u00f6d\u00e9", "channel": "tmall"}'.encode(),
]


def test_every_garbage_form_ends_as_exactly_one_outcome_and_the_pipeline_goes_on(
    cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    good = burst_lines(200, seed=12)
    onestock("orders", "push", "-", input=b"\n".join(EVERY_GARBAGE + good), env=cli_env)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=120)
    store = Store.connect(url)
    recs = {r.order_id: r for r in ops.records(store, store.shards.shard_count())}
    dead = onestock("deadletters", env=cli_env).stdout.splitlines()
    invalid = {"huge", "inv-1", "vip", "\u00fcn\u00efc\u00f6d\u00e9"}
    assert invalid <= set(recs) and all(recs[i].reason == "invalid" for i in invalid)
    assert len(recs) == len(invalid) + len(good)  # the 200 good orders are all decided
    assert len(dead) == len(EVERY_GARBAGE) - 5  # inv-1's second copy adds nothing
    reasons = [orjson.loads(d)["reason"] for d in dead]
    assert all(reasons), reasons


def test_a_catalog_reload_takes_effect_under_a_running_dataflow(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    cat: dict[str, Any] = {
        "channels": [{"id": "tmall"}, {"id": "douyin"}],
        "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
        "skus": [{"sku": "HOT", "stock": {"wh-a": 5}}, {"sku": "COLD", "stock": {"wh-a": 9}}],
    }
    path = tmp_path / "cat.json"
    path.write_bytes(orjson.dumps(cat))
    onestock("catalog", "load", str(path), env=cli_env)

    def wave(prefix: str, n: int, customer: str = "c") -> bytes:
        line = {"channel": "tmall", "customer": {"id": customer},
                "lines": [{"sku": "HOT", "qty": 1}], "paid_at": "2026-11-11T00:00:00Z"}  # fmt: skip
        return b"\n".join(orjson.dumps({**line, "order_id": f"{prefix}-{i}"}) for i in range(n))

    store = Store.connect(url)
    onestock("orders", "push", "-", input=wave("a", 8), env=cli_env)
    proc = start_run(cli_env, "--workers", "2")
    try:
        wait_for(lambda: outcomes(store) >= 8)
        # restock HOT to 3 and add a limit of 2 per customer, while the dataflow runs
        cat["skus"] = [{"sku": "HOT", "stock": {"wh-a": 3}, "per_customer_limit": 2}]
        path.write_bytes(orjson.dumps(cat))
        onestock("catalog", "load", str(path), env=cli_env)
        onestock("orders", "push", "-", input=wave("b", 3, customer="c2"), env=cli_env)
        wait_for(lambda: outcomes(store) >= 11)
        # then 4 units of which douyin holds 3 (the limit gone): tmall can sell 1 more
        lock = {"channel": "douyin", "qty": 3, "until": "2026-11-12T00:00:00Z"}
        cat["skus"] = [{"sku": "HOT", "stock": {"wh-a": 4}, "channel_locks": [lock]}]
        path.write_bytes(orjson.dumps(cat))
        onestock("catalog", "load", str(path), env=cli_env)
        onestock("orders", "push", "-", input=wave("c", 3, customer="c3"), env=cli_env)
        wait_for(lambda: outcomes(store) >= 14)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    recs = {r.order_id: r for r in ops.records(store, store.shards.shard_count())}
    assert sum(r.status == "accepted" for k, r in recs.items() if k.startswith("a-")) == 5
    b = [(r.status, r.reason) for k, r in recs.items() if k.startswith("b-")]
    assert sorted(b, key=str) == [
        ("accepted", None),
        ("accepted", None),
        ("rejected", "limit_exceeded"),
    ]
    c = sorted((r.status, r.reason) for k, r in recs.items() if k.startswith("c-"))
    assert c == [("accepted", None), ("rejected", "sold_out"), ("rejected", "sold_out")]
    levels = store.skus.stock_levels(["HOT", "COLD"])
    assert levels == {"HOT": {"wh-a": 3}, "COLD": {"wh-a": 9}}  # COLD, not named, kept


@pytest.mark.parametrize("me", [0, 1])
def test_sigterm_ends_a_worker_still_waiting_for_its_peer(
    url: str, tmp_path: Path, me: int
) -> None:
    """Bytewax runs no Python while it connects to its peers: a worker whose peer is gone
    must still end on SIGTERM (it was left running for ever once, holding up a shutdown);
    worker 1 waits for worker 0 to listen before it connects (runner._await_lower)."""
    from tests.helpers import free_ports

    base = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.runner", "--url", url, "--recovery",
         str(tmp_path / "rec"), "--process-id", str(me), "--shards", "16",
         "--addresses", f"127.0.0.1:{base};127.0.0.1:{base + 1}"],  # the other never comes
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(3)  # imported, and connecting
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_two_process_cluster_started_separately_survives_kill_9_of_one(
    cli_env: dict[str, str], url: str
) -> None:
    """Two `onestock run --process-id i --addresses A;B` (as on two machines), one killed
    with SIGKILL mid-burst: the other ends too (Bytewax cannot go on without a peer), and
    both restarted resume from recovery: nothing lost, nothing duplicated."""
    from tests.helpers import free_ports

    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = burst_lines(60000, seed=14)
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    store = Store.connect(url)

    def start(i: int, addresses: str, *extra: str) -> subprocess.Popen[bytes]:
        return start_run(cli_env, "--process-id", str(i), "--addresses", addresses, *extra)

    base = free_ports(2)
    addresses = f"127.0.0.1:{base};127.0.0.1:{base + 1}"
    procs = [start(0, addresses), start(1, addresses)]
    wait_for(lambda: outcomes(store) >= 5000 or any(p.poll() is not None for p in procs), 90)
    os.killpg(procs[1].pid, signal.SIGKILL)
    procs[1].wait()
    rc = procs[0].wait(timeout=60)  # its peer is gone: it stops by itself
    assert rc != 0
    assert outcomes(store) < len(lines), "the burst drained before the kill: make it bigger"
    base = free_ports(2)
    addresses = f"127.0.0.1:{base};127.0.0.1:{base + 1}"
    procs = [start(i, addresses, "--until-drained") for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    check_exactly_once(store, {orjson.loads(x)["order_id"] for x in lines}, dead=0)
    bad = onestock("run", "--process-id", "2", "--addresses", addresses, env=cli_env, check=False)
    assert bad.returncode != 0 and "not an index of the 2 --addresses" in bad.stderr.decode()
