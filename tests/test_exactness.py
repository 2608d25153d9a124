"""The eleven ways a review broke exactness, each through the real command line and a real
Bytewax run: every event ends with one outcome, stock is conserved, the drain exits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from onestock.ops import services as ops
from state.store import Store
from tests.conftest import ROOT, onestock
from tests.helpers import order

CATALOG = {
    "channels": [{"id": "tmall"}, {"id": "jd"}, {"id": "pos", "kind": "store"}],
    "locations": [
        {"id": "wh-a", "lat": 31.2, "lon": 121.5, "priority": 0},
        {"id": "st-b", "kind": "store", "lat": 30.3, "lon": 120.2, "priority": 1, "pickup": True},
    ],
    "skus": [
        {"sku": "SNEAKER", "stock": {"wh-a": 5, "st-b": 2}, "low_stock_threshold": 2},
        {"sku": "TEE", "stock": {"wh-a": 10}},
    ],
}


def run_flow(
    tmp_path: Path, env: dict[str, str], lines: list[bytes], catalog: dict[str, Any] = CATALOG,
    extra_env: dict[str, str] | None = None, timeout: float = 90,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], str]:  # fmt: skip
    """Load ``catalog``, push ``lines``, run until drained (it must exit), and return the
    records by order id, the dead letters and the run's stderr."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    onestock("catalog", "load", str(path), env=env)
    onestock("orders", "push", "-", env=env, input=b"\n".join(lines) + b"\n")
    run = onestock(
        "run", "--until-drained", "--workers", "1", env={**env, **(extra_env or {})},
        timeout=timeout,
    )  # fmt: skip
    recs = [orjson.loads(x) for x in onestock("fulfilments", env=env).stdout.splitlines()]
    dead = [orjson.loads(x) for x in onestock("deadletters", env=env).stdout.splitlines()]
    by_id = {r["order_id"]: r for r in recs}
    assert len(by_id) == len(recs), "one record per order id"
    return by_id, dead, run.stderr.decode()


def conserved(url: str, catalog: dict[str, Any] = CATALOG) -> None:
    store = Store.connect(url)
    loaded = {s["sku"]: dict(s["stock"]) for s in catalog["skus"]}
    audit = ops.audit(store, store.shards.shard_count(), loaded)
    assert audit.oversold == 0 and audit.duplicates == 0, audit


