"""The same code path against a real Redis Cluster: three masters on loopback ports, started
from the project's own redis-server binary (issue 8, first step)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from onestock import burst
from onestock.domain.errors import OnestockError
from onestock.ops import services as ops
from onestock.ops.metrics import Reader
from state import keys
from state.server import LocalCluster
from state.store import Store
from tests.conftest import ROOT, make_catalog
from tests.helpers import decide, order, stock


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def cstore(cluster: LocalCluster) -> Store:
    store = Store.connect(cluster.url)
    store.r.flushall()
    return store


def order_id(raw: bytes) -> str | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    oid = event.get("order_id") if isinstance(event, dict) else None
    return oid if isinstance(oid, str) else None


def owner(store: Store, slot: int) -> str:
    node = store.r.nodes_manager.get_node_from_slot(slot)  # type: ignore[union-attr]
    return str(node.name)


def test_the_url_of_one_node_is_detected_as_a_cluster(cstore: Store, cluster: LocalCluster) -> None:
    assert isinstance(cstore.r, RedisCluster)
    assert len(cstore.r.get_primaries()) == 3  # type: ignore[union-attr]
    assert cstore.layout() == keys.LAYOUT_SLOTS  # a basket across masters: slot by slot
    cstore.r.set(keys.LAYOUT, keys.LAYOUT_ONE)  # a one-server dataset moved onto the cluster
    with pytest.raises(OnestockError, match="cannot be decided on a Redis Cluster"):
        Store.connect(cluster.url).layout()


def test_a_burst_through_the_dataflow_on_the_cluster(
    cluster: LocalCluster, cstore: Store, tmp_path: Path
) -> None:
    cat = burst.demo_catalog()
    cstore.load_catalog(cat, [s.sku for s in cat.skus])
    lines = list(burst.orders(6000, cat, seed=12, garbage=0.002))
    ops.push(cstore, lines, shards=16)
    env = {**os.environ, "ONESTOCK_REDIS_URL": cluster.url, "ONESTOCK_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "onestock", "run", "--until-drained", "--workers", "2"],
        env=env, cwd=ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    k = cstore.shards.shard_count()
    ids = {oid for oid in map(order_id, lines) if oid is not None}
    records = list(ops.records(cstore, k))
    audit = ops.audit(cstore, k, {s.sku: dict(s.stock) for s in cat.skus})
    assert {r.order_id for r in records} == ids and len(records) == len(ids)
    assert audit.duplicates == 0 and audit.oversold == 0
    assert audit.dead == len(lines) - len(ids)
    f = Reader(cstore).read()
    assert f.decided == len(ids) and f.oversold == 0 and sum(f.backlog) == 0
    # the hash-tag layout: every key of one tag in one slot; the tags spread over the masters
    slots: dict[str, set[int]] = defaultdict(set)
    nodes: dict[str, set[str]] = defaultdict(set)
    for node in cstore.r.get_primaries():  # type: ignore[union-attr]
        for key in node.redis_connection.scan_iter(count=1000):
            name = key.decode()
            if "{" in name:
                tag = name[name.index("{") : name.index("}") + 1]
                slots[tag].add(key_slot(key))
                nodes[tag].add(node.name)
    assert all(len(s) == 1 for s in slots.values())
    assert all(len(n) == 1 for n in nodes.values())
    assert len({n for ns in nodes.values() for n in ns}) == 3
    sku_nodes = {owner(cstore, key_slot(keys.stock(s.sku).encode())) for s in cat.skus}
    assert len(sku_nodes) >= 2, "the demo SKUs should live on several masters"


def test_an_order_across_masters_is_all_or_nothing(cstore: Store) -> None:
    # two SKUs whose slots belong to different masters
    names = [f"SKU-{i}" for i in range(50)]
    a = names[0]
    b = next(n for n in names if owner(cstore, keys.sku_slot(n)) != owner(cstore, keys.sku_slot(a)))
    cat = {
        "channels": [{"id": "tmall"}],
        "locations": [{"id": "wh-1", "lat": 31.2, "lon": 121.5}],
        "skus": [{"sku": a, "stock": {"wh-1": 5}}, {"sku": b, "stock": {"wh-1": 2}}],
    }
    from tests.conftest import load

    load(cstore, cat)
    recs, _ = decide(cstore, [order("big", (a, 1), (b, 5))])
    assert (recs[0].status, recs[0].reason) == ("rejected", "sold_out")
    assert stock(cstore, a) == {"wh-1": 5} and stock(cstore, b) == {"wh-1": 2}
    assert cstore.r.hlen(keys.parts(a, 0)) == 0 and cstore.r.hlen(keys.parts(b, 0)) == 0
    recs, _ = decide(cstore, [order("fits", (a, 1), (b, 2)), order("late", (a, 1), (b, 1))])
    assert [r.status for r in recs] == ["accepted", "rejected"]
    assert stock(cstore, a) == {"wh-1": 4} and stock(cstore, b) == {"wh-1": 0}


def test_a_reservation_on_one_master_is_undone_when_the_other_fails(cstore: Store) -> None:
    """The compensation path across masters: plan on a stale read (another worker took B in
    between), reserve A on its master, fail on B's, give A back."""
    from dataflows.decider import Decider
    from tests.conftest import load

    names = [f"SKU-{i}" for i in range(50)]
    a = names[0]
    b = next(n for n in names if owner(cstore, keys.sku_slot(n)) != owner(cstore, keys.sku_slot(a)))
    load(cstore, {
        "channels": [{"id": "tmall"}],
        "locations": [{"id": "wh-1", "lat": 31.2, "lon": 121.5}],
        "skus": [{"sku": a, "stock": {"wh-1": 5}}, {"sku": b, "stock": {"wh-1": 2}}],
    })  # fmt: skip
    stale = cstore.skus.stock_state([a, b])
    fresh = cstore.skus.plan_state
    reads: list[object] = []

    def stale_once(skus, pairs):  # type: ignore[no-untyped-def]
        reads.append(skus)
        if len(reads) == 1:
            return {k: (dict(v[0]), v[1]) for k, v in stale.items()}, [0] * len(pairs)
        return fresh(skus, pairs)

    decide(cstore, [order("thief", (b, 2))])
    d = Decider(cstore, say=lambda _m: None)
    cstore.skus.plan_state = stale_once  # type: ignore[method-assign]
    recs, _ = decide(cstore, [order("victim", (a, 1), (b, 1))], decider=d)
    cstore.skus.plan_state = fresh  # type: ignore[method-assign]
    assert len(reads) >= 2 and (recs[0].status, recs[0].reason) == ("rejected", "sold_out")
    assert stock(cstore, a) == {"wh-1": 5}  # reserved on its master, then given back
    assert cstore.r.hlen(keys.parts(a, 0)) == 0


