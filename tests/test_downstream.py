"""Fulfilment records delivered downstream: `onestock fulfilments --follow` in a consumer
group sees every record version at least once across a `kill -9` of its consumer (restarted,
or claimed by another), a location's reader sees the records that ship from it, and record
subscribers get them as signed webhooks through a receiver that fails and comes back."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from dataflows.decider import Decider
from onestock.domain.errors import CatalogError, OnestockError
from onestock.domain.records import encode_record, packed_records, record_from_packed
from onestock.domain.sharding import shard_of_id
from onestock.ops import deliveries, downstream
from onestock.ops.downstream import Follow
from onestock.ops.metrics import Reader, families
from state import keys
from state.outbox import Outbox, trim_point
from state.server import LocalCluster
from state.store import Store
from tests.conftest import ROOT, load, make_catalog, onestock
from tests.helpers import decide, order
from tests.test_deliver import FAST, SECRET, Receiver, Running, wait_until

K = 4
CATALOG: dict[str, Any] = {
    "channels": [{"id": "tmall"}],
    "locations": [
        {"id": "wh-sh", "lat": 31.2, "lon": 121.5},
        {"id": "wh-bj", "lat": 39.9, "lon": 116.4},
    ],
    "skus": [{"sku": s, "stock": {"wh-sh": 150, "wh-bj": 150}} for s in ("A", "B", "C")],
}
NEAR = {"wh-sh": (31.0, 121.0), "wh-bj": (40.0, 116.0)}


def burst(store: Store, n: int, tag: str = "o", cancel_every: int = 4) -> None:
    """``n`` orders near one warehouse or the other (some rejected once stock runs out),
    then a cancel of every ``cancel_every``-th: decided per shard, in batches, as the
    dataflow would, so the output streams hold several entries each."""
    store.shards.shard_count(K)
    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i in range(n):
        lat, lon = NEAR["wh-sh" if i % 3 else "wh-bj"]
        oid = f"{tag}{i}"
        events[shard_of_id(oid, K)].append(order(oid, ("ABC"[i % 3], 1), lat=lat, lon=lon))
    cancels: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i in range(0, n, cancel_every):
        oid = f"{tag}{i}"
        cancels[shard_of_id(oid, K)].append({"type": "cancel", "order_id": oid})
    d = Decider(store, say=lambda _m: None)
    for batches in (events, cancels):
        for shard, evs in batches.items():
            for j in range(0, len(evs), 40):
                decide(store, evs[j : j + 40], shard=shard, decider=d)


def written(store: Store, location: str | None = None) -> list[bytes]:
    """Every record line in the output streams (every version), as --follow prints them."""
    out = []
    for s in range(K):
        rows: Any = store.r.xrange(keys.outbox(s))
        for _, f in rows:
            for p in packed_records(f):
                rec = record_from_packed(p)
                if location is None or location in downstream.locations_of(rec):
                    out.append(encode_record(rec))
    return out


class Follower:
    """`onestock fulfilments --follow ...` in a subprocess; its stdout read by a thread."""

    def __init__(self, url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onestock", "fulfilments", "--follow", *args],
            env={**os.environ, "ONESTOCK_REDIS_URL": url}, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.data = b""  # what it wrote so far

    def _pump(self, deadline: float, what: str) -> None:
        """Read what the pipe holds now (waiting up to half a second for some)."""
        assert self.proc.stdout is not None and time.monotonic() < deadline, what
        fd = self.proc.stdout.fileno()
        if select.select([fd], [], [], 0.5)[0]:
            self.data += os.read(fd, 1 << 16)

    def lines(self) -> set[bytes]:
        return set(self.data.splitlines())

    def read_some(self, n: int, timeout: float = 30) -> None:
        """Read at least ``n`` lines (then stop reading: the consumer blocks on the pipe)."""
        deadline = time.monotonic() + timeout
        while self.data.count(b"\n") < n:
            self._pump(deadline, "no output in time")

    def read_until(self, want: set[bytes], seen: set[bytes], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not want <= seen | self.lines():
            self._pump(deadline, f"{len(want - seen - self.lines())} records missing")

    def kill(self) -> set[bytes]:
        """``kill -9``; then what it had written before (still in the pipe)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.data += self.proc.stdout.read()
        return self.lines()

    def stop(self) -> set[bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err.decode()[-2000:]
        self.data += out
        return self.lines()


def pending(store: Store, group: str) -> int:
    return sum(g.pending for gs in Outbox(store.r, K).groups() for g in gs if g.name == group)


@pytest.fixture
def followers() -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        if f.proc.poll() is None:
            f.proc.kill()
            f.proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restarted", "claimed"])
def test_a_group_consumer_killed_mid_stream_loses_no_record_version(
    store: Store, url: str, followers: list[Follower], how: str
) -> None:
    """Done when: a consumer group sees every record version at least once across a
    consumer crash. The consumer is killed while its pipe is full (records written but
    not all acknowledged); the same consumer started again writes its pending entries
    first, or another consumer claims them once idle."""
    load(store, CATALOG)
    burst(store, 1500)
    want = set(written(store))
    assert len(want) == len(written(store)) > 1500  # cancellations are second versions
    first = Follower(url, "--group", "g", "--consumer", "c1")
    followers.append(first)
    first.read_some(50)
    time.sleep(0.5)  # it fills the pipe and blocks: entries read, not all acknowledged
    seen = first.kill()
    assert pending(store, "g") > 0  # killed mid-stream
    assert 50 <= len(seen) < len(want)
    args = (
        ("--consumer", "c1") if how == "restarted" else ("--consumer", "c2", "--claim-idle", "0.5")
    )
    second = Follower(url, "--group", "g", *args)
    followers.append(second)
    second.read_until(want, seen)
    wait_until(lambda: pending(store, "g") == 0)  # the dead one's entries too: re-read, claimed
    assert want <= seen | second.stop()


def test_the_consumers_of_a_group_get_each_record_once_and_plain_reads_ack_nothing(
    store: Store, url: str
) -> None:
    load(store, CATALOG)
    store.shards.shard_count(K)
    outs = [io.BytesIO(), io.BytesIO()]
    opts = [Follow(group="g", consumer=f"c{i}", count=5) for i in (1, 2)]
    threads = [in_thread(store, out, o) for out, o in zip(outs, opts, strict=True)]
    time.sleep(0.3)
    burst(store, 300)  # while both read
    want = written(store)
    wait_until(lambda: sum(lines(o) for o in outs) >= len(want))
    for t in threads:
        t.close()
    got = [x for o in outs for x in o.getvalue().splitlines()]
    assert sorted(got) == sorted(want)  # each entry went to one consumer of the group
    assert pending(store, "g") == 0
    plain = io.BytesIO()
    t = in_thread(store, plain, Follow(start="start"))  # plain: from the first entry
    wait_until(lambda: lines(plain) == len(want))
    t.close()
    assert sorted(plain.getvalue().splitlines()) == sorted(want)
    assert [g.name for g in Outbox(store.r, K).groups()[0]] == ["g"]  # no group of its own


class in_thread:  # noqa: N801 (used like a function)
    """``downstream.follow`` in a thread until ``close``."""

    def __init__(self, store: Store, out: io.BytesIO, opts: Follow) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=downstream.follow, args=(store, out, opts, self.stop.is_set), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def lines(out: io.BytesIO) -> int:
    return out.getvalue().count(b"\n")


def test_plain_follow_from_now_sees_what_comes_after_it_started(store: Store) -> None:
    load(store, CATALOG)
    burst(store, 40, tag="before")
    old = set(written(store))
    out = io.BytesIO()
    t = in_thread(store, out, Follow())
    time.sleep(0.3)
    burst(store, 40, tag="after")
    new = set(written(store)) - old
    wait_until(lambda: lines(out) >= len(new))
    time.sleep(0.2)
    t.close()
    assert set(out.getvalue().splitlines()) == new


def test_a_location_sees_the_records_that_ship_from_it_and_their_cancellations(
    store: Store,
) -> None:
    load(store, CATALOG)
    burst(store, 1200)  # 400 orders of each SKU for 300 units: rejections too
    want = written(store, "wh-bj")
    out = io.BytesIO()
    t = in_thread(store, out, Follow(group="bj", locations=frozenset({"wh-bj"})))
    wait_until(lambda: lines(out) >= len(want))
    time.sleep(0.2)
    t.close()
    got = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert sorted(out.getvalue().splitlines()) == sorted(want)
    assert {r["status"] for r in got} == {"accepted", "cancelled"}  # no rejection ships
    assert all(any(s["location"] == "wh-bj" for s in r["shipments"]) for r in got)
    cancelled = {r["order_id"] for r in got if r["status"] == "cancelled"}
    accepted = {r["order_id"] for r in got if r["status"] == "accepted"}
    assert cancelled and cancelled <= accepted  # each cancellation of an order shipped here
    rejected = [x for x in written(store) if orjson.loads(x)["status"] == "rejected"]
    assert rejected  # (there were some: nobody at a location sees them)
    assert pending(store, "bj") == 0  # the other records were acknowledged unwritten


def test_follow_options_are_checked_with_one_line_errors(store: Store, url: str) -> None:
    load(store, CATALOG)
    env = {"ONESTOCK_REDIS_URL": url}
    cases = {
        ("--group", "g"): "go with --follow",
        ("--follow", "--consumer", "c"): "--consumer goes with --group",
        ("--follow", "--from", "yesterday"): "--from: want start, now or an entry id",
        ("--follow", "--location", "wh-nowhere"): "unknown location 'wh-nowhere'",
        ("--follow", "--group", "a b"): "--group: want a name without spaces",
    }
    for args, msg in cases.items():
        proc = onestock("fulfilments", *args, env=env, check=False)
        assert proc.returncode == 2 and msg in proc.stderr.decode(), (args, proc.stderr)
    with pytest.raises(OnestockError):
        Follow(start="1-2-3")


def test_a_group_writing_to_a_file_appends_across_its_runs(
    store: Store, url: str, tmp_path: Any
) -> None:
    load(store, CATALOG)
    burst(store, 30, tag="one")
    path = tmp_path / "records.jsonl"
    for tag in ("two", ""):
        f = Follower(url, "--group", "g", "--out", str(path))
        wait_until(
            lambda: path.exists() and set(path.read_bytes().splitlines()) == set(written(store))
        )
        f.stop()
        if tag:
            burst(store, 30, tag=tag)  # while no consumer runs
    assert sorted(path.read_bytes().splitlines()) == sorted(written(store))


def test_the_trim_point_is_below_what_every_group_and_subscriber_still_needs(
    store: Store,
) -> None:
    load(store, CATALOG)
    burst(store, 200)
    box = Outbox(store.r, K)
    assert all(trim_point(gs, []) is None for gs in box.groups())  # nobody reads
    box.create_group("g", ["0-0"] * K)
    ids: Any = store.r.xrange(keys.outbox(0))
    first, third = ids[0][0].decode(), ids[2][0].decode()
    assert trim_point(box.groups()[0], []) == "0-1"  # the group has read nothing
    got = box.read_group("g", "c", {0: ">"}, count=3)  # three entries read
    assert trim_point(box.groups()[0], []) == first  # ... and still pending
    box.ack("g", [(e.shard, e.id) for e in got[:2]])
    assert trim_point(box.groups()[0], []) == third
    box.ack("g", [(e.shard, e.id) for e in got])
    ms, seq = third.split("-")
    assert trim_point(box.groups()[0], []) == f"{ms}-{int(seq) + 1}"
    assert trim_point(box.groups()[0], [first]) == first  # a record subscriber behind
    assert downstream.trim_points(store)[0] == f"{ms}-{int(seq) + 1}"
    sub = {"id": "s", "url": "http://127.0.0.1:9/", "secret": SECRET}
    load(store, {**CATALOG, "record_subscribers": [sub]})
    assert downstream.trim_points(store)[0] == "0-0"  # it has delivered nothing yet
    store.r.hset(keys.RECORD_DELIVERED, "s\x1f0", f"{first}:5")
    assert downstream.trim_points(store)[0] == first  # (that entry maybe in part)


def test_idle_consumers_are_forgotten_only_with_nothing_pending(store: Store) -> None:
    load(store, CATALOG)
    burst(store, 40)
    box = Outbox(store.r, K)
    box.create_group("g", ["0-0"] * K)
    assert len(box.read_group("g", "busy", {0: ">"}, count=1)) == 1  # one pending
    done = box.read_group("g", "done", {1: ">"}, count=1)
    box.ack("g", [(e.shard, e.id) for e in done])
    time.sleep(0.05)
    assert box.forget_idle("g", 10) == 1
    names = [[c["name"] for c in store.r.xinfo_consumers(keys.outbox(s), "g")] for s in (0, 1)]
    assert names == [[b"busy"], []]
    # (the guard itself: a consumer handed an entry since it was judged idle is kept)
    assert box._forget(keys=[keys.outbox(0)], args=["g", "busy"]) == 0
    assert pending(store, "g") == 1


# -- the records' webhooks -------------------------------------------------------------------


def record_sub(sid: str, rx: Receiver, *locations: str) -> dict[str, Any]:
    return {"id": sid, "url": rx.url, "secret": SECRET, "locations": list(locations)}


def check_records(rx: Receiver, want: list[bytes]) -> None:
    """Every wanted record received, none other, one stable webhook-id each, and one order's
    versions first received in order."""
    assert not rx.bad
    by_id: dict[str, set[bytes]] = defaultdict(set)
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: set[bytes] = set()
    for msg_id, doc in rx.got:
        body = orjson.dumps(doc)
        by_id[msg_id].add(body)
        if body not in seen:
            seen.add(body)
            firsts[doc["order_id"]].append(doc.get("version", 1) + (doc["status"] == "cancelled"))
    assert seen == {orjson.dumps(orjson.loads(x)) for x in want}
    assert all(len(v) == 1 for v in by_id.values())  # one record per webhook-id
    assert len(by_id) == len(want)  # ... and one webhook-id per record, on every retry
    assert all(v == sorted(v) for v in firsts.values())


def test_records_reach_their_subscribers_through_a_receiver_that_fails_and_comes_back(
    store: Store, url: str, cli_env: dict[str, str]
) -> None:
    flaky = Receiver(plan=["500"] * 6 + ["sleep"] * 2 + ["500"] * 4)
    flaky.sleep_s = 0.8
    every, down = Receiver().start(), Receiver(then="500").start()
    try:
        cat = {**CATALOG, "record_subscribers": [
            record_sub("bj-wms", flaky, "wh-bj"), record_sub("erp", every),
            record_sub("down", down, "wh-sh"),
        ]}  # fmt: skip
        load(store, cat)
        burst(store, 200, tag="x")
        running = Running(url, replace(FAST, attempts=200, lanes=3))
        try:
            time.sleep(0.5)  # refused meanwhile
            flaky.start()
            burst(store, 200, tag="y")
            bj, everything = written(store, "wh-bj"), written(store)
            wait_until(lambda: len({orjson.dumps(d) for _, d in flaky.got}) == len(bj))
            wait_until(lambda: len({orjson.dumps(d) for _, d in every.got}) == len(everything))
        finally:
            running.close()
        check_records(flaky, bj)
        check_records(every, everything)
        assert len(flaky.got) > len(bj)  # the failed tries were sent again
        view = {s.id: s for s in deliveries.view(store).record_subscribers}
        assert view["bj-wms"].delivered == len(bj) and view["bj-wms"].retried > 0
        assert view["erp"].delivered == len(everything) and view["erp"].lag_ms == 0
        assert view["bj-wms"].lag_ms == 0 and view["down"].lag_ms > 0
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in families(Reader(store).read()) for s in fam.samples
        }  # fmt: skip
        name = "onestock_record_webhook_deliveries_total"
        assert samples[(name, (("outcome", "delivered"), ("subscriber", "bj-wms")))] == len(bj)
        assert samples[(name, (("outcome", "delivered"), ("subscriber", "down")))] == 0
        assert samples[(name, (("outcome", "retried"), ("subscriber", "down")))] > 0
        assert samples[("onestock_record_webhook_undelivered", ())] == 0
    finally:
        for rx in (flaky, every, down):
            rx.stop()


