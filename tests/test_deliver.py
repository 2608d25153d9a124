"""Webhook deliveries of the change feed, against real local HTTP receivers that refuse
connections, answer 5xx, time out and come back: every transition of a subscriber's channels
reaches it at least once, in order per (SKU, channel), signed (each request verified with
``standardwebhooks``), none invented; what stays undeliverable is kept and visible."""

from __future__ import annotations

import base64
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from dataflows.decider import Decider
from onestock.domain.errors import CatalogError, OnestockError
from onestock.ops import deliver, deliveries
from onestock.ops.deliver import DeliverySettings
from onestock.ops.feed import Publisher, transition_json
from state import keys
from state.store import Store
from tests.conftest import load, make_catalog, onestock
from tests.helpers import decide, free_port, order

SECRET = "whsec_" + base64.b64encode(b"onestock-test-secret-key").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-subscriber-key!!").decode()
SKUS = ["A", "B", "C", "D", "E", "F"]
CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall"}, {"id": "jd"}],
    "locations": [{"id": "wh-a", "lat": 31.2, "lon": 121.5}],
    "skus": [{"sku": s, "stock": {"wh-a": 3}, "low_stock_threshold": 1} for s in SKUS],
}
# small budgets: a test's faults last about a second
FAST = DeliverySettings(
    attempts=200, base_s=0.02, cap_s=0.2, timeout_s=0.4, lanes=4, drain_s=0.0, trim_s=0.1
)


