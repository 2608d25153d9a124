"""docker/: the Prometheus scrape config and the provisioned Grafana dashboard fit the metrics
onestock really serves (no Docker engine here: the files are checked, not run)."""

from __future__ import annotations

import json
import re

import promql_parser
import yaml

from dataflows.flow import BATCH_EVENTS, BATCH_SECONDS
from onestock import burst
from onestock.metrics import Reader, families
from state.store import Store
from tests.conftest import ROOT
from tests.helpers import decide, order

DOCKER = ROOT / "docker"
NAMES = re.compile(r"\b(?:onestock|bytewax)_[a-z_]+\b")


def served_names(store: Store) -> set[str]:
    """Every sample name /metrics and a dataflow worker's API serve, from a real reading."""
    cat = burst.campaign_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shard_count(16)
    store.r.hset("os:intake:counts", mapping={"r:shopify:stored": 1, "e:shopify": 1})
    decide(store, [order("m1", (cat.skus[0].sku, 1))])  # labelled series appear once counted
    names = {s.name for fam in families(Reader(store).read()) for s in fam.samples}
    for metric in (BATCH_SECONDS, BATCH_EVENTS):
        names |= {s.name for fam in metric.collect() for s in fam.samples}
    return names


def test_prometheus_scrapes_serve_and_every_dataflow_worker() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"onestock", "bytewax"}
    assert all(j["metrics_path"] == "/metrics" for j in jobs.values())
    # serve's default port, and worker i of `onestock run --metrics-port 3030` on 3030 + i
    assert jobs["onestock"]["static_configs"][0]["targets"] == ["intake:8080"]
    assert jobs["bytewax"]["static_configs"][0]["targets"] == ["dataflow:3030", "dataflow:3031"]


def test_grafana_dashboard_queries_only_metrics_onestock_serves(store: Store) -> None:
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "onestock.json").read_text())
    source = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "onestock.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    served = served_names(store)
    ids, used = set(), set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            expr = target["expr"]
            promql_parser.parse(expr)  # raises on a syntax error
            for name in NAMES.findall(expr):
                assert name in served, f"panel {panel['title']!r} queries {name}, never served"
                used.add(name)
    # the figures the issue names are all on the dashboard
    for name in ("onestock_decisions_total", "onestock_received_to_decided_seconds_bucket",
                 "onestock_paid_to_decided_seconds_bucket", "onestock_intake_requests_total",
                 "onestock_stock_sellable_units", "onestock_gifts_left", "onestock_stream_backlog",
                 "onestock_stream_trimmed_total", "onestock_dead_letters_total",
                 "onestock_gift_late_orders_total", "onestock_oversold_units"):  # fmt: skip
        assert name in used, name