@pytest.mark.slow
def test_slots_moved_during_a_burst_are_followed(tmp_path: Path) -> None:
    """`redis-cli --cluster reshard` moves slots 0-2999 (two SKUs' and four shards' keys
    among them) from master to master twice while a dataflow drains a burst: MOVED/ASK are
    followed, every order gets exactly one outcome, nothing is oversold."""
    import redis

    from state.server import redis_server_binary

    cluster = LocalCluster(tmp_path / "c").start()
    try:
        store = Store.connect(cluster.url)
        cat = burst.demo_catalog()
        store.load_catalog(cat, [s.sku for s in cat.skus])
        moving = [s.sku for s in cat.skus if key_slot(keys.stock(s.sku).encode()) < 3000]
        assert moving, "some SKU's keys must be in the moved slots"
        lines = list(burst.orders(250_000, cat, seed=13, garbage=0.0))
        ops.push(store, lines, shards=16)
        ids = [redis.Redis(port=n.port).execute_command("CLUSTER", "MYID").decode()
               for n in cluster.nodes]  # fmt: skip
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        env = {**os.environ, "ONESTOCK_REDIS_URL": cluster.url, "ONESTOCK_HOME": str(tmp_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "onestock", "run", "--until-drained", "--workers", "1"],
            env=env, cwd=ROOT, stderr=subprocess.PIPE,
        )  # fmt: skip
        for src, dst in ((0, 1), (1, 2)):
            moved = subprocess.run(
                [cli, "--cluster", "reshard", f"127.0.0.1:{cluster.nodes[0].port}",
                 "--cluster-from", ids[src], "--cluster-to", ids[dst],
                 "--cluster-slots", "3000", "--cluster-yes"],
                capture_output=True, timeout=120,
            )  # fmt: skip
            assert moved.returncode == 0, moved.stderr.decode()[-1000:]
            assert proc.poll() is None, "the burst ended before the slots moved: make it bigger"
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        node2 = f"127.0.0.1:{cluster.nodes[2].port}"
        fresh = Store.connect(cluster.url)
        assert all(owner(fresh, keys.sku_slot(sku)) == node2 for sku in moving)
        k = fresh.shards.shard_count()
        records = list(ops.records(fresh, k))
        audit = ops.audit(fresh, k, {s.sku: dict(s.stock) for s in cat.skus})
        assert len(records) == len({r.order_id for r in records}) == len(lines)
        assert audit.duplicates == 0 and audit.oversold == 0
    finally:
        cluster.stop()


