"""docker/: the Prometheus scrape config and the provisioned Grafana dashboard fit the metrics
onestock really serves (no Docker engine here: the files are checked, not run)."""

from __future__ import annotations

import json
import re

import jsonschema
import promql_parser
import pytest
import yaml

import dev
from dataflows.flow import BATCH_EVENTS, BATCH_SECONDS
from onestock import burst
from onestock.ops.metrics import Reader, families
from state import keys
from state.store import Store
from tests.conftest import ROOT
from tests.helpers import decide, order

DOCKER = ROOT / "docker"
NAMES = re.compile(r"\b(?:onestock|bytewax)_[a-z_]+\b")


def served_names(store: Store) -> set[str]:
    """Every sample name /metrics and a dataflow worker's API serve, from a real reading."""
    cat = burst.campaign_catalog()
    store.load_catalog(cat, [s.sku for s in cat.skus])
    store.shards.shard_count(16)
    store.r.hset(keys.INTAKE_COUNTS, mapping={"r:shopify:stored": 1, "e:shopify": 1})
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


# -- the image and compose.yaml (no Docker engine here: checked against the Compose schema) ----


@pytest.fixture(scope="session")
def compose_schema() -> dict:  # type: ignore[type-arg]
    """The Compose Specification's JSON schema, from Docker's own published package (fetched
    once from PyPI by `python3 dev.py setup`; nothing third-party is committed)."""
    if not dev.COMPOSE_SCHEMA.exists():
        pytest.fail(f"no Compose schema at {dev.COMPOSE_SCHEMA}: `python3 dev.py setup` fetches it",
                    pytrace=False)  # fmt: skip
    return json.loads(dev.COMPOSE_SCHEMA.read_text())  # type: ignore[no-any-return]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_file_is_valid_against_the_compose_schema(compose_schema: dict) -> None:  # type: ignore[type-arg]
    check = jsonschema.Draft201909Validator(compose_schema)  # its "$schema" says 2019-09
    check.validate(compose())
    broken = {**compose(), "services": {"intake": {"image": "x", "ports": [{"nope": 1}]}}}
    with pytest.raises(jsonschema.ValidationError):  # the check does reject a wrong file
        check.validate(broken)


def test_compose_runs_what_the_monitoring_expects() -> None:
    doc = compose()
    services = doc["services"]
    wanted = {"redis", "catalog", "intake", "dataflow", "prometheus", "grafana",
              "redis-node-1", "redis-node-2", "redis-node-3", "redis-cluster-init",
              "locust-master", "locust-worker"}  # fmt: skip
    assert set(services) == wanted
    assert (
        services["intake"]["command"][:1] == ["serve"]
        and "8080:8080" in services["intake"]["ports"]
    )
    assert "--metrics-port" in services["dataflow"]["command"]
    assert (
        services["dataflow"]["command"][services["dataflow"]["command"].index("--metrics-port") + 1]
        == "3030"
    )
    for name in ("redis-node-1", "redis-cluster-init"):
        assert services[name]["profiles"] == ["cluster"]
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["loadtest"]
        assert (ROOT / services[name]["command"][1].removeprefix("/app/")).exists()
    # every file mounted from the repository exists
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), src
        build = svc.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).exists()


def test_dockerfile_is_slim_pinned_and_non_root() -> None:
    lines = [ln.strip() for ln in (DOCKER / "Dockerfile").read_text().splitlines()]
    base = next(ln for ln in lines if ln.startswith("FROM "))
    assert re.fullmatch(r"FROM python:3\.1[12]\.\d+-slim-bookworm", base), base
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] != "USER root" and not user[-1].startswith("USER 0")
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
    assert any("--constraint docker/constraints.txt" in ln for ln in lines)
    pins = [ln for ln in (DOCKER / "constraints.txt").read_text().splitlines()
            if ln and not ln.startswith("#")]  # fmt: skip
    assert pins and all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", p) for p in pins)
    pinned = {p.split("==")[0] for p in pins}
    assert {"bytewax", "redis", "locust", "uvicorn", "prometheus-client", "plotly"} <= pinned
    assert dict(p.split("==") for p in pins)["bytewax"] == "0.21.1"