# 1: a paid_at before 1970 (or Go's zero time) crashed the decide step, on every restart
@pytest.mark.parametrize("paid_at", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_a_paid_at_before_1970_is_rejected_invalid_and_the_flow_goes_on(
    tmp_path: Path, cli_env: dict[str, str], url: str, paid_at: str
) -> None:
    lines = [orjson.dumps(order("old-1", ("SNEAKER", 1), paid_at=paid_at)),
             orjson.dumps(order("ok-1", ("SNEAKER", 1)))]  # fmt: skip
    recs, dead, _ = run_flow(tmp_path, cli_env, lines)
    assert recs["old-1"]["status"] == "rejected" and recs["old-1"]["reason"] == "invalid"
    assert "$.paid_at" in recs["old-1"]["detail"]
    assert recs["ok-1"]["status"] == "accepted" and dead == []
    conserved(url)


# 2: a drain never ended when a shard's last batch wrote nothing new
CANCEL_D1 = orjson.dumps({"type": "cancel", "order_id": "d-1"})


@pytest.mark.parametrize(
    ("before", "tail"),
    [
        ([], orjson.dumps(order("d-1", ("SNEAKER", 1)))),  # retried delivery
        ([], orjson.dumps({"type": "cancel", "order_id": "r-1"})),  # cancel of a rejected order
        ([CANCEL_D1], CANCEL_D1),  # a duplicate cancel
    ],
    ids=["retried-delivery", "cancel-of-rejected", "duplicate-cancel"],
)
def test_a_drain_ends_when_the_last_batch_writes_nothing_new(
    tmp_path: Path, cli_env: dict[str, str], url: str, before: list[bytes], tail: bytes
) -> None:
    first = [orjson.dumps(order("d-1", ("SNEAKER", 1))), orjson.dumps(order("r-1", ("NOPE", 1)))]
    recs, _, _ = run_flow(tmp_path, cli_env, first + before)
    onestock("orders", "push", "-", env=cli_env, input=tail + b"\n")
    onestock("run", "--until-drained", "--workers", "1", env=cli_env, timeout=60)
    after = [orjson.loads(x) for x in onestock("fulfilments", env=cli_env).stdout.splitlines()]
    assert {r["order_id"]: r for r in after} == recs  # nothing new, nothing changed
    conserved(url)


# 6: a customer id with the records' separator broke replays and releases, on every restart
@pytest.mark.parametrize("field", ["customer", "channel", "sku", "store"])
def test_an_unprintable_text_in_any_field_is_rejected_invalid_naming_it(
    tmp_path: Path, cli_env: dict[str, str], url: str, field: str
) -> None:
    o = order("h-1", ("SNEAKER", 1), ("TEE", 1), pickup="st-b" if field == "store" else None)
    bad = "a\x1fb\x1ec"
    if field == "customer":
        o["customer"]["id"] = bad
    elif field == "channel":
        o["channel"] = bad
    elif field == "sku":
        o["lines"][1]["sku"] = bad
    else:
        o["delivery"]["store"] = bad
    recs, dead, _ = run_flow(tmp_path, cli_env, [orjson.dumps(o)])
    rec = recs["h-1"]
    assert rec["status"] == "rejected" and rec["reason"] == "invalid" and dead == []
    assert "unprintable characters" in rec["detail"]
    conserved(url)


# 8: one far-future paid_at (a typo) moved a campaign's watermark
def test_a_far_future_paid_at_is_rejected_invalid(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    lines = [orjson.dumps(order("f-1", ("SNEAKER", 1), paid_at="2062-11-11T00:00:00Z"))]
    recs, _, _ = run_flow(tmp_path, cli_env, lines)
    assert recs["f-1"]["reason"] == "invalid" and "accepted window" in recs["f-1"]["detail"]
    conserved(url)


# 10: `orders push` printed a traceback on a lone surrogate and stored none of its chunk
def test_push_stores_every_line_and_a_lone_surrogate_ends_as_a_dead_letter(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    lines = [orjson.dumps(order("s-1", ("SNEAKER", 1))),
             b'{"order_id": "bad\\ud800", "channel": "tmall"}',
             orjson.dumps(order("s-2", ("TEE", 1)))]  # fmt: skip
    recs, dead, err = run_flow(tmp_path, cli_env, lines)
    assert set(recs) == {"s-1", "s-2"} and "Traceback" not in err
    assert len(dead) == 1 and "ud800" in dead[0]["raw"]
    conserved(url)


# poison quarantine: an event that makes deciding raise is a dead letter; the flow goes on
def test_an_event_that_makes_deciding_raise_is_quarantined_not_a_crash_loop(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import onestock.domain.events as e\n"
        "_real = e.decode\n"
        "def decode(raw, *a, **k):\n"
        "    if b'POISON' in (raw if isinstance(raw, bytes) else raw.encode()):\n"
        "        raise RuntimeError('a decoder made to fail')\n"
        "    return _real(raw, *a, **k)\n"
        "e.decode = decode\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)])}
    lines = [orjson.dumps(order(f"q-{i}", ("TEE", 1))) for i in range(5)]
    lines.insert(2, orjson.dumps(order("POISON-1", ("TEE", 1))))
    recs, dead, err = run_flow(tmp_path, cli_env, lines, extra_env=env)
    assert set(recs) == {f"q-{i}" for i in range(5)}
    assert all(r["status"] == "accepted" for r in recs.values())
    assert len(dead) == 1 and "POISON-1" in dead[0]["raw"]
    assert "a decoder made to fail" in dead[0]["reason"]
    assert err.count("quarantined") == 1
    # started again with the same fault: nothing left to fail on, it drains at once
    onestock("run", "--until-drained", "--workers", "1", env={**cli_env, **env}, timeout=60)
    conserved(url)


# 7: a catalog load under a burst added a per-customer limit; the decider, still on its
# cached catalog, sent no customer ids and the script refused every order as over the limit
def test_a_limit_loaded_under_a_batch_never_rejects_an_order_within_it(store: Store) -> None:
    from dataflows.decider import Decider
    from tests.conftest import load
    from tests.helpers import raw

    load(store, CATALOG)
    d = Decider(store, say=lambda _m: None)
    d.emit(d.process(0, [("1-0", raw(order("warm-1", ("TEE", 1))))]))
    limited = json.loads(json.dumps(CATALOG))
    limited["skus"][1]["per_customer_limit"] = 2
    real = store.skus.decide

    def load_first(*calls: Any) -> Any:  # the load lands between the read and the script
        store.skus.decide = real  # type: ignore[method-assign]
        load(store, limited)
        return real(*calls)

    store.skus.decide = load_first  # type: ignore[method-assign, assignment]
    out = d.process(0, [("2-0", raw(order("in-1", ("TEE", 1)))),
                        ("3-0", raw(order("in-2", ("TEE", 2))))])  # fmt: skip
    d.emit(out)
    outcomes = dict(zip(out.records[0::3], out.records[1::3], strict=True))
    assert outcomes["in-1"].startswith("A") and outcomes["in-2"].startswith("A")
    again = d.process(0, [("4-0", raw(order("in-3", ("TEE", 1), customer={"id": "c-in-2"})))])
    assert again.records[2].endswith("limit_exceeded")  # the new rule holds from here on


# 3: order ids equal to internal registry markers got no record and no dead letter
INTERNAL_LOOKING = ["~nc", "~c:X-1", "~x:X-1", "~k:X-1", "~R:abc", "#1-0", "~u:X-1", "~rq:X-1",
                    "~r:abc", "-", "x"]  # fmt: skip


def test_an_order_id_that_looks_internal_is_an_order_id(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    lines = [orjson.dumps(order("X-1", ("TEE", 2)))]
    lines += [orjson.dumps(order(oid, ("TEE", 1))) for oid in INTERNAL_LOOKING]
    lines.append(orjson.dumps({"type": "return", "order_id": "X-1", "location": "wh-a",
                               "lines": [{"sku": "TEE", "qty": 1}]}))  # fmt: skip
    cat = json.loads(json.dumps(CATALOG))
    cat["skus"][1]["stock"] = {"wh-a": 20}
    run_flow(tmp_path, cli_env, lines, catalog=cat)
    cancels = [orjson.dumps({"type": "cancel", "order_id": o}) for o in ("X-1", "~x:X-1")]
    onestock("orders", "push", "-", env=cli_env, input=b"\n".join(cancels) + b"\n")
    onestock("run", "--until-drained", "--workers", "1", env=cli_env, timeout=60)
    out = onestock("fulfilments", env=cli_env).stdout.splitlines()
    recs = {r["order_id"]: r for r in map(orjson.loads, out)}
    dead = onestock("deadletters", env=cli_env).stdout.splitlines()
    assert set(recs) == {"X-1", *INTERNAL_LOOKING} and dead == []
    assert recs["X-1"]["status"] == "cancelled" and recs["~x:X-1"]["status"] == "cancelled"
    assert all(recs[o]["status"] == "accepted" for o in INTERNAL_LOOKING if o != "~x:X-1")
    store = Store.connect(url)
    # 20 loaded: X-1's 2 came back (1 returned, 1 by its cancel), "~x:X-1"'s by its cancel
    assert store.skus.stock_levels(["TEE"])["TEE"] == {"wh-a": 20 - len(INTERNAL_LOOKING) + 1}
    conserved(url, cat)


def test_a_location_named_like_a_gift_marker_ships_gifts(
    tmp_path: Path, cli_env: dict[str, str], url: str
) -> None:
    cat = json.loads(json.dumps(CATALOG))
    cat["locations"].append({"id": "-", "lat": 31.0, "lon": 121.0})
    cat["skus"].append({"sku": "TOTE", "stock": {"-": 5}})
    cat["campaigns"] = [{"id": "G", "sku": "TEE", "gift_sku": "TOTE", "first_n": 2,
                         "lateness_ms": 100}]  # fmt: skip
    lines = [orjson.dumps(order(f"g-{i}", ("TEE", 1))) for i in range(3)]
    recs, _, _ = run_flow(tmp_path, cli_env, lines, catalog=cat)
    gifts = {o: r["gift"] for o, r in recs.items() if r["gift"]}
    assert len(gifts) == 2 and all(g["location"] == "-" for g in gifts.values())
    conserved(url, cat)


def test_an_order_is_judged_by_one_catalog_never_a_mix(store: Store) -> None:
    """Two SKUs of one slot; the old catalog sells A to VIPs only, the new one B instead. A
    load half way (A written, B not yet) must not judge A by the new rules and B by the old
    (which would accept a non-VIP's A + B that both catalogs refuse): the order waits for
    the new catalog."""
    import threading

    from dataflows.decider import Decider
    from state import keys
    from tests.conftest import load
    from tests.helpers import raw

    def cat(vip_only: str) -> dict[str, Any]:
        skus = [{"sku": s, "stock": {"wh-a": 10}} for s in ("P}A", "P}B")]
        next(s for s in skus if s["sku"] == vip_only)["vip_presale_until"] = "2099-01-01T00:00:00Z"
        return {**CATALOG, "skus": skus}

    assert keys.sku_slot("P}A") == keys.sku_slot("P}B")
    load(store, cat("P}A"))
    d = Decider(store, say=lambda _m: None)
    d.refresh()
    real = store.skus.decide
    finish = threading.Timer(0.3, lambda: load(store, cat("P}B")))

    def half_loaded(*calls: Any) -> Any:  # A's rules of the new catalog are written, B's not
        store.skus.decide = real  # type: ignore[method-assign]
        store.r.hset(keys.stock("P}A"), mapping={keys.RULES_VERSION: 2})
        store.r.hdel(keys.stock("P}A"), keys.RULE_VIP_UNTIL)
        finish.start()
        return real(*calls)

    store.skus.decide = half_loaded  # type: ignore[method-assign, assignment]
    out = d.process(0, [("3-0", raw(order("mix", ("P}A", 1), ("P}B", 1))))])
    finish.join()
    assert out.records[2].endswith("vip_only")  # by the new catalog: B is for VIPs
    assert d.version == 2
