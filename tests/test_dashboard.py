"""The live dashboard in a real headless Chromium (Debian's package or Playwright's own build,
driven by Playwright) while a real burst runs through a real dataflow and a real `onestock
serve`."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import msgspec
import orjson
import pytest

import dev
from onestock import burst, harness
from onestock.domain.types import Subscriber
from onestock.ops import services as ops
from state.server import RedisServer
from state.store import Store
from tests.helpers import Server
from tests.test_prometheus import Receiver, subscriber

ARTIFACTS = Path(__file__).parent / "artifacts"
MOVEMENTS = [
    {"type": "movement", "movement_id": "GRN-1", "kind": "receipt", "location": "wh-shanghai",
     "lines": [{"sku": "TEE-M", "qty": 500}]},
    {"type": "movement", "movement_id": "TR-1", "kind": "transfer", "location": "wh-shanghai",
     "to": "wh-beijing", "lines": [{"sku": "TEE-M", "qty": 5}]},
    {"type": "movement", "movement_id": "POS-1", "kind": "sale", "location": "st-hangzhou-1",
     "lines": [{"sku": "TEE-M", "qty": 10**6}]},  # below zero: refused
]  # fmt: skip
# Chromium as a root process on a closed network: no sandbox, no background connections
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, else Playwright's own build: `python3 dev.py setup` installs one."""
    from playwright.sync_api import sync_playwright

    found = dev.debian_chromium()
    if found is None:
        with sync_playwright() as p:
            own = p.chromium.executable_path
        found = own if os.path.exists(own) else None
    if found is None:
        pytest.fail("no Chromium: `python3 dev.py setup` installs it", pytrace=False)
    return found


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, Server]]:
    """Redis, the campaign catalog with a webhook subscriber of tmall (a real local receiver
    that fails its first 2 requests), a 2-worker dataflow with the change feed and its
    deliveries, and `onestock serve`."""
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    home = tmp_path / "home"
    home.mkdir()
    store = Store.connect(server.url)
    receiver = Receiver(failures=2)
    cat = burst.campaign_catalog(first_n=3000)
    cat.subscribers = [msgspec.convert(subscriber(receiver.url), Subscriber)]
    harness.reset(store, catalog=cat)
    monkeypatch.setenv("ONESTOCK_DELIVERY_BACKOFF_S", "0.2")  # (the dataflow's feed child)
    flow = harness.start_dataflow(server.url, home, 2, until_drained=False)
    serve = Server({"ONESTOCK_REDIS_URL": server.url, "ONESTOCK_HOME": str(home)})
    try:
        yield store, serve
    finally:
        serve.stop()
        harness.stop(flow)
        server.stop()
        receiver.close()


def test_dashboard_shows_a_running_burst_in_chromium(
    chromium: str, pipeline: tuple[Store, Server]
) -> None:
    from playwright.sync_api import sync_playwright

    store, serve = pipeline
    lines = list(burst.orders(40_000, burst.demo_catalog(), seed=8))
    stop = threading.Event()

    def pace() -> None:  # ~3,000 orders/s, as a burst arrives (not all at once)
        for i in range(0, len(lines), 300):
            if stop.is_set():
                return
            ops.push(store, lines[i : i + 300])
            if i == 3000:  # stock movements in the middle of the burst
                ops.push(store, [orjson.dumps(m) for m in MOVEMENTS])
            time.sleep(0.1)

    pusher = threading.Thread(target=pace, daemon=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{serve.port}/")
            page.wait_for_function("document.getElementById('decided').textContent !== '–'")
            pusher.start()

            def decided() -> int:
                return int(page.inner_text("#decided").replace(",", ""))

            page.wait_for_function(
                "parseInt(document.getElementById('decided').textContent.replace(/,/g, '')) > 0",
                timeout=30_000,
            )
            first = decided()
            time.sleep(3)
            second = decided()
            assert second > first, "the numbers did not move while the burst ran"
            assert int(page.inner_text("#orders-10s").replace(",", "")) > 0
            assert page.inner_text("#oversell") == "0"
            # movements by kind, transitions, deliveries (retried twice, then delivered)
            page.wait_for_function(
                "document.getElementById('movements').textContent === '2 / 1'"
                " && parseInt(document.getElementById('delivered').textContent) > 0",
                timeout=30_000,
            )
            assert int(page.inner_text("#transitions").split()[0].replace(",", "")) > 0
            assert page.inner_text("#given-up") == "0"
            row = page.locator("#subscribers tbody tr").first.inner_text().split("\t")
            assert row[0] == "tmall-sync" and int(row[1].replace(",", "")) > 0
            assert row[2] == "2" and row[4] == "0", row  # retried 2, none given up
            # every chart was drawn by plotly.js (served from the installed package)
            for chart in ("rate", "latency", "decisions", "stock", "gifts", "movements", "feed"):
                assert page.locator(f"#chart-{chart} .main-svg").count() > 0, chart
            assert page.locator("#sellout tbody tr").count() == 5  # the catalog's SKUs
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            stop.set()
            browser.close()
    pusher.join(timeout=30)
    assert errors == [], errors
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_plotly_js_comes_from_the_installed_package(pipeline: tuple[Store, Server]) -> None:
    _, serve = pipeline
    want = resources.files("plotly").joinpath("package_data/plotly.min.js").read_bytes()
    url = f"http://127.0.0.1:{serve.port}/static/plotly.min.js"
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.headers["content-type"] == "application/javascript"
        assert resp.read() == want
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["content-encoding"] == "gzip"
        import gzip

        assert gzip.decompress(resp.read()) == want
