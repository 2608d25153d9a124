"""Available to sell, per channel: ``GET /availability`` of a real ``onestock serve`` and
``onestock availability``, against real Redis, judged as the deciders judge (safety stock,
other channels' active locks, hot-SKU buckets)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from onestock.ops import availability, availability_http, services
from state import keys
from state.server import RedisServer
from state.store import Store
from tests.conftest import have, load, onestock
from tests.helpers import Server, decide, order

FUTURE, PAST = "2099-01-01T00:00:00Z", "2020-01-01T00:00:00Z"
CHANNELS = [{"id": "tmall"}, {"id": "douyin"}, {"id": "pos", "kind": "store"}]
ONLINE = {"tmall": True, "douyin": True, "pos": False}
LOCATIONS = [
    {"id": "wh-a", "lat": 31.2, "lon": 121.5},
    {"id": "wh-c", "lat": 39.9, "lon": 116.4},
    {"id": "st-b", "kind": "store", "lat": 30.3, "lon": 120.2, "pickup": True, "safety_stock": 2},
]
SAFETY = {"st-b": 2}


def catalog(
    until: str = FUTURE, stock: dict[str, dict[str, int]] | None = None, lock: int = 4,
    low: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """A: safety stock at st-b, ``lock`` units locked for douyin until ``until``, low at
    ``low``; B: 2 units, low at ``low``; C: none; HOT: split into 3 buckets (``stock``: other
    stock per SKU)."""
    stock = stock or {}
    return {
        "channels": CHANNELS,
        "locations": LOCATIONS,
        "skus": [
            {"sku": "A", "stock": stock.get("A", {"wh-a": 10, "st-b": 3}),
             "low_stock_threshold": low,
             "channel_locks": [{"channel": "douyin", "qty": lock, "until": until}]},
            {"sku": "B", "stock": stock.get("B", {"wh-a": 2}), "low_stock_threshold": low},
            {"sku": "C", "stock": stock.get("C", {"wh-a": 0})},
            {"sku": "HOT", "stock": stock.get("HOT", {"wh-a": 9, "st-b": 3}), "buckets": 3},
        ],
    }  # fmt: skip


def figures(doc: dict[str, Any], channel: str) -> dict[str, tuple[int, str]]:
    part = doc if "channel" in doc else doc["channels"][channel]
    return {sku: (f["available"], f["status"]) for sku, f in part["skus"].items()}


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `onestock serve` on the session's Redis (each test's ``url`` empties it first)."""
    home = tmp_path_factory.mktemp("home")
    s = Server({"ONESTOCK_REDIS_URL": redis_server.url, "ONESTOCK_HOME": str(home)})
    yield s
    s.stop()


def get(server: Server, query: str, etag: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"If-None-Match": etag} if etag else {}
    return server.request("GET", f"/availability?{query}", headers=headers)


# -- the figures -------------------------------------------------------------------------------


def test_status_is_sold_out_at_0_low_at_or_below_the_threshold_else_in_stock() -> None:
    status = availability.status
    assert [status(0, 5), status(-1, None), status(5, 5), status(1, 0), status(6, 5)] == [
        "sold_out", "sold_out", "low_stock", "in_stock", "in_stock",
    ]  # fmt: skip
    assert status(3, None) == "in_stock"  # no threshold: never low


def test_safety_stock_and_another_channels_active_lock_are_not_for_sale(store: Store) -> None:
    load(store, catalog())
    doc = availability.read(store)
    # A: 13 units, 2 of them safety stock (st-b), 4 locked for douyin
    assert figures(doc, "tmall")["A"] == (9, "in_stock")  # min(13 - 2, 13 - 4)
    assert figures(doc, "douyin")["A"] == (11, "in_stock")  # min(13 - 2, 13 - 4 + 4)
    assert figures(doc, "pos")["A"] == (9, "in_stock")  # a store channel takes safety stock
    assert figures(doc, "tmall")["B"] == (2, "low_stock")
    assert figures(doc, "pos")["C"] == (0, "sold_out")
    # the same arithmetic behind `onestock stock`
    assert services.stock_view(store, "A")["A"].available == {"tmall": 9, "douyin": 11, "pos": 9}


def test_a_lock_that_has_ended_or_is_used_up_is_no_longer_counted(store: Store) -> None:
    load(store, catalog(until=PAST))
    assert figures(availability.read(store), "tmall")["A"] == (11, "in_stock")
    assert figures(availability.read(store), "pos")["A"] == (13, "in_stock")
    load(store, catalog())  # active again; judged at a time after its end, it is gone
    later = int(time.time() * 1000) + 100 * 365 * 86400 * 1000
    assert figures(availability.read(store, at_ms=later), "tmall")["A"] == (11, "in_stock")
    # douyin draws its 4 units from the lock: nothing is held for it any more
    recs, _ = decide(store, [order("d1", ("A", 4), channel="douyin", lat=31.2, lon=121.5)])
    assert recs[0].status == "accepted"
    doc = availability.read(store)
    assert figures(doc, "tmall")["A"] == (7, "in_stock")  # 9 units, 2 of them safety stock
    assert figures(doc, "pos")["A"] == (9, "in_stock")