def test_bench_scale_drains_against_one_server_and_a_cluster(tmp_path: Path) -> None:
    from tests.conftest import onestock

    out = tmp_path / "scale.json"
    proc = onestock("bench-scale", "--orders", "3000", "--workers", "1,2", "--masters", "1,3",
                    "--buckets", "1,3", "--out", str(out), timeout=300)  # fmt: skip
    points = orjson.loads(out.read_bytes())
    assert [(p["masters"], p["buckets"], p["workers"]) for p in points] == [
        (m, b, w) for m in (1, 3) for b in (1, 3) for w in (1, 2)
    ]
    assert all(p["orders_per_s"] > 0 for p in points)
    assert all(0 < p["start_s"] < 60 for p in points)  # launch -> first decision
    assert [p["efficiency"] for p in points][::2] == [1.0] * 4
    # one server does all the script work; on three masters, no one does all of it
    assert all(p["busiest_master"] == 1.0 for p in points if p["masters"] == 1)
    assert all(p["busiest_master"] < 1.0 for p in points if p["masters"] == 3)
    assert b"orders/s" in proc.stdout


def test_a_hot_skus_buckets_spread_over_masters_and_sell_out_exactly(cstore: Store) -> None:
    from tests.test_buckets import catalog

    cat = make_catalog(catalog({"wh-a": 60}))
    cstore.load_catalog(cat, [s.sku for s in cat.skus])
    names = [keys.bucket("HOT", b) for b in range(4)]
    assert len({owner(cstore, key_slot(keys.stock(n).encode())) for n in names}) >= 2
    accepted = 0
    for shard in range(8):  # bucket shard % 4; the later shards' buckets borrow across masters
        events = [order(f"s{shard}-{i}", ("HOT", 1), lat=31.2, lon=121.5) for i in range(10)]
        recs, _ = decide(cstore, events, shard)
        accepted += sum(r.status == "accepted" for r in recs)
    assert accepted == 60
    assert ops.stock_view(cstore, "HOT")["HOT"].total == 0
    assert all(q == 0 for n in names for q in stock(cstore, n).values())


def test_a_cluster_whose_bus_port_was_taken_starts_on_other_ports(tmp_path: Path) -> None:
    import socket

    cluster = LocalCluster(tmp_path / "c")
    taken = cluster.nodes[1].port + 10000  # another process took a bus port since the pick
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        cluster.start()
    try:
        assert all(n.port + 10000 != taken for n in cluster.nodes)
        assert RedisCluster.from_url(cluster.url).ping()
    finally:
        cluster.stop()
