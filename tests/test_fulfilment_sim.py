"""The randomized check's fulfilment feedback (``onestock/sim/ship.py``,
``onestock/sim/shipcheck.py``): the checker fails on doctored re-routes, and the product
faults the check found, each as a minimal reproduction marked ``xfail(strict=True)`` until its
fix lands (then the mark goes, and the soak's switch with it).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dataflows.lifecycle import Lifecycle
from onestock.domain import sharding
from onestock.sim.fast import run_fast
from onestock.sim.features import Features
from onestock.sim.history import generate
from onestock.sim.model import Observed, check
from state import keys
from state.store import Store
from tests import test_gifts as gifts
from tests.helpers import order
from tests.test_fulfilment import buy, catalog, conserved, levels, said
from tests.test_gifts import SHARDS, setup
from tests.test_payments import Pipe, dead, versions

# re-routes without the rest (quicker); the first seeds of it with a write-off
SHIP = "none,+fulfilment,+dups,+cancels"


def _rerouted(url: str) -> Observed:
    """The outputs of the first ``SHIP`` history that re-routed an order to another location."""
    for seed in range(1, 60):
        ob, _ = run_fast(generate(seed, Features.parse(SHIP)), url)
        offs = {m["movement_id"] for m in ob.movements if m.get("kind") == "write_off"}
        again = [r for r in ob.versions if r["version"] > 1 and r["status"] == "accepted"]
        if offs and again:
            assert check(ob) == [], seed
            return ob
    raise AssertionError("no history re-routed an order")


def _doctor(ob: Observed, how: str) -> Observed:
    bad = copy.deepcopy(ob)
    offs = [m for m in bad.movements if m.get("kind") == "write_off"]
    if how == "writeoff_twice":
        bad.movements.append(dict(offs[0]))
    elif how == "writeoff_lost":
        bad.movements.remove(offs[0])
    elif how == "writeoff_lines":
        offs[0]["lines"] = [{**ln, "qty": ln["qty"] + 1} for ln in offs[0]["lines"]]
    elif how == "reroute_back":
        rec = next(r for r in bad.versions if r["version"] > 1 and r["status"] == "accepted")
        oid = rec["order_id"]
        gone = next(m for m in offs if m["movement_id"].startswith(oid + "@"))["location"]
        rec["shipments"][0]["location"] = gone
    elif how == "letter_lost":
        bad.deadletters = [d for d in bad.deadletters if "fulfilment refused" not in d["reason"]]
    return bad


@pytest.mark.parametrize(
    ("how", "cls"),
    [
        ("writeoff_twice", "ship.writeoff_count"),
        ("writeoff_lost", "ship.writeoff_count"),
        ("writeoff_lines", "ship.writeoff"),
        ("reroute_back", "ship.reroute_shape"),  # (the rejecting location ships again)
        ("letter_lost", "ship.letters"),
    ],
)
def test_the_checker_reports_doctored_reroutes(url: str, how: str, cls: str) -> None:
    got = {c for c, _ in check(_doctor(_rerouted(url), how))}
    assert cls in got, got


def test_a_clean_soak_of_fulfilment_histories(url: str) -> None:
    """A few histories with every input class."""
    f = Features.parse("all")
    for seed in (92, 94, 101):
        ob, _ = run_fast(generate(seed, f), url)
        assert check(ob) == [], seed


# --- faults the check found (not fixed yet) ------------------------------------------------


# Found as faults (seeds 74 and 36): an order rejected for daily capacity kept its
# per-customer-limit count and its first-N rank. Routing now leaves full locations out
# before deciding (admission.room); these orders are rejected by decide.lua itself.


def test_an_order_rejected_for_capacity_counts_against_no_limit(store: Store) -> None:
    cat = catalog()
    cat["locations"][1].update(daily_capacity=0, pickup=True)  # st-hz: no room today
    cat["skus"][0]["per_customer_limit"] = 1
    p = Pipe(store, setup(store, cat))
    same: dict[str, Any] = {"id": "c-same"}
    p.push({**order("pick", ("SOCKS", 1), pickup="st-hz"), "customer": same})
    p.decide()
    p.push({**buy("o1", ("SOCKS", 1)), "customer": same})
    p.decide()
    recs = versions(store)
    assert (recs["pick"][0].status, recs["pick"][0].reason) == ("rejected", "pickup_unavailable")
    assert recs["o1"][-1].status == "accepted", recs["o1"][-1].reason  # limit_exceeded today


def _one_batch(n: int) -> list[str]:
    """``n`` order ids of one shard: their orders are decided in one batch."""
    ids = [f"o{i}" for i in range(500)]
    shard = sharding.shard_of_id(ids[0], SHARDS)
    return [i for i in ids if sharding.shard_of_id(i, SHARDS) == shard][:n]


def _bought(store: Store, sku: str, customer: str) -> int:
    """Units of ``sku`` counted against ``customer``'s limit, over every generation."""
    prefix = keys.bought(sku, 0).rsplit(":", 1)[0]
    return sum(int(store.r.hget(k, customer) or 0) for k in store.r.keys(prefix + ":*"))