def test_a_bucketed_sku_counts_every_bucket_and_units_in_flight(store: Store) -> None:
    load(store, catalog())
    # 12 units over 3 buckets; st-b's 3 stay whole in bucket 0 with its floor of 2
    assert [figures(availability.read(store), c)["HOT"][0] for c in ONLINE] == [10, 10, 12]
    lender = keys.bucket("HOT", 2)  # a transfer cut in half by a crash: lent, not received
    got = store.buckets._lend(
        keys=[keys.stock(lender), keys.lent(lender)],
        args=["t1.2", 0, "all", int(store.r.get(keys.CATALOG_VERSION)), "wh-a", 0],  # type: ignore[arg-type]
    )
    assert got == [b"wh-a", 3]
    assert figures(availability.read(store), "tmall")["HOT"] == (10, "in_stock")
    assert services.stock_view(store, "HOT")["HOT"].locations == {"wh-a": 9, "st-b": 3}
    # units lent by bucket 0 above its floor are anyone's in the bucket that has them
    recs, _ = decide(store, [order(f"h{i}", ("HOT", 1), lat=31.2, lon=121.5) for i in range(9)])
    assert [r.status for r in recs] == ["accepted"] * 9
    assert [figures(availability.read(store), c)["HOT"][0] for c in ONLINE] == [1, 1, 3]


# -- GET /availability -------------------------------------------------------------------------


def test_the_document_for_one_channel_and_for_every_channel(store: Store, server: Server) -> None:
    load(store, catalog())
    status, headers, one = get(server, "channel=tmall&skus=A,B,NOPE,C")
    assert status == 200 and headers["content-type"] == "application/json"
    assert one == {
        "channel": "tmall",
        "skus": {
            "A": {"available": 9, "status": "in_stock"},
            "B": {"available": 2, "status": "low_stock"},
            "C": {"available": 0, "status": "sold_out"},
        },
    }  # fmt: skip (NOPE, not in the catalog, is left out)
    status, _, every = get(server, "sku=A&sku=HOT")  # repeated sku= too
    assert status == 200 and list(every) == ["channels"] and list(every["channels"]) == list(ONLINE)
    assert every["channels"]["douyin"]["skus"] == {
        "A": {"available": 11, "status": "in_stock"}, "HOT": {"available": 10, "status": "in_stock"}
    }  # fmt: skip
    assert every == availability.read(store, None, ["A", "HOT"])
    # without skus=: every catalog SKU
    assert list(get(server, "channel=pos")[2]["skus"]) == ["A", "B", "C", "HOT"]
    assert get(server, "channel=pos&skus=NOPE")[2] == {"channel": "pos", "skus": {}}


def test_an_unknown_channel_is_404_and_a_bad_query_400(store: Store, server: Server) -> None:
    load(store, catalog())
    assert get(server, "channel=nope&skus=A")[::2] == (404, {"error": "unknown channel 'nope'"})
    too_many = ",".join(f"S{i}" for i in range(availability_http.MAX_SKUS + 1))
    assert get(server, f"skus={too_many}")[::2] == (
        400, {"error": f"at most {availability_http.MAX_SKUS} SKUs per request, not 1001"}
    )  # fmt: skip
    assert get(server, "skus=" + ",".join(f"S{i}" for i in range(1000)))[0] == 200
    assert get(server, "chanel=tmall")[::2] == (
        400, {"error": "unknown query parameter 'chanel' (channel, skus, sku)"}
    )  # fmt: skip
    assert get(server, "skus=")[0] == 400
    assert get(server, "channel=tmall&channel=pos")[0] == 400
    assert server.request("POST", "/availability")[0] == 405


def test_no_catalog_is_503(url: str, server: Server) -> None:
    status, _, body = get(server, "channel=tmall")
    assert status == 503 and "no catalog loaded" in body["error"]