def test_a_record_given_up_is_kept_and_a_restart_resumes_mid_entry(
    store: Store, url: str, cli_env: dict[str, str]
) -> None:
    down = Receiver(then="500").start()
    slow = Receiver(then="sleep").start()
    slow.sleep_s = 0.02
    try:
        load(store, {**CATALOG, "record_subscribers": [
            record_sub("down", down, "wh-bj"), record_sub("slow", slow),
        ]})  # fmt: skip
        burst(store, 120, tag="z")
        cfg = replace(FAST, attempts=3, cap_s=0.05, lanes=2)
        first = Running(url, cfg)
        wait_until(lambda: len(slow.got) >= 40)
        first.close()
        done: Any = store.r.hgetall(keys.RECORD_DELIVERED)
        assert done and len(slow.got) < len(written(store))
        mid = [v for f, v in done.items() if f.startswith(b"slow") and not entry_done(store, v)]
        assert mid  # stopped inside an entry (of 40 records): the second run goes on there
        before = len(slow.got)
        second = Running(url, cfg)
        try:
            want_down = written(store, "wh-bj")
            wait_until(lambda: len({orjson.dumps(d) for _, d in slow.got}) == len(written(store)))
            wait_until(
                lambda: deliveries.view(store).record_subscribers[0].given_up == len(want_down)
            )
        finally:
            second.close()
        again = [orjson.dumps(d) for _, d in slow.got[before:]]
        assert len(again) == len(set(again))  # the second run sent each record once
        assert len(set(again) & {orjson.dumps(d) for _, d in slow.got[:before]}) <= 2 * cfg.lanes
        kept = [orjson.loads(x) for x in deliveries.undelivered(store)]
        assert len(kept) == len(want_down)
        assert {orjson.dumps(e["record"]) for e in kept} == {
            orjson.dumps(orjson.loads(x)) for x in want_down
        }
        assert all(e["subscriber"] == "down" and e["attempts"] == 3 for e in kept)
        assert all({"shard", "entry", "index", "error", "given_up_at"} <= set(e) for e in kept)
        lines_ = onestock("deliveries", "--undelivered", env=cli_env).stdout.splitlines()
        assert [orjson.loads(x) for x in lines_] == kept
        doc = orjson.loads(onestock("deliveries", "--json", env=cli_env).stdout)
        assert {s["id"] for s in doc["record_subscribers"]} == {"down", "slow"}
    finally:
        down.stop()
        slow.stop()