@pytest.mark.parametrize(
    "basket",
    [
        pytest.param(False, id="one_slot"),
        pytest.param(True, marks=pytest.mark.layout("slots"), id="cross_slot"),
        pytest.param(True, id="basket_one_call"),  # the one-server layout
    ],
)
def test_an_order_crowded_out_of_its_day_by_its_batch_takes_back_its_rules(
    store: Store, basket: bool
) -> None:
    """Two orders of one batch routed to the only location with the units, whose day has
    room for one: the second is rejected and gives back all its decision took: its units,
    its count against the customer's limit and its draw from its channel's lock (a rejected
    order never happened); the first keeps its own. (Found by the randomized check, input
    class ``capacity_rules``: seeds 409065, 409133.)"""
    cat = catalog()
    cat["locations"][0]["daily_capacity"] = 1
    lock = [{"channel": "tmall", "qty": 3, "until": "2099-01-01T00:00:00Z"}]
    cat["skus"] = [
        {"sku": "SOCKS", "stock": {"wh-sh": 5}, "per_customer_limit": 1, "channel_locks": lock},
        {"sku": "HAT", "stock": {"wh-sh": 5}, "per_customer_limit": 1},
    ]
    p = Pipe(store, setup(store, cat))
    lines = [("SOCKS", 1), ("HAT", 1)] if basket else [("SOCKS", 1)]
    first, second = _one_batch(2)
    p.push(buy(first, *lines), buy(second, *lines))
    p.decide()
    recs = versions(store)
    assert recs[first][-1].status == "accepted"
    assert (recs[second][-1].status, recs[second][-1].reason) == ("rejected", "sold_out")
    for sku, _ in lines:
        assert _bought(store, sku, f"c-{first}") == 1
        assert _bought(store, sku, f"c-{second}") == 0, sku
    # a replay of the rejection's give-backs (a crash after them) gives nothing twice
    store.skus.undo_units(
        [(second, [(sku, "wh-sh", 0, 0) for sku, _ in lines])], frozenset([second])
    )
    store.skus.unrule_parts(second, {sku for sku, _ in lines})
    for sku, _ in lines:
        assert _bought(store, sku, f"c-{second}") == 0, sku
    stock = store.r.hgetall(keys.stock("SOCKS"))
    assert int(stock[(keys.LOCK_USED + "tmall").encode()]) == 1
    assert store.skus.stock_levels(["SOCKS"])["SOCKS"]["wh-sh"] == 4
    conserved(store, {s["sku"]: s["stock"] for s in cat["skus"]})


