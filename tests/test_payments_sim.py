"""The randomized check's payments (``onestock/sim/pay.py``, ``onestock/sim/paycheck.py``):
the checker fails on doctored payment outputs; and the two product faults the check found
(fixed in db311bb), each as a minimal reproduction that stays as a regression test.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from onestock.domain.records import iso_ms
from onestock.sim.fast import run_fast
from onestock.sim.history import Event, History, generate
from onestock.sim.model import Observed, check
from onestock.sim.pay import AHEAD_MS, HOUR
from onestock.sim.run import soak
from state.store import Store
from tests.test_gifts import buy, catalog, final_records, send, setup
from tests.test_payments import Pipe, paid, pending, versions

PAY = "none,+payments"
# pending orders and payments with copies, cancels and returns (no campaign: quicker)
AROUND = "none,+payments,+dups,+cancels,+early_cancels,+returns"


def _classes(h: History) -> set[str]:
    """What the history's pending orders are: "far+paid" (a deadline an hour ahead, a
    payment after the order: certainly accepted), "past+paid" (a deadline an hour gone, a
    payment after it: certainly late)."""
    now = max((t for e in h.events if isinstance(t := (e.body or {}).get("paid_at"), int)),
              default=0) + AHEAD_MS  # fmt: skip
    out: set[str] = set()
    for i, e in enumerate(h.events):
        d = (e.body or {}).get("payment", {}).get("deadline")
        if e.kind != "order" or not isinstance(d, int):
            continue
        cls = "far" if d > now + HOUR / 2 else "past" if d < now - HOUR / 2 else "near"
        oid = (e.body or {})["order_id"]
        if any(_pays(x, oid) for x in h.events[i + 1 :]):
            out.add(f"{cls}+paid")
    return out


def _pays(e: Event, oid: str) -> bool:
    b = e.body or {}
    return e.kind == "paid" and b["order_id"] == oid and isinstance(b.get("paid_at"), int)


def _late(d: dict[str, Any]) -> bool:
    return "after the payment deadline" in d["reason"] or "expired unpaid" in d["reason"]


def _run(url: str) -> Observed:
    """The outputs of the first history (``PAY``) with a payment accepted and one refused
    late (the expiry may come first: "expired unpaid"), as far as the stock allowed."""
    from onestock.sim.features import Features

    f = Features.parse(PAY)
    seeds = (s for s in range(3000) if {"far+paid", "past+paid"} <= _classes(generate(s, f)))
    for seed in seeds:
        ob, _ = run_fast(generate(seed, f), url)
        paid = any(r["status"] == "accepted" and r["version"] == 2 for r in ob.versions)
        if paid and any(_late(d) for d in ob.deadletters):
            return ob
    raise AssertionError("no such history")


def _doctor(ob: Observed, how: str) -> Observed:
    bad = copy.deepcopy(ob)
    if how == "expire a paid order":
        rec = next(r for r in bad.versions if r["status"] == "accepted" and r["version"] == 2)
        rec["status"] = "expired"
    elif how == "lose a late payment's dead letter":
        late = next(d for d in bad.deadletters if _late(d))
        bad.deadletters.remove(late)
    elif how == "write a version twice":
        rec = next(r for r in bad.versions if r["status"] == "reserved")
        bad.versions.append(dict(rec))
    elif how == "date a payment by the worker":
        rec = next(r for r in bad.versions if r["status"] == "accepted" and r["version"] == 2)
        rec["received_at"] = iso_ms(int(time.time() * 1000))
    return bad


@pytest.mark.parametrize(
    ("how", "cls"),
    [
        ("expire a paid order", "payment.outcome"),
        ("lose a late payment's dead letter", "payment.outcome"),
        ("write a version twice", "version.sequence"),
        ("date a payment by the worker", "payment.accepted"),
    ],
)
def test_the_checker_reports_doctored_payments(url: str, how: str, cls: str) -> None:
    ob = _run(url)
    assert cls not in {c for c, _ in check(ob)}
    assert any(c == cls for c, _ in check(_doctor(ob, how)))


def test_the_checker_reports_a_payment_ranked_by_its_order(url: str) -> None:
    """A paid campaign order ranked by another paid_at than its payment's."""
    from onestock.sim.features import Features
    from onestock.sim.model import Checker

    f = Features.parse("none,+payments,+campaign")
    for seed in range(200):
        ob, _ = run_fast(generate(seed, f), url)
        c = Checker(ob)
        ranked = [oid for oid in ob.rank_paid if oid in c.paid_by]
        if ranked:
            break
    else:
        raise AssertionError("no history ranked a paid order")
    assert "firstn.paid_at" not in {cls for cls, _ in check(ob)}
    bad = copy.deepcopy(ob)
    bad.rank_paid[ranked[0]] += 1
    assert "firstn.paid_at" in {cls for cls, _ in check(bad)}