def entry_done(store: Store, progress: bytes) -> bool:
    """Whether a record subscriber's progress "<entry id>:<index>" is its entry's last record."""
    eid, _, index = progress.decode().rpartition(":")
    for s in range(K):
        rows: Any = store.r.xrange(keys.outbox(s), min=eid, max=eid)
        if rows:
            return int(index) == int(rows[0][1][b"n"]) - 1
    raise AssertionError(f"no entry {eid}")


def test_record_subscribers_are_validated_naming_the_field() -> None:
    base = {"id": "s", "url": "http://127.0.0.1:9/x", "secret": SECRET}

    def refused(sub: dict[str, Any]) -> str:
        with pytest.raises(CatalogError) as exc:
            make_catalog({**CATALOG, "record_subscribers": [{**base, **sub}]})
        return str(exc.value)

    assert "$.record_subscribers[0].locations[0]: unknown location 'x'" in refused(
        {"locations": ["x"]}
    )
    assert "$.record_subscribers[0].locations[1]" in refused({"locations": ["wh-sh", "wh-sh"]})
    assert "$.record_subscribers[0].secret" in refused({"secret": "abc"})
    assert "$.record_subscribers[0].url" in refused({"url": "ftp://h/x"})
    assert "channels" in refused({"channels": ["tmall"]})  # (an unknown field)
    with pytest.raises(CatalogError, match=r"\$\.record_subscribers\[1\]\.id: duplicate"):
        make_catalog({**CATALOG, "record_subscribers": [base, base]})
    assert (
        make_catalog({**CATALOG, "record_subscribers": [base]}).record_subscribers[0].locations
        == []
    )


