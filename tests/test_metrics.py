"""Ops figures: /metrics of a real `onestock serve` after a real run adds up to the records."""

from __future__ import annotations

import http.client
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from onestock import burst
from onestock.domain import meter
from onestock.domain.events import MOVEMENT_KINDS
from onestock.domain.records import packed_records
from onestock.ops import services as ops
from onestock.ops.live import Live
from onestock.ops.metrics import LE, Reader, families, quantile
from onestock.ops.top import render
from state import keys
from state.store import Store
from tests.conftest import ROOT, load, onestock
from tests.helpers import Server, free_ports
from tests.test_intake import SECRETS, SHOPIFY, shopify_headers

CATALOG = ROOT / "onestock" / "demo" / "catalog.json"
MOVEMENTS = [
    {"type": "movement", "movement_id": "GRN-1", "kind": "receipt", "location": "wh-shanghai",
     "lines": [{"sku": "TEE-M", "qty": 50}]},
    {"type": "movement", "movement_id": "GRN-1", "kind": "receipt", "location": "wh-shanghai",
     "lines": [{"sku": "TEE-M", "qty": 50}]},  # redelivered: applied once, one record
    {"type": "movement", "movement_id": "POS-1", "kind": "sale", "location": "st-hangzhou-1",
     "lines": [{"sku": "TEE-M", "qty": 10**6}]},  # below zero: refused
    {"type": "movement", "movement_id": "TR-1", "kind": "transfer", "location": "wh-shanghai",
     "to": "wh-beijing", "lines": [{"sku": "TEE-M", "qty": 3}]},
    {"type": "movement", "movement_id": "BAD-1", "kind": "teleport", "location": "wh-shanghai",
     "lines": [{"sku": "TEE-M", "qty": 3}]},  # no such kind: refused invalid
]  # fmt: skip


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics") -> Samples:
    """Samples of a Prometheus text page: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(samples: dict, name: str) -> dict[tuple[tuple[str, str], ...], float]:  # type: ignore[type-arg]
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_metrics_add_up_to_the_records_of_a_real_run(
    cli_env: dict[str, str], url: str, tmp_path: Path
) -> None:
    store = Store.connect(url)
    cat = burst.campaign_catalog(first_n=40, lateness_ms=200)
    store.load_catalog(cat, [s.sku for s in cat.skus])
    lines = list(burst.orders(3000, burst.demo_catalog(), seed=21, garbage=0.0))
    lines += [b"not json", b'{"order_id": "bad-1", "lines": 5}']
    lines.append(lines[7])  # a redelivered order: decided once
    shipped = [orjson.loads(x) for x in lines[:50]]
    first_ids = [o["order_id"] for o in shipped if o["delivery"]["mode"] == "ship"][:5]
    lines += [orjson.dumps({"type": "cancel", "order_id": oid}) for oid in first_ids]
    server = Server({**cli_env, **SECRETS})
    try:
        # through the intake: stored, a duplicate delivery, a bad signature, a non-order
        assert server.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY, "m-1"))[0] == 202
        assert server.post("/webhooks/shopify", SHOPIFY, shopify_headers(SHOPIFY, "m-1"))[0] == 200
        bad = shopify_headers(SHOPIFY, "m-2", secret="wrong")
        assert server.post("/webhooks/shopify", SHOPIFY, bad)[0] == 401
        junk = b'{"line_items": []}'
        assert server.post("/webhooks/shopify", junk, shopify_headers(junk, "m-3"))[0] == 400
        ops.push(store, lines[:-5] + [orjson.dumps(m) for m in MOVEMENTS])
        onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=180)
        ops.push(store, lines[-5:])  # cancels of orders accepted before
        onestock("run", "--until-drained", "--workers", "2", env=cli_env, timeout=180)
        time.sleep(1.5)  # the intake adds its counts to Redis every second
        m = scrape(server.port)
        live = server.get("/api/live")[2]
    finally:
        assert server.stop() == 0

    k = store.shards.shard_count()
    records = list(ops.records(store, k))
    cancelled_after = {r.order_id for r in records if r.status == "cancelled"}
    expect: Counter[tuple[tuple[str, str], ...]] = Counter()
    for r in records:
        status, reason = r.status, r.reason or ""
        if r.status == "cancelled":  # all five were accepted before their cancel came
            status = "accepted"
        expect[(("reason", reason), ("status", status))] += 1
    assert by_name(m, "onestock_decisions_total") == {k_: float(v) for k_, v in expect.items()}
    assert m[("onestock_cancellations_total", ())] == len(cancelled_after) == 5
    decided = sum(expect.values())
    assert (
        decided == len({orjson.loads(x).get("order_id") for x in lines[:-5] if x[:1] == b"{"}) + 1
    )
    # every decision is one latency observation; the histogram is cumulative and ends at +Inf
    buckets = by_name(m, "onestock_received_to_decided_seconds_bucket")
    values = [buckets[(("le", "+Inf" if b == math.inf else repr(b)),)] for b in LE]
    assert values == sorted(values) and values[-1] == decided
    assert m[("onestock_received_to_decided_seconds_count", ())] == decided
    assert m[("onestock_paid_to_decided_seconds_count", ())] == decided - 1  # bad-1: no paid_at
    assert m[("onestock_received_to_decided_seconds_sum", ())] > 0
    assert m[("onestock_dead_letters_total", ())] == 1
    written = sum(len(packed_records(f)) for f in store.shards.entries(keys.outbox, k))
    assert m[("onestock_records_total", ())] == written
    assert sum(by_name(m, "onestock_stream_backlog").values()) == 0
    assert m[("onestock_stream_trimmed_total", ())] > 0
    assert m[("onestock_oversold_units", ())] == 0
    assert m[("onestock_held_records", ())] == 0
    intake = by_name(m, "onestock_intake_requests_total")
    assert intake == {
        (("outcome", o), ("source", "shopify")): 1.0
        for o in ("stored", "duplicate", "unauthorized", "invalid")
    }
    assert m[("onestock_intake_events_total", (("source", "shopify"),))] == 1
    view = ops.gifts(store, "D11-GIFT")
    assert m[("onestock_gifts_awarded_total", (("campaign", "D11-GIFT"),))] == len(view.winners)
    assert len(view.winners) > 0
    assert m[("onestock_gift_late_orders_total", (("campaign", "D11-GIFT"),))] == view.late
    units = ops.stock_view(store)[view.gift_sku].total
    left = 0 if view.ended_early_at is not None else min(units, max(0, view.first_n - view.settled))
    assert m[("onestock_gifts_left", (("campaign", "D11-GIFT"),))] == left
    for sku, v in ops.stock_view(store).items():
        assert m[("onestock_stock_units", (("sku", sku),))] == v.total
        for channel, n in v.available.items():
            assert m[("onestock_stock_sellable_units", (("channel", channel), ("sku", sku)))] == n
    check_movements_and_feed(store, k, m, live)
    # the dashboard's JSON reads the same figures
    assert live["decided"] == decided and live["oversold"] == 0 and live["dead"] == 1


def check_movements_and_feed(store: Store, k: int, m: Samples, live: dict[str, Any]) -> None:
    """Movement records by kind (or invalid) and status, one each (a redelivery: none), as
    /metrics and the dashboard count them; transitions add up to the feed's last seq."""
    moved = Counter((r.kind if r.kind in MOVEMENT_KINDS else "invalid", r.status)
                    for r in ops.movements(store, k))  # fmt: skip
    assert moved == {("receipt", "applied"): 1, ("transfer", "applied"): 1,
                     ("sale", "refused"): 1, ("invalid", "refused"): 1}  # fmt: skip
    got = by_name(m, "onestock_movements_total")
    assert {(dict(lb)["kind"], dict(lb)["status"]): v for lb, v in got.items() if v} == moved
    assert sum(by_name(m, "onestock_availability_transitions_total").values()) == (
        store.feed.last_seq()
    )
    assert (live["movements_applied"], live["movements_refused"]) == (2, 2)
    assert live["movements"]["receipt"] == {"applied": 1, "refused": 0}


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    counts = [0] * len(LE)
    assert quantile(0.5, counts) is None
    counts[1] = 10  # ten observations in (5 ms, 10 ms]
    assert quantile(0.5, counts) == pytest.approx(0.0075)
    assert quantile(1.0, counts) == pytest.approx(0.010)
    counts[-1] = 90  # most past the last bound: the answer is that bound, as Prometheus says
    assert quantile(0.99, counts) == LE[-2]
    assert meter.bucket(5) == "a" and meter.bucket(6) == "b" and meter.bucket(10**9) == "p"
    assert meter.bucket(-3) == "a"  # a paid_at in the future counts as no wait