def test_etag_answers_304_until_a_decision_changes_the_figures(
    store: Store, server: Server
) -> None:
    load(store, catalog())
    status, headers, body = get(server, "channel=tmall&skus=A,B")
    etag = headers["etag"]
    assert status == 200 and etag.startswith('"') and len(etag) == 18
    assert headers["cache-control"] == "no-cache"
    status, again, nothing = get(server, "channel=tmall&skus=A,B", etag)
    assert (status, again["etag"], again["cache-control"], nothing) == (304, etag, "no-cache", None)
    assert get(server, "channel=tmall&skus=A,B", f'"other", W/{etag}')[0] == 304
    assert get(server, "channel=tmall&skus=B,A", etag)[0] == 200  # another body, another tag
    # a decision on another channel's SKU that changes nothing tmall sees: still 304
    decide(store, [order("p1", ("C", 1), channel="pos")])
    assert get(server, "channel=tmall&skus=A,B", etag)[0] == 304
    decide(store, [order("t1", ("A", 1), channel="tmall", lat=31.2, lon=121.5)])
    status, headers, body = get(server, "channel=tmall&skus=A,B", etag)
    assert status == 200 and headers["etag"] != etag and body["skus"]["A"]["available"] == 8


def test_a_reloaded_catalog_is_read_again(store: Store, server: Server) -> None:
    load(store, catalog())
    assert get(server, "channel=tmall&skus=B")[2]["skus"]["B"]["status"] == "low_stock"
    load(store, catalog(stock={"B": {"wh-a": 20}}))
    assert get(server, "channel=tmall&skus=B")[2]["skus"]["B"] == {
        "available": 20, "status": "in_stock"
    }  # fmt: skip
    store.r.flushall()  # the same version again, another catalog
    load(store, {"channels": [{"id": "jd"}], "locations": LOCATIONS[:1],
                 "skus": [{"sku": "B", "stock": {"wh-a": 1}}]})  # fmt: skip
    assert get(server, "channel=jd&skus=B")[2] == {
        "channel": "jd", "skus": {"B": {"available": 1, "status": "in_stock"}}
    }  # fmt: skip


def test_redis_away_is_503_and_a_restarted_redis_is_read_again(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", persistent=True).start()
    s = Server({"ONESTOCK_REDIS_URL": redis.url, "ONESTOCK_HOME": str(tmp_path / "home")})
    try:
        load(Store.connect(redis.url), catalog())
        assert get(s, "channel=tmall&skus=A")[0] == 200
        redis.stop()
        status, headers, body = get(s, "channel=tmall&skus=A")
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"].startswith("Redis is unreachable")
        redis.start()  # (its AOF kept the catalog and the stock)
        assert get(s, "channel=tmall&skus=A")[2]["skus"]["A"]["available"] == 9
    finally:
        s.stop()
        redis.stop()


# -- equal to a plain model after random histories ---------------------------------------------

RANDOM_SKUS = {
    "A": {"wh-a": 150, "st-b": 8},
    "B": {"wh-a": 40, "wh-c": 20},
    "C": {"wh-c": 90, "st-b": 4},
    "HOT": {"wh-a": 200, "wh-c": 100},  # bucketed: no safety-stock location (see plain_model)
}
RANDOM_LOCK, RANDOM_LOW = 30, 25  # units of A locked for douyin; A's and B's threshold


def random_orders(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        skus = rnd.sample(list(RANDOM_SKUS), rnd.choice([1, 1, 2]))
        lines = [(sku, rnd.randint(1, 3)) for sku in skus]
        channel = rnd.choice(list(ONLINE))
        pickup = "st-b" if rnd.random() < 0.15 else None
        out.append(order(f"r{seed}-{i}", *lines, channel=channel, pickup=pickup,
                         lat=rnd.choice([31.2, 39.9, 30.3]), lon=121.0))  # fmt: skip
    return out


def plain_model(store: Store, shards: int) -> dict[str, Any]:
    """What each channel may sell, from the loaded stock, the accepted records and the
    contract's rules alone: units = loaded - shipped; online channels leave each location's
    safety stock; the others leave douyin's lock on A its RANDOM_LOCK units less what douyin's
    accepted orders took of A (it draws from its lock first)."""
    shipped: Counter[tuple[str, str]] = Counter()
    douyin_a = 0
    for rec in services.records(store, shards):
        for ship in rec.shipments if rec.status == "accepted" else []:
            for ln in ship.lines:
                shipped[(ln.sku, ship.location)] += ln.qty
                douyin_a += ln.qty if (rec.channel, ln.sku) == ("douyin", "A") else 0
    docs: dict[str, Any] = {c: {"skus": {}} for c in ONLINE}
    for sku, loaded in RANDOM_SKUS.items():
        left = {loc: q - shipped[(sku, loc)] for loc, q in loaded.items()}
        units = sum(q for q in left.values() if q > 0)
        held = sum(min(q, SAFETY.get(loc, 0)) for loc, q in left.items() if q > 0)
        lock = max(0, RANDOM_LOCK - douyin_a) if sku == "A" else 0
        for channel, online in ONLINE.items():
            others = 0 if channel == "douyin" else lock
            n = max(0, min(units - held if online else units, units - others))
            low = RANDOM_LOW if sku in ("A", "B") else None
            status = "sold_out" if n == 0 else "low_stock" if low and n <= low else "in_stock"
            docs[channel]["skus"][sku] = {"available": n, "status": status}
    return {"channels": docs}


def test_equal_to_a_plain_model_after_random_orders(store: Store, server: Server) -> None:
    load(store, catalog(stock=RANDOM_SKUS, lock=RANDOM_LOCK, low=RANDOM_LOW))
    seen: set[str] = set()
    for batch in range(6):
        decide(store, random_orders(40, seed=batch), shard=batch % 2)
        expected = plain_model(store, 2)
        assert get(server, "")[2] == expected, f"after batch {batch}"
        seen |= {f["status"] for c in expected["channels"].values() for f in c["skus"].values()}
    assert seen == {"in_stock", "low_stock", "sold_out"}


def test_equal_to_a_plain_model_after_a_dataflow_run(
    store: Store, server: Server, cli_env: dict[str, str]
) -> None:
    load(store, catalog(stock=RANDOM_SKUS, lock=RANDOM_LOCK, low=RANDOM_LOW))
    services.push(store, (orjson.dumps(o) for o in random_orders(300, seed=19)), shards=4)
    onestock("run", "--until-drained", "--workers", "2", env=cli_env)
    expected = plain_model(store, 4)
    figures = [f["available"] for c in expected["channels"].values() for f in c["skus"].values()]
    assert 0 in figures and max(figures) > 0
    assert get(server, "")[2] == expected
    assert orjson.loads(onestock("availability", "--json", env=cli_env).stdout) == expected


# -- the command line --------------------------------------------------------------------------


def test_cli_prints_the_figures_as_a_table_and_as_the_endpoints_json(
    store: Store, server: Server, cli_env: dict[str, str]
) -> None:
    load(store, catalog())
    out = onestock("availability", "--channel", "tmall", "--sku", "A", "--sku", "B",
                   "--json", env=cli_env).stdout  # fmt: skip
    status, _, body = get(server, "channel=tmall&skus=" + quote("A,B"))
    assert status == 200 and out == orjson.dumps(body) + b"\n"
    table = onestock("availability", "--sku", "B", env=cli_env).stdout.decode()
    rows = [line.split("│")[1:-1] for line in table.splitlines() if "│ B " in line]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["B", c, "2", "low_stock"] for c in ONLINE
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--channel", "nope"], "onestock: error: unknown channel 'nope'"),
        (["--sku", "A", "--sku", "NOPE"], "onestock: error: unknown SKU 'NOPE'"),
    ],
)
def test_cli_unknown_channel_or_sku_is_an_error(
    store: Store, cli_env: dict[str, str], args: list[str], error: str
) -> None:
    load(store, catalog())
    proc = onestock("availability", *args, env=cli_env, check=False)
    assert proc.returncode == 2 and proc.stderr.decode().strip() == error