# -- Redis Cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_groups_plain_reads_and_record_webhooks_on_a_cluster(tmp_path: Any) -> None:
    cluster = LocalCluster(tmp_path / "cluster").start()
    rx = Receiver(plan=["500"] * 3).start()
    try:
        store = Store.connect(cluster.url)
        load(store, {**CATALOG, "record_subscribers": [record_sub("c", rx, "wh-bj")]})
        burst(store, 200)
        want = sorted(written(store))
        out = io.BytesIO()
        t = in_thread(store, out, Follow(group="g", count=3, claim_idle_ms=100))
        running = Running(cluster.url)
        try:
            wait_until(lambda: lines(out) >= len(want))
            bj = written(store, "wh-bj")
            wait_until(lambda: len({orjson.dumps(d) for _, d in rx.got}) == len(bj))
        finally:
            t.close()
            running.close()
        assert sorted(out.getvalue().splitlines()) == want
        assert pending(store, "g") == 0
        check_records(rx, bj)
        plain = io.BytesIO()
        downstream.follow(store, plain, Follow(start="start"), lambda: lines(plain) >= len(want))
        assert sorted(plain.getvalue().splitlines()) == want
    finally:
        rx.stop()
        cluster.stop()


@pytest.mark.slow
def test_end_to_end_a_run_with_a_crashing_consumer_and_a_record_subscriber(
    store: Store, url: str, cli_env: dict[str, str], followers: list[Follower], tmp_path: Any
) -> None:
    """`onestock run` decides orders and cancels while a consumer of a group is killed and
    another takes over; the run's feed process delivers every record to a subscriber that
    answers 5xx at first."""
    rx = Receiver(plan=["500"] * 5).start()
    try:
        path = tmp_path / "catalog.json"
        path.write_bytes(orjson.dumps({**CATALOG, "record_subscribers": [record_sub("e2e", rx)]}))
        onestock("catalog", "load", str(path), env=cli_env)
        events = [order(f"e{i}", ("ABC"[i % 3], 1), lat=31.0, lon=121.0) for i in range(1200)]
        events += [{"type": "cancel", "order_id": f"e{i}"} for i in range(0, 1200, 5)]
        data = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
        onestock("orders", "push", "-", "--shards", str(K), input=data, env=cli_env)
        first = Follower(url, "--group", "g", "--consumer", "c1")
        followers.append(first)
        env = {
            **os.environ,
            **cli_env,
            "ONESTOCK_DELIVERY_BACKOFF_S": "0.02",
            "ONESTOCK_BATCH_SIZE": "100",
        }  # (most cancels come after their order's batch)
        run = subprocess.Popen(
            [sys.executable, "-m", "onestock", "run", "--until-drained", "--workers", "2"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        first.read_some(20, timeout=60)
        seen = first.kill()
        second = Follower(url, "--group", "g", "--consumer", "c2", "--claim-idle", "0.5")
        followers.append(second)
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err.decode()[-2000:]
        want = set(written(store))
        assert {orjson.loads(x)["order_id"] for x in want} == {f"e{i}" for i in range(1200)}
        assert len(want) > 1300  # second versions: cancellations of accepted orders
        second.read_until(want, seen)
        wait_until(lambda: pending(store, "g") == 0)
        assert want <= seen | second.stop()
        check_records(rx, sorted(want))  # delivered before the run ended (its drain)
    finally:
        rx.stop()