def test_live_view_turns_counters_into_rates_and_a_sell_out_projection(store: Store) -> None:
    from tests.helpers import decide, order

    cat = burst.demo_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    sku = cat.skus[0].sku
    units = sum(cat.skus[0].stock.values())
    live = Live(Reader(store))
    first = live.sample()
    assert first["decided"] == 0 and first["rate_1s"] == 0
    time.sleep(1.0)
    decide(store, [order(f"o{i}", (sku, 2)) for i in range(50)])
    v = live.sample()
    assert v["decided"] == 50 and v["accepted"] == 50
    assert 25 < v["rate_1s"] <= 50 / 1.0 + 1  # 50 orders over ~1 s
    row = next(s for s in v["stock"] if s["sku"] == sku)
    assert row["total"] == units - 100
    assert row["rate"] > 0 and row["sellout_s"] == pytest.approx(row["total"] / row["rate"], 0.01)
    assert v["oversold"] == 0 and v["latency"]["p50"] is not None


def test_onestock_top_prints_the_figures(cli_env: dict[str, str], url: str) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = list(burst.orders(500, burst.demo_catalog(), seed=2, garbage=0.0))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    onestock("run", "--until-drained", env=cli_env, timeout=120)
    out = onestock("top", "--frames", "2", "--interval", "0.2", env=cli_env).stdout.decode()
    assert out.count("oversold units 0") == 2
    assert "decided 500" in out and "SNEAKER-42" in out
    bad = onestock("top", "--interval", "0", env=cli_env, check=False)
    assert bad.returncode != 0 and "--interval must be > 0" in bad.stderr.decode()