def test_cli_without_a_catalog_says_so(url: str, cli_env: dict[str, str]) -> None:
    proc = onestock("availability", env=cli_env, check=False)
    assert proc.returncode == 2 and "no catalog loaded" in proc.stderr.decode()


# -- the benchmark -----------------------------------------------------------------------------


def test_the_benchmark_measures_and_checks_what_it_was_served(tmp_path: Path) -> None:
    if not have("wrk") and os.geteuid() != 0:
        pytest.skip("onestock bench-availability needs wrk: apt-get install wrk")
    out = tmp_path / "figures.json"
    onestock("bench-availability", "--skus", "300", "--per-request", "20", "--rate", "400",
             "--seconds", "1", "--orders", "20000", "--workers", "1", "--connections", "2",
             "--replica", "--nice", "10", "--out", str(out), timeout=300)  # fmt: skip
    figs = orjson.loads(out.read_bytes())
    assert figs["checked"] == 50 and figs["cores"] >= 1
    names = [w["name"] for w in figs["windows"]]
    burst = ["no reads", "open loop", "open loop, replica", "closed loop", "closed loop, replica"]
    assert names == [
        "idle: closed loop", "idle: open loop", "idle: open loop, replica",
        *(f"burst{', ' if w == 'no reads' else ': '}{w}" for w in burst),
        *(f"burst, dataflow at nice 10{', ' if w == 'no reads' else ': '}{w}" for w in burst),
    ]  # fmt: skip
    assert all(w["errors"] == 0 for w in figs["windows"])
    opened = [w for w in figs["windows"] if "open loop" in w["name"]]
    assert all(w["p99_ms"] > 0 and w["sku_reads_per_s"] > 300 for w in opened)
    assert all(w["decisions_per_s"] is not None for w in figs["windows"][3:])