@pytest.mark.xfail(
    strict=True,
    reason="known fault (capacity_rules, out of CI's soak): a late candidate ranked by another "
    "worker's settler before the day's count rejects it keeps its rank and gift",
)
def test_a_campaign_order_crowded_out_is_never_ranked_by_a_settler_meanwhile(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's settler runs between the decision and the days' count (an order read
    elsewhere put the watermark past the batch's paid_at + lateness: its orders come late).
    The order the full day rejects must not keep a rank and a gift (found by a review of the
    void: its give-back finds no candidacy left to end; a candidacy deferred until after the
    days, tried, broke replays across a catalog load and ranked orders past the campaign's
    end)."""
    cat = gifts.catalog(first_n=3)
    cat["locations"][0]["daily_capacity"] = 1
    cat["skus"][2]["stock"] = {"wh-bj": 100}  # (z counts against wh-bj's day, not wh-sh's)
    d = gifts.setup(store, cat)
    p = Pipe(store, d)
    first, second = _one_batch(2)
    p.push(gifts.buy("z", gifts.LATE + 10_000, ("SOCKS", 1)))  # read first, elsewhere
    p.decide()
    real = Lifecycle._capacity

    def racing(self: Lifecycle, *a: Any, **k: Any) -> None:
        d.settler.run()  # (as another worker's settler, between the decision and the count)
        real(self, *a, **k)

    monkeypatch.setattr(Lifecycle, "_capacity", racing)
    p.push(gifts.buy(first, 1000), gifts.buy(second, 2000))
    p.decide()
    monkeypatch.setattr(Lifecycle, "_capacity", real)
    for _ in range(3):
        d.settler.run(force=True)
        p.decide()
    recs = versions(store)
    assert recs[first][-1].status == "accepted", recs[first][-1]
    assert recs[second][-1].status == "rejected", recs[second][-1]
    assert recs[first][-1].gift is not None  # the kept one was ranked and got its gift
    totes = sum(store.skus.stock_levels(["TOTE"])["TOTE"].values())
    assert totes == 99, f"{totes} TOTE left: the rejected {second} took one"


@pytest.mark.xfail(
    strict=True,
    reason="known fault (capacity_rules, out of CI's soak): an order of the batch judged on "
    "what a later-voided decision took",
)
def test_a_void_order_leaves_no_limit_exceeded_on_its_batch_mate(store: Store) -> None:
    """b1 (customer c, 2 SOCKS, limit 2) is decided first and counts 2; b2 (customer c,
    1 SOCKS) of the same batch is then rejected limit_exceeded on that count. a0 and a1 fill
    wh-sh's day first, b1 has no other place for 2 units: it is rejected, void, and its count
    goes back; b2 stays refused on a count that never happened (with b1 void it fits the
    limit, and st-hz, 1 unit and room, would take it). Found by a review of the void."""
    cat = catalog()
    cat["locations"][0]["daily_capacity"] = 2  # wh-sh: room for 2 orders today
    cat["skus"] = [{"sku": "SOCKS", "stock": {"wh-sh": 5, "st-hz": 1}, "per_customer_limit": 2}]
    p = Pipe(store, setup(store, cat))
    a0, a1, b1, b2 = _one_batch(4)
    c: dict[str, Any] = {"id": "c-same"}
    p.push(
        buy(a0, ("SOCKS", 1)),
        buy(a1, ("SOCKS", 1)),
        {**buy(b1, ("SOCKS", 2)), "customer": c},
        {**buy(b2, ("SOCKS", 1)), "customer": c},
    )
    p.decide()
    recs = {o: (r[-1].status, r[-1].reason) for o, r in versions(store).items()}
    assert recs[b1] == ("rejected", "sold_out")
    assert _bought(store, "SOCKS", "c-same") == 0  # b1's count went back ...
    assert recs[b2][1] != "limit_exceeded", recs[b2]  # ... but b2 was refused on it


def test_a_campaign_order_rejected_for_capacity_holds_no_rank(url: str) -> None:
    f = Features.parse("none,+campaign,+fulfilment,+capacity,+capacity_rules")
    ob, _ = run_fast(generate(18, f), url)
    got = {c for c, _ in check(ob)}
    assert not got & {"firstn.rank_to_rejected", "audit.oversold", "stock.conservation"}, got


def test_a_fulfilment_of_an_order_cancelled_first_says_cancelled(store: Store) -> None:
    p = Pipe(store, setup(store, catalog()))
    p.push({"type": "cancel", "order_id": "o1"})
    p.decide()
    p.push(buy("o1", ("SOCKS", 1)))
    p.decide()
    p.push(said("o1", "wh-sh", "shipped"))
    p.decide()
    assert versions(store)["o1"][-1].status == "cancelled"
    (why,) = [r for r in dead(store) if r.startswith("fulfilment refused")]
    assert "the order was cancelled" in why, why


RETURNED = ("ops.audit counts units off after a sold_out re-route of an order with a return "
            "(the stock is right): python3 dev.py soak --seed 196 --mode fast --features "
            "all,-capacity_rules")  # fmt: skip


def _returned_then_rejected(store: Store, rejecter: str) -> dict[str, dict[str, int]]:
    """o1 ships SOCKS 1 and HAT 1 from wh-sh and HAT 1 from st-hz; a SOCKS comes back at
    wh-sh; then ``rejecter`` rejects its shipment and no other location has a HAT (the
    re-route ends sold_out). The stock levels after, the audit checked."""
    p = Pipe(store, setup(store, catalog()))
    p.push(buy("o1", ("SOCKS", 1), ("HAT", 2)))
    p.decide()
    p.push({"type": "return", "order_id": "o1", "lines": [{"sku": "SOCKS", "qty": 1}],
            "location": "wh-sh"})  # fmt: skip
    p.decide()
    p.push(said("o1", rejecter, "rejected"))
    p.decide()
    last = versions(store)["o1"][-1]
    assert (last.status, last.reason) == ("rejected", "sold_out")
    conserved(store)
    return levels(store)


def test_the_audit_of_a_sold_out_reroute_of_a_returned_order(store: Store) -> None:
    got = _returned_then_rejected(store, "st-hz")
    assert (got["SOCKS"]["wh-sh"], got["HAT"]["wh-sh"]) == (10, 1), got


def test_the_audit_of_a_sold_out_reroute_of_a_returned_shipment(store: Store) -> None:
    """The rejecting location's own shipment had a return (seed 825217): its units are the
    write-off's; only the other shipments' give-back is net of the returns."""
    got = _returned_then_rejected(store, "wh-sh")
    assert (got["SOCKS"]["wh-sh"], got["HAT"]["wh-sh"], got["HAT"]["st-hz"]) == (10, 0, 1), got