def test_dataflow_api_serves_bytewax_and_worker_metrics(cli_env: dict[str, str], url: str) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = list(burst.orders(2000, burst.demo_catalog(), seed=4, garbage=0.0))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    port = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "onestock", "run", "--workers", "2", "--metrics-port", str(port)],
        env={**os.environ, **cli_env}, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        events = 0.0
        while events < 1:  # worker 0 has decided some of the burst
            assert time.monotonic() < deadline, "no worker metrics in time"
            time.sleep(0.3)
            try:
                m = scrape(port)
            except OSError:
                continue
            events = m.get(("onestock_worker_events_total", ()), 0.0)
        assert any(name.startswith("bytewax_") for name, _ in m)  # Bytewax's own metrics
        assert m[("onestock_worker_batch_seconds_count", ())] >= 1
        other = scrape(port + 1)  # worker 1, one port up
        assert ("onestock_worker_events_total", ()) in other
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with socket.socket() as taken:  # a port in use is named before the run starts
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        taken.bind(("0.0.0.0", port + 1))
        taken.listen()
        bad = onestock("run", "--metrics-port", str(port), env=cli_env, check=False)
    assert bad.returncode != 0
    assert f"port {port + 1} (worker 1) is taken" in bad.stderr.decode()


def test_serve_stops_at_once_with_a_dashboard_stream_open(
    cli_env: dict[str, str], url: str
) -> None:
    onestock("catalog", "load", str(CATALOG), env=cli_env)
    server = Server({**cli_env, **SECRETS})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
        assert resp.readline() == b"retry: 500\n"
        resp.readline()
        event = resp.readline()  # the first reading
        assert event.startswith(b"data: ") and orjson.loads(event[6:])["ok"] is True
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10, "an open event stream held up the shutdown"
    finally:
        conn.close()
        server.stop()


def test_a_batch_written_twice_is_counted_once(store: Store) -> None:
    """emit.lua counts only the records it writes: a second write of the same decided batch
    (a crash between the write and the snapshot, replayed) adds nothing."""
    from dataflows.decider import Decider
    from tests.helpers import order, raw

    cat = burst.demo_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    d = Decider(store, say=lambda _m: None)
    events = [order(f"t{i}", (cat.skus[0].sku, 1)) for i in range(20)] + [order("u", ("NOPE", 1))]
    out = d.process(0, [(f"{i + 1}-0", raw(e)) for i, e in enumerate(events)])
    d.emit(out)
    d.emit(out)
    f = Reader(store).read()
    assert f.decisions == {"accepted": 20, "rejected:unknown_sku": 1}
    assert sum(f.received) == sum(f.paid) == 21 and f.records == 21


