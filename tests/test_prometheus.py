"""A real Prometheus (Debian's package) scrapes a running `onestock serve` with a bearer token,
and the alerting rules of docker/prometheus/ pass `promtool test rules`."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from onestock.ops import services as ops
from onestock.ops.metrics import Reader, families
from state import keys
from state.store import Store
from tests.conftest import ROOT, load, onestock
from tests.helpers import Server, decide, free_port, order

PROMETHEUS = ROOT / "docker" / "prometheus"
NAMES = re.compile(r"\bonestock_[a-z_]+\b")
NOT_INSTALLED = (
    "Debian's prometheus package is not installed (`python3 dev.py setup` installs it when "
    "run as root; CI runs as root)"
)
TOKEN = "prometheus-" + "s" * 20
CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall"}],
    "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
    "skus": [{"sku": "A", "stock": {"wh-a": 5}, "low_stock_threshold": 2}],
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name}: {NOT_INSTALLED}")
    return found


# -- the rules, with promtool ------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],  # its rule_files find alerts.yml
    ):
        got = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True)
        assert got.returncode == 0, f"promtool {' '.join(args)}:\n{got.stdout}{got.stderr}"
    tested = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    names = {t["alertname"] for test in tested for t in test["alert_rule_test"]}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    assert names == {r["alert"] for r in rules}, "every alert has its unit test"
    # ... each shown firing and not firing
    for alert in names:
        cases = [t for test in tested for t in test["alert_rule_test"] if t["alertname"] == alert]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases)


def test_alert_rules_name_only_metrics_onestock_serves(store: Store) -> None:
    cat = load(store, {**CATALOG, "subscribers": [subscriber("http://127.0.0.1:9/")]})
    store.shards.shard_count(16)
    decide(store, [order("o1", ("A", 1))])
    store.r.set(keys.FEED_SEQ, 3)
    store.r.hset(keys.FEED_DELIVERY_COUNTS, "tmall-sync:delivered", 2)
    served = {s.name for fam in families(Reader(store).read()) for s in fam.samples}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        for name in NAMES.findall(rule["expr"]):
            assert name in served, f"{rule['alert']} names {name}, never served"
    assert cat.subscribers[0].id == "tmall-sync"


# -- a real Prometheus scraping a real `onestock serve` ----------------------------------


def subscriber(url: str) -> dict[str, Any]:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    return {"id": "tmall-sync", "url": url, "secret": secret, "channels": ["tmall"]}


class Receiver:
    """A subscriber's endpoint that answers 503 to its first ``failures`` requests, then 2xx."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.answered: list[tuple[int, dict[str, Any]]] = []  # (status, body)
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    status = 503 if outer.failures > 0 else 204
                    outer.failures -= status == 503
                    outer.answered.append((status, body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class Prometheus:
    """Debian's prometheus with its own config and storage in ``tmp``, scraping every second."""

    def __init__(self, tmp: Path, scrape_port: int) -> None:
        target = {"targets": [f"127.0.0.1:{scrape_port}"]}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "onestock", "static_configs": [target],
                 "authorization": {"type": "Bearer", "credentials": TOKEN}},
                {"job_name": "no-token", "static_configs": [target]},
            ],
        }  # fmt: skip
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait(lambda: self.get("/-/ready") is not None, "Prometheus did not get ready")

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                body = r.read()
        except OSError:
            return None
        return orjson.loads(body) if body[:1] == b"{" else body

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's answer: the labels of each series (no __name__) -> value."""
        got = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert got is not None and got["status"] == "success", got
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
                r["value"][1]
            )
            for r in got["data"]["result"]
        }

    def wait(self, ok: Any, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = Path(self.log.name).read_text()[-3000:]
                raise AssertionError(f"{what}; its log:\n{log}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


def test_a_real_prometheus_scrapes_serve_with_a_bearer_token(
    cli_env: dict[str, str], url: str, tmp_path: Path, receiver: Receiver
) -> None:
    tool("prometheus")
    store = Store.connect(url)
    load(store, {**CATALOG, "subscribers": [subscriber(receiver.url)]})
    tokens = {"prometheus": {"token": TOKEN, "scopes": ["metrics"]}}
    env = {**cli_env, "ONESTOCK_OPS_TOKENS": orjson.dumps(tokens).decode(),
           "ONESTOCK_DELIVERY_BACKOFF_S": "0.05"}  # fmt: skip
    server = Server(env)
    prom = None
    try:
        assert server.get("/metrics")[0] == 401  # no token: nothing
        (tmp_path / "prom").mkdir()
        prom = Prometheus(tmp_path / "prom", server.port)
        # a small real run: 8 orders of 5 units, then a receipt of 10 (the feed and its
        # deliveries run beside the dataflow: sold out, then back in stock)
        ops.push(store, [orjson.dumps(order(f"o{i}", ("A", 1))) for i in range(8)])
        onestock("run", "--until-drained", env=env, timeout=180)
        receipt = {"type": "movement", "movement_id": "GRN-1", "kind": "receipt",
                   "location": "wh-a", "lines": [{"sku": "A", "qty": 10}]}  # fmt: skip
        ops.push(store, [orjson.dumps(receipt)])
        onestock("run", "--until-drained", env=env, timeout=180)
        seq = store.feed.last_seq()
        assert seq >= 2  # at least sold out, and back in stock

        def scraped() -> bool:
            got = prom.query('onestock_movements_total{kind="receipt",status="applied"}')
            lag = prom.query("onestock_subscriber_lag_transitions")
            tried = prom.query('up{job="no-token"}')  # (each job's scrapes have their own phase)
            return list(got.values()) == [1.0] and list(lag.values()) == [0.0] and tried != {}

        prom.wait(scraped, "Prometheus has not scraped the run's figures")
        check_scraped(prom, seq, receiver)
        statuses = Counter(t.status for t in store.feed.after(0))
        got = prom.query("onestock_availability_transitions_total")
        assert {dict(k)["status"]: v for k, v in got.items() if v} == statuses
        check_rules_loaded(prom)
    finally:
        if prom is not None:
            prom.stop()
        assert server.stop() == 0


def check_scraped(prom: Prometheus, seq: int, receiver: Receiver) -> None:
    """What Prometheus holds of serve's /metrics after the run."""
    assert list(prom.query('up{job="onestock"}').values()) == [1.0]
    assert list(prom.query('up{job="no-token"}').values()) == [0.0]  # 401: scrape failed
    assert prom.query('onestock_decisions_total{job="no-token"}') == {}
    decisions = prom.query("sum by (status, reason) (onestock_decisions_total)")
    assert decisions == {
        (("status", "accepted"),): 5.0,  # (an empty label is no label)
        (("reason", "sold_out"), ("status", "rejected")): 3.0,
    }
    assert prom.query("sum(onestock_movements_total)") == {(): 1.0}
    assert prom.query("sum(onestock_availability_transitions_total)") == {(): float(seq)}
    assert prom.query('onestock_availability_transitions_total{status="sold_out"}') != {}
    assert prom.query("onestock_oversold_units") != {}
    assert list(prom.query("onestock_oversold_units").values()) == [0.0]
    # the deliveries, as the receiver saw them: two 503s retried, every transition delivered
    delivered = [b["seq"] for status, b in receiver.answered if status == 204]
    assert sorted(set(delivered)) == list(range(1, seq + 1))
    by_outcome = prom.query("sum by (outcome) (onestock_webhook_deliveries_total)")
    assert by_outcome == {
        (("outcome", "delivered"),): float(len(delivered)),
        (("outcome", "given_up"),): 0.0,
        (("outcome", "retried"),): 2.0,
    }
    assert list(prom.query("onestock_webhook_undelivered").values()) == [0.0]
    assert list(prom.query("onestock_webhook_retrying").values()) == [0.0]


def check_rules_loaded(prom: Prometheus) -> None:
    """The alerting rules loaded, evaluated without error, none firing after a clean run."""
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]

    def evaluated() -> bool:
        got = prom.get("/api/v1/rules")["data"]["groups"]
        return bool(got) and all(r.get("lastEvaluation", "").startswith("20")
                                 for r in got[0]["rules"])  # fmt: skip

    prom.wait(evaluated, "the rules were not evaluated")
    (group,) = prom.get("/api/v1/rules")["data"]["groups"]
    assert {r["name"] for r in group["rules"]} == {r["alert"] for r in rules}
    assert all(r["health"] == "ok" for r in group["rules"]), group["rules"]
    firing = [a for a in prom.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert firing == []