class Receiver:
    """A real HTTP endpoint on a local port (refusing connections until ``start``): verifies
    every request with ``standardwebhooks``, records it, and answers as ``plan`` says, one
    step per request ("500", "sleep": past the client's timeout, "ok"), then ``then``."""

    def __init__(self, secret: str = SECRET, plan: list[str] | None = None, then: str = "ok"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/onestock"
        self.hook = Webhook(secret)
        self.plan, self.then = list(plan or []), then
        self.sleep_s = 1.0
        self.got: list[tuple[str, dict[str, Any]]] = []  # (webhook-id, body), verified
        self.bad: list[str] = []  # requests that failed verification
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        data = h.rfile.read(int(h.headers["content-length"]))
        try:
            doc = self.hook.verify(data, dict(h.headers.items()))
        except Exception as exc:  # noqa: BLE001 (recorded: the test fails on it)
            with self.lock:
                self.bad.append(f"{exc!r}: {data!r}")
            h.send_response(401)
            h.end_headers()
            return
        with self.lock:
            self.got.append((h.headers["webhook-id"], doc))
            step = self.plan.pop(0) if self.plan else self.then
        if step == "sleep":
            time.sleep(self.sleep_s)
        try:
            h.send_response(500 if step == "500" else 200)
            h.end_headers()
        except OSError:  # the client gave up waiting
            pass

    def seqs(self) -> set[int]:
        with self.lock:
            return {doc["seq"] for _, doc in self.got}


def subscriber(sid: str, receiver: Receiver, *channels: str, secret: str = SECRET) -> dict:  # type: ignore[type-arg]
    return {"id": sid, "url": receiver.url, "secret": secret, "channels": list(channels)}


def catalog(*subs: dict) -> dict[str, Any]:  # type: ignore[type-arg]
    return {**CATALOG, "subscribers": list(subs)}


class Running:
    """A deliverer in a thread of its own (as ``onestock feed`` runs one)."""

    def __init__(self, url: str, cfg: DeliverySettings = FAST) -> None:
        self.stop = threading.Event()
        self.said: list[str] = []
        self.thread = threading.Thread(
            target=deliver.run, args=(url, self.said.append, self.stop, None, cfg), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def churn(store: Store, pub: Publisher, rounds: int, tag: str) -> None:
    """Sales and receipts through the decider, published after each step: every SKU goes
    low_stock (1 left), sold_out, in_stock (a receipt of 3) on both channels, per round."""
    d = Decider(store, say=lambda _m: None)
    for r in range(rounds):
        decide(store, [order(f"{tag}{r}{s}a", (s, 2)) for s in SKUS], decider=d)
        pub.step()
        decide(store, [order(f"{tag}{r}{s}b", (s, 1), channel="jd") for s in SKUS], decider=d)
        pub.step()
        receipts = [
            {"type": "movement", "movement_id": f"{tag}{r}{s}", "kind": "receipt",
             "location": "wh-a", "lines": [{"sku": s, "qty": 3}]}
            for s in SKUS
        ]  # fmt: skip
        decide(store, receipts, decider=d)
        pub.step()


def publisher(store: Store) -> Publisher:
    return Publisher(store, say=lambda _m: None, sweep_s=3600)


def expected(store: Store, *channels: str) -> dict[int, dict[str, Any]]:
    """The feed's transitions of ``channels`` by seq, as the contract's body."""
    return {
        t.seq: orjson.loads(transition_json(t))
        for t in store.feed.after(0, count=1_000_000)
        if t.channel in channels
    }


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.02)


def check(receiver: Receiver, want: dict[int, dict[str, Any]], strict_order: bool = True) -> None:
    """Every wanted transition received, none invented, one webhook-id per seq, in order per
    (SKU, channel): ``strict_order``: each receipt (a retry repeats the one before);
    otherwise (across a restart) each transition first received after those before it."""
    assert not receiver.bad
    ids: dict[int, set[str]] = defaultdict(set)
    order_by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for msg_id, doc in receiver.got:
        assert doc == want[doc["seq"]], doc  # nothing invented, nothing changed
        ids[doc["seq"]].add(msg_id)
        order_by_key[(doc["sku"], doc["channel"])].append(doc["seq"])
    assert set(ids) == set(want)
    assert all(len(v) == 1 for v in ids.values()), "a webhook-id changed across retries"
    assert len({next(iter(v)) for v in ids.values()}) == len(ids)
    for seqs in order_by_key.values():
        if strict_order:
            assert seqs == sorted(seqs), seqs
        else:
            firsts = list(dict.fromkeys(seqs))
            assert firsts == sorted(firsts), seqs


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def counts(store: Store) -> dict[str, deliveries.SubscriberState]:
    return {s.id: s for s in deliveries.view(store).subscribers}


def test_every_transition_reaches_subscribers_through_refusals_5xx_and_timeouts(
    store: Store, url: str, receivers: list[Receiver]
) -> None:
    flaky = Receiver(plan=["500"] * 8 + ["sleep"] * 3 + ["500"] * 4)
    flaky.sleep_s = 0.8  # past the client's 0.4 s
    steady = Receiver(secret=OTHER_SECRET).start()
    receivers += [flaky, steady]
    steady_sub = subscriber("steady", steady, "tmall", "jd", secret=OTHER_SECRET)
    load(store, catalog(subscriber("flaky", flaky, "tmall"), steady_sub))
    pub = publisher(store)
    pub.step()
    running = Running(url)
    try:
        churn(store, pub, 2, "x")
        time.sleep(0.5)  # refused meanwhile
        flaky.start()  # comes back: 500s, timeouts, 500s, then 200s
        churn(store, pub, 1, "y")
        want_flaky, want_steady = expected(store, "tmall"), expected(store, "tmall", "jd")
        wait_until(lambda: flaky.seqs() == set(want_flaky) and steady.seqs() == set(want_steady))
        last = store.feed.last_seq()
        wait_until(lambda: all(s.progress == last for s in counts(store).values()))
    finally:
        running.close()
    check(flaky, want_flaky)
    check(steady, want_steady)
    assert len(flaky.got) > len(want_flaky)  # the 5xx and timed-out tries were sent again
    assert len(want_flaky) == 10 * len(SKUS) and len(want_steady) == 20 * len(SKUS)
    seen = counts(store)
    assert seen["flaky"].retried > 0 and seen["flaky"].given_up == 0
    assert seen["flaky"].delivered == len(want_flaky)  # (a timed-out one counts when a 2xx came)
    assert seen["steady"].retried == 0 and seen["steady"].delivered == len(want_steady)
    assert seen["flaky"].lag == 0 and seen["flaky"].retrying == 0
    assert seen["flaky"].last_error is not None
    assert store.r.xlen(keys.FEED_UNDELIVERED) == 0


def test_a_subscriber_that_stays_down_is_given_up_and_kept_while_another_gets_everything(
    store: Store, url: str, receivers: list[Receiver], cli_env: dict[str, str]
) -> None:
    down = Receiver(then="sleep").start()  # every request answered past the timeout
    down.sleep_s = 1.0
    up = Receiver().start()
    receivers += [down, up]
    load(store, catalog(subscriber("down", down, "tmall"), subscriber("up", up, "tmall", "jd")))
    pub = publisher(store)
    pub.step()
    running = Running(url, replace(FAST, attempts=3, cap_s=0.05, timeout_s=0.3, lanes=8))
    try:
        churn(store, pub, 1, "z")
        want_down, want_up = expected(store, "tmall"), expected(store, "tmall", "jd")
        wait_until(lambda: up.seqs() == set(want_up))
        # the other subscriber had everything long before the down one's budget was spent
        assert counts(store)["down"].given_up < len(want_down) // 2
        wait_until(lambda: counts(store)["down"].given_up == len(want_down), timeout=60)
        wait_until(lambda: counts(store)["down"].progress == store.feed.last_seq())
    finally:
        running.close()
    check(up, want_up)
    check(down, want_down)  # every try signed and verified, the same webhook-id each time
    assert len(down.got) == 3 * len(want_down)
    kept = [orjson.loads(x) for x in deliveries.undelivered(store)]
    assert sorted(e["seq"] for e in kept) == sorted(want_down)
    for e in kept:
        assert e["subscriber"] == "down" and e["attempts"] == 3
        assert e["transition"] == want_down[e["seq"]]
        assert "no answer within 0.3 s" in e["error"]
    lines = onestock("deliveries", "--undelivered", env=cli_env).stdout.splitlines()
    assert [orjson.loads(x) for x in lines] == kept
    doc = orjson.loads(onestock("deliveries", "--json", env=cli_env).stdout)
    by_id = {s["id"]: s for s in doc["subscribers"]}
    assert by_id["down"]["given_up"] == len(want_down) and by_id["down"]["delivered"] == 0
    assert by_id["up"]["delivered"] == len(want_up) and by_id["up"]["lag"] == 0
    assert by_id["down"]["url"] == down.url and by_id["up"]["channels"] == ["tmall", "jd"]
    table = onestock("deliveries", env=cli_env).stdout.decode()
    assert "down" in table and "up" in table


def test_a_restarted_deliverer_resumes_from_its_progress(
    store: Store, url: str, receivers: list[Receiver]
) -> None:
    slow = Receiver(then="sleep").start()
    slow.sleep_s = 0.03  # answers, slowly: a backlog is in flight when the deliverer stops
    receivers.append(slow)
    load(store, catalog(subscriber("slow", slow, "tmall", "jd")))
    pub = publisher(store)
    pub.step()
    churn(store, pub, 3, "r")
    cfg = replace(FAST, attempts=5, timeout_s=2.0, lanes=2)
    first = Running(url, cfg)
    wait_until(lambda: len(slow.seqs()) >= 20)
    first.close()
    progress = int(store.r.hget(keys.FEED_DELIVERED, "slow") or 0)
    assert 0 < progress < store.feed.last_seq()  # stopped with a backlog left
    before = len(slow.got)
    churn(store, pub, 1, "s")  # published while no deliverer runs
    second = Running(url, cfg)
    try:
        want = expected(store, "tmall", "jd")
        wait_until(lambda: slow.seqs() == set(want))
    finally:
        second.close()
    check(slow, want, strict_order=False)
    again = [doc["seq"] for _, doc in slow.got[before:]]
    assert min(again) == progress + 1  # resumed right after the progress, nothing before it
    assert len(again) - len(set(again)) == 0  # the second run sent each transition once


def test_only_the_lease_holder_delivers_and_another_takes_over(
    store: Store, url: str, receivers: list[Receiver]
) -> None:
    rx = Receiver().start()
    receivers.append(rx)
    load(store, catalog(subscriber("one", rx, "tmall", "jd")))
    pub = publisher(store)
    pub.step()
    a, b = Running(url), Running(url)
    try:
        churn(store, pub, 2, "l")
        want = expected(store, "tmall", "jd")
        wait_until(lambda: rx.seqs() == set(want))
        time.sleep(0.3)
        assert len(rx.got) == len(want)  # each once: one deliverer delivered
        leader, other = (a, b) if any("delivering" in m for m in a.said) else (b, a)
        assert not any("delivering" in m for m in other.said)
        leader.close()  # gives the lease back; the other takes it at its next renewal
        churn(store, pub, 1, "m")
        want = expected(store, "tmall", "jd")
        wait_until(lambda: rx.seqs() == set(want), timeout=20)
        assert any("delivering" in m for m in other.said)
    finally:
        a.close()
        b.close()
    check(rx, want, strict_order=False)


def test_the_feed_is_trimmed_up_to_the_least_progress_keeping_the_last_n(
    store: Store, url: str, receivers: list[Receiver]
) -> None:
    fast, late = Receiver().start(), Receiver()  # late: refused until it starts
    receivers += [fast, late]
    load(store, catalog(subscriber("fast", fast, "tmall"), subscriber("late", late, "jd")))
    pub = publisher(store)
    pub.step()
    churn(store, pub, 3, "t")
    last = store.feed.last_seq()
    want_fast, want_late = expected(store, "tmall"), expected(store, "jd")
    running = Running(url, replace(FAST, keep=5, trim_s=0.05))
    try:
        wait_until(lambda: int(store.r.hget(keys.FEED_DELIVERED, "fast") or 0) == last)
        time.sleep(0.3)  # trims meanwhile: none past the late subscriber's progress
        late_progress = int(store.r.hget(keys.FEED_DELIVERED, "late") or 0)
        assert late_progress < last - 5
        assert store.feed.after(0, count=1)[0].seq <= late_progress + 1
        late.start()
        wait_until(lambda: int(store.r.hget(keys.FEED_DELIVERED, "late") or 0) == last)
        wait_until(lambda: store.r.xlen(keys.FEED) == 5)
    finally:
        running.close()
    assert [t.seq for t in store.feed.after(0)] == list(range(last - 4, last + 1))
    check(fast, want_fast)
    check(late, want_late)


def test_run_until_drained_delivers_every_transition_to_a_receiver(
    store: Store, cli_env: dict[str, str], receivers: list[Receiver], tmp_path: Any
) -> None:
    """End to end: `onestock run` starts `onestock feed`, whose deliverer gets what the
    publisher's last round published to a receiver that answers 5xx at first."""
    rx = Receiver(plan=["500"] * 5).start()
    receivers.append(rx)
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(catalog(subscriber("e2e", rx, "tmall", "jd"))))
    onestock("catalog", "load", str(path), env=cli_env)
    lines = [
        orjson.dumps(order(f"o{i}", (SKUS[i % 6], 1), channel=("tmall", "jd")[i % 2]))
        for i in range(18)
    ]  # three units of each SKU: each sold out
    onestock("orders", "push", "-", input=b"\n".join(lines) + b"\n", env=cli_env)
    env = {
        **cli_env,
        "ONESTOCK_DELIVERY_BACKOFF_S": "0.02",
        "ONESTOCK_DELIVERY_BACKOFF_CAP_S": "0.1",
    }
    onestock("run", "--until-drained", "--workers", "1", env=env, timeout=120)
    want = expected(store, "tmall", "jd")
    sold_out = {(t["sku"], t["channel"]) for t in want.values() if t["status"] == "sold_out"}
    assert len(sold_out) == 2 * len(SKUS)
    check(rx, want)
    assert deliveries.view(store).subscribers[0].progress == store.feed.last_seq()