def test_a_large_batch_written_in_parts_and_again_is_counted_once(store: Store) -> None:
    """A batch of more records than one emit.lua call takes goes in several calls; a crash
    after the first (only it written, the watermark not moved) and the replay of the whole
    batch write every record once, count it once, and move the watermark once."""
    from dataflows.decider import Decider
    from state.shards import EMIT_RECORDS
    from tests.helpers import order, raw

    cat = burst.demo_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    d = Decider(store, say=lambda _m: None)
    n = 2 * EMIT_RECORDS + 11
    events = [order(f"big{i}", (cat.skus[0].sku, 1)) for i in range(n)]
    out = d.process(0, [(f"{i + 1}-0", raw(e)) for i, e in enumerate(events)])
    assert out.meter is not None
    sum_r, n_r, sum_p, n_p, tags = out.meter
    first = out.records[: 3 * EMIT_RECORDS]
    meter = (sum_r, n_r, sum_p, n_p, tags[:EMIT_RECORDS])
    store.shards.emit(0, "-", first, [], meter)  # then a crash
    assert store.shards.watermark(0) is None
    d.emit(out)
    d.emit(out)
    f = Reader(store).read()
    assert f.records == n and f.decisions == {"accepted": n}
    assert sum(f.received) == sum(f.paid) == n
    ids = [
        p.split("\x1f")[0] for e in store.shards.entries(keys.outbox, 1) for p in packed_records(e)
    ]
    assert sorted(ids) == sorted(f"big{i}" for i in range(n))
    assert store.shards.watermark(0) == f"{n}-0"


def test_gifts_left_is_bounded_by_the_gift_units_on_hand(store: Store) -> None:
    from tests.helpers import decide, order

    cat = burst.campaign_catalog(first_n=100)
    gift = next(s for s in cat.skus if s.sku == "TOTE-BAG")
    gift.stock = {loc: 0 for loc in gift.stock} | {next(iter(gift.stock)): 3}
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    decide(store, [order("g1", (cat.campaigns[0].sku, 1))])  # one candidate, not settled yet
    (camp,) = Reader(store).read().campaigns
    assert (camp.first_n, camp.ranks, camp.gift_units, camp.left) == (100, 0, 3, 3)


def test_metrics_say_when_redis_is_away(cli_env: dict[str, str], tmp_path: Path) -> None:
    from state.server import RedisServer

    redis = RedisServer(tmp_path / "r", persistent=False).start()
    env = {**cli_env, "ONESTOCK_REDIS_URL": redis.url}
    onestock("catalog", "load", str(CATALOG), env=env)
    server = Server(env)
    try:
        assert scrape(server.port)[("onestock_redis_up", ())] == 1
        redis.stop()
        assert scrape(server.port) == {("onestock_redis_up", ()): 0.0}  # and still answers
        status, _, live = server.get("/api/live")
        assert status == 200 and live["ok"] is False and "cannot read Redis" in live["error"]
    finally:
        server.stop()
        redis.stop()


def test_a_batch_tagger_gives_each_record_its_buckets_and_status() -> None:
    """``meter.Tagger`` caches buckets and statuses per batch; every answer is the plain
    construction's: received bucket, paid bucket (or none), then the kind or R<reason>."""
    tag = meter.Tagger(now=100_000)
    cases = [
        (99_996, 99_000, "A\x1fwh-a\x1fSNEAKER\x1f1", "a" + meter.bucket(1_000) + "A"),
        (99_996, 99_000, "R\x1fsold_out", "a" + meter.bucket(1_000) + "Rsold_out"),
        (40_000, None, "R\x1finvalid\x1fpaid_at: bad", meter.bucket(60_000) + "-Rinvalid"),
        (99_990, 99_990, "C\x1fwh-a\x1fTEE\x1f2", "bbC"),
        (99_996, 99_000, "R\x1fsold_out", "a" + meter.bucket(1_000) + "Rsold_out"),  # cached
        (100_000, 100_000, "R\x1fvip_only", "aaRvip_only"),
    ]
    for received, paid, outcome, expected in cases:
        assert tag(received, paid, outcome) == expected