def test_a_soak_of_payments_alone_is_green(url: str) -> None:
    """A few histories of pending orders and payments only, with crashes aimed at them."""
    from onestock.sim.features import Features

    report = soak(0.25, "fast", Features.parse(AROUND), url=url, histories=6)
    assert not report.failures, report.summary()
    assert report.payments > 0


# -- bugs the check found ---------------------------------------------------------------


def test_a_payment_paid_decades_ahead_moves_no_first_n_watermark(store: Store) -> None:
    """Found by `python3 dev.py soak --seed 326932 --mode fast` (and 326898, 326901, 142414):
    `firstn.late`. An order paid in 2062 is rejected `invalid` and never reaches the first-N
    watermark (docs/gifts.md); a `paid` event paid in 2062, even one refused for an order
    that never came, did: every later candidate of its shard was ranked late."""
    ghost = {"type": "paid", "order_id": "ghost", "paid_at": "2062-06-01T00:00:00Z"}
    assert _ranks_after(store, ghost) == {"a": (1, None), "b": (2, None)}


def test_an_order_paid_decades_ahead_moves_no_first_n_watermark(store: Store) -> None:
    """The same with an order paid in 2062 (rejected `invalid`): no rank is late."""
    ghost: dict[str, Any] = buy("ghost", 0, ("SOCKS", 1))
    ghost["paid_at"] = "2062-06-01T00:00:00Z"
    assert _ranks_after(store, ghost) == {"a": (1, None), "b": (2, None)}


def _ranks_after(store: Store, ghost: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """A first-5 campaign (lateness 1 s): order a and ``ghost`` in one batch, a settlement,
    then order b paid 500 ms after a; the ranks settled (rank, late) per winner."""
    cat = catalog(first_n=5)
    cat["campaigns"][0]["lateness_ms"] = 1000
    d, seq = setup(store, cat), [0]
    send(d, [buy("a", 0), ghost], seq)
    d.settler.run()
    send(d, [buy("b", 500)], seq)
    d.settler.run(force=True)
    return {o: (r.gift.rank, r.late) for o, r in final_records(store).items() if r.gift}


def test_a_campaign_order_cancelled_while_held_has_versions_without_a_gap(store: Store) -> None:
    """Found by nearly every soak with campaigns (`version.held_gap`, e.g. `python3 dev.py
    soak --seed 792440 --mode fast`): the record held for the gift was never written, yet
    the cancellation took the next version ([2])."""
    d, seq = setup(store, catalog(first_n=3)), [0]
    send(d, [buy("o1", 0)], seq)  # accepted, its record held until the ranks settle
    send(d, [{"type": "cancel", "order_id": "o1"}], seq)
    got = [(r.status, r.version) for r in versions(store)["o1"]]
    assert got == [("cancelled", 1)]  # (the held record is replaced by the cancellation)


def test_a_paid_campaign_order_cancelled_while_held_has_versions_without_a_gap(
    store: Store,
) -> None:
    """Found by `python3 dev.py soak --seed 792444 --mode fast` (`version.held_gap`, 'o-050':
    versions [1, 3] of reserved, cancelled)."""
    p = Pipe(store, setup(store, catalog(first_n=3)))
    p.push(pending("o1", int(time.time() * 1000) + 3_600_000, ("SNEAKER", 1)))
    p.decide()
    p.push(paid("o1"))  # accepted: a candidate, its record held
    p.decide()
    p.push({"type": "cancel", "order_id": "o1"})
    p.decide()
    got = [(r.status, r.version) for r in versions(store)["o1"]]
    assert got == [("reserved", 1), ("cancelled", 2)]