def test_subscribers_are_validated_naming_the_field() -> None:
    def refused(sub: dict[str, Any]) -> str:
        base = {"id": "s", "url": "http://127.0.0.1:9/x", "secret": SECRET, "channels": ["jd"]}
        with pytest.raises(CatalogError) as exc:
            make_catalog({**CATALOG, "subscribers": [{**base, **sub}]})
        return str(exc.value)

    assert "$.subscribers[0].url" in refused({"url": "ftp://host/x"})
    assert "$.subscribers[0].url" in refused({"url": "http:///nohost"})
    assert "$.subscribers[0].url" in refused({"url": "http://h:port/"})
    assert "$.subscribers[0].secret" in refused({"secret": "abc"})
    assert "$.subscribers[0].secret" in refused({"secret": "whsec_not base64!"})
    assert "$.subscribers[0].secret" in refused({"secret": "whsec_"})
    assert "$.subscribers[0].channels[1]" in refused({"channels": ["jd", "nope"]})
    assert "$.subscribers[0].channels[1]" in refused({"channels": ["jd", "jd"]})
    assert "subscribers[0].channels" in refused({"channels": []})
    assert "$.subscribers[0].id" in refused({"id": "tab\there"})
    two = {"id": "s", "url": "https://x.example/h", "secret": SECRET, "channels": ["jd"]}
    with pytest.raises(CatalogError, match=r"\$\.subscribers\[1\]\.id: duplicate"):
        make_catalog({**CATALOG, "subscribers": [two, two]})
    assert make_catalog({**CATALOG, "subscribers": [two]}).subscribers[0].channels == ["jd"]


def test_delivery_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONESTOCK_DELIVERY_ATTEMPTS", "7")
    monkeypatch.setenv("ONESTOCK_DELIVERY_BACKOFF_S", "0.5")
    monkeypatch.setenv("ONESTOCK_FEED_KEEP", "0")
    cfg = DeliverySettings.from_env()
    assert (cfg.attempts, cfg.base_s, cfg.keep, cfg.lanes) == (7, 0.5, 0, 8)
    for n, most in ((1, 0.5), (2, 1.0), (3, 2.0)):  # doubled each time, up to a fifth less
        assert 0.8 * most <= deliver.backoff(n, cfg) <= most
    assert deliver.backoff(100, cfg) <= cfg.cap_s
    assert deliver.backoff(1, cfg, retry_after=30) == 30
    monkeypatch.setenv("ONESTOCK_DELIVERY_LANES", "0")
    with pytest.raises(OnestockError, match="ONESTOCK_DELIVERY_LANES"):
        DeliverySettings.from_env()
    monkeypatch.setenv("ONESTOCK_DELIVERY_LANES", "x")
    with pytest.raises(OnestockError, match="not a whole number"):
        DeliverySettings.from_env()