def test_feed_and_delivery_figures_come_from_the_publishers_and_deliverers_keys(
    store: Store,
) -> None:
    """Transitions by status (feed_publish.lua's counts), webhook deliveries per subscriber
    and outcome, retries now, lag behind the feed and the given-up ones kept: from the keys
    the publisher and the deliverer keep (written here as they write them)."""
    hook = {"secret": "whsec_" + "a" * 32, "channels": ["tmall"]}
    load(store, {
        "channels": [{"id": "tmall"}], "locations": [{"id": "wh-a"}],
        "skus": [{"sku": "A", "stock": {"wh-a": 3}}],
        "subscribers": [{"id": "up", "url": "http://127.0.0.1:9/a", **hook},
                        {"id": "down", "url": "http://127.0.0.1:9/b", **hook},
                        {"id": "new", "url": "http://127.0.0.1:9/c", **hook}],
    })  # fmt: skip
    token = store.feed.lease(None)
    assert token is not None
    store.feed.publish(token, 1, [("A", "tmall", "in_stock", 3)])
    store.feed.publish(token, 2, [("A", "tmall", "sold_out", 0)])
    store.feed.publish(token, 3, [("A", "tmall", "sold_out", 0)])  # no change: none
    store.feed.publish(token, 4, [("A", "tmall", "low_stock", 1), ("B", "tmall", "in_stock", 9)])
    assert store.feed.last_seq() == 4
    store.r.hset(keys.FEED_DELIVERY_COUNTS, mapping={
        "up:delivered": 4, "down:delivered": 1, "down:retried": 7, "down:given_up": 2,
    })  # fmt: skip
    store.r.hset(keys.FEED_DELIVERED, mapping={"up": 4, "down": 3})
    store.r.hset(keys.FEED_RETRYING, mapping={"up": 0, "down": 1})
    for seq in (2, 3):
        store.r.xadd(keys.FEED_UNDELIVERED, {"subscriber": "down", "entry": f'{{"seq": {seq}}}'})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in families(Reader(store).read())
        for s in fam.samples
    }
    status = by_name(samples, "onestock_availability_transitions_total")
    assert status == {(("status", "in_stock"),): 2, (("status", "low_stock"),): 1,
                      (("status", "sold_out"),): 1}  # fmt: skip
    deliveries = {
        (dict(lb)["subscriber"], dict(lb)["outcome"]): v
        for lb, v in by_name(samples, "onestock_webhook_deliveries_total").items()
    }
    assert deliveries == {
        ("up", "delivered"): 4, ("up", "retried"): 0, ("up", "given_up"): 0,
        ("down", "delivered"): 1, ("down", "retried"): 7, ("down", "given_up"): 2,
        ("new", "delivered"): 0, ("new", "retried"): 0, ("new", "given_up"): 0,
    }  # fmt: skip
    lag = by_name(samples, "onestock_subscriber_lag_transitions")
    assert lag == {(("subscriber", "up"),): 0, (("subscriber", "down"),): 1,
                   (("subscriber", "new"),): 4}  # fmt: skip
    retrying = by_name(samples, "onestock_webhook_retrying")
    assert retrying == {(("subscriber", s),): n for s, n in (("up", 0), ("down", 1), ("new", 0))}
    assert samples[("onestock_webhook_undelivered", ())] == 2
    # the live view and `onestock top` show the same
    v = Live(Reader(store)).sample()
    assert v["transitions"] == 4 and v["undelivered"] == 2
    assert v["deliveries"] == {"delivered": 5, "retried": 7, "given_up": 2, "retrying": 1}
    down = next(s for s in v["subscribers"] if s["id"] == "down")
    assert down == {"id": "down", "delivered": 1, "retried": 7, "given_up": 2, "retrying": 1,
                    "lag": 1}  # fmt: skip
    out = StringIO()
    Console(file=out, width=140).print(render(v))
    text = out.getvalue()
    assert "transitions 4" in text and "webhook subscribers" in text
    assert re.search(r"down\s+│\s+1\s+│\s+7\s+│\s+1\s+│\s+2\s+│\s+1", text), text


def test_transitions_published_before_they_were_counted_show_as_unknown(store: Store) -> None:
    """A feed published by a publisher that did not count by status (an older version): the
    total still adds up to the feed's last seq."""
    store.r.set(keys.FEED_SEQ, 5)
    store.r.hset(keys.FEED_COUNTS, "sold_out", 2)
    f = Reader(store).read()
    assert f.feed.transitions == {"sold_out": 2, "unknown": 3}
