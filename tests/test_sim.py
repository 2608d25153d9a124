"""The simulation (``onestock/sim``): randomized histories with crashes, kill -9 and Redis
restarts, checked against the contract's invariants; and a proof that the checker can fail.

The soak is the CI budget (about two minutes: fast mode, then CLI histories with kill -9);
skip it locally with ``-m "not slow"``. A failure names the one command that replays it.
``ONESTOCK_SIM_FEATURES`` overrides which input classes the soak generates (see
``onestock.sim.features.Features``; the default is what the pipeline passes today) and
``ONESTOCK_SIM_KNOWN`` names violation classes not to count.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from dataflows import movements as flow_movements
from onestock.sim.fast import run_fast
from onestock.sim.history import Features, generate
from onestock.sim.model import Observed, check
from onestock.sim.run import Report, soak
from state import movements as state_movements

# Input classes generated: all of them (each class the check found is fixed). A class that
# breaks again and cannot be fixed at once can be left out here, e.g. "all,-skew"
# (python3 dev.py soak --features all shows what fails).
# (capacity_rules: a known fault left, README "Limits": an order of a batch judged on what a
# decision of the same batch took that a full day then made void)
CI_FEATURES = os.environ.get("ONESTOCK_SIM_FEATURES", "all,-capacity_rules")
# Violation classes known and not fixed yet that no input switch avoids ("a,b"): not counted
# until their fix lands. None today.
KNOWN = frozenset(filter(None, os.environ.get("ONESTOCK_SIM_KNOWN", "").split(",")))
FAST_MINUTES = 1.6
CLI_HISTORIES = 3


def _failed(report: Report) -> str:
    return (
        report.summary()
        + "\n"
        + "\n".join(
            f"{f.replay()}\n  " + "\n  ".join(f"{c}: {d[:300]}" for c, d in f.violations[:10])
            for f in report.failures
        )
    )


def _doctor(ob: Observed, how: str) -> Observed:
    bad = copy.deepcopy(ob)
    if how == "drop a record":
        bad.fulfilments = bad.fulfilments[1:]
    elif how == "one more unit":
        sku = next(iter(bad.stock))
        loc = next(iter(bad.stock[sku]["locations"]))
        bad.stock[sku]["locations"][loc] += 1
    elif how == "lose a dead letter":
        bad.deadletters = [d for d in bad.deadletters if d["reason"].startswith("return")]
    elif how == "a gift out of turn":
        winners = sorted((r for r in bad.ranks), key=lambda r: r[2])
        if len(winners) >= 2:  # the first two ranks swapped
            a, b = winners[0], winners[1]
            bad.ranks = [(c, o, b[2] if o == a[1] else a[2] if o == b[1] else r, g, lt)
                         for c, o, r, g, lt in bad.ranks]  # fmt: skip
    return bad


@pytest.mark.parametrize(
    ("how", "cls"),
    [
        ("drop a record", "outcome.missing"),
        ("one more unit", "stock.conservation"),
        ("lose a dead letter", "dead.missing"),
        ("a gift out of turn", "firstn.order"),
    ],
)
def test_the_checker_reports_doctored_outputs(url: str, how: str, cls: str) -> None:
    """Real outputs of a history, then one thing changed: the checker must say so."""
    features = Features.parse("none,+garbage,+dups,+returns,+campaign")
    seed = next(
        s for s in range(1000)
        if (h := generate(s, features)).catalog.get("campaigns") and h.shards == 1
        and len(h.events) > 40
    )  # fmt: skip
    ob, _ = run_fast(generate(seed, features), url)
    before = {c for c, _ in check(ob)}
    if how == "a gift out of turn" and len({r[2] for r in ob.ranks}) < 2:
        pytest.skip("this history settled fewer than two ranks")
    after = check(_doctor(ob, how))
    assert cls not in before
    assert any(c == cls for c, _ in after), after


MOVES = Features.parse("none,+movements")


def _receipt_seed(skus: int) -> int:
    """A seed whose history (``MOVES``) has a well-formed receipt of ``skus`` SKUs (each in a
    hash slot of its own): certainly applied."""
    return next(
        s for s in range(1000)
        if any(e.kind == "movement" and (b := e.body or {})["movement_id"].startswith("MV-")
               and b["kind"] == "receipt" and len(b["lines"]) == skus
               for e in generate(s, MOVES).events)
    )  # fmt: skip


def _doctor_moves(ob: Observed, how: str) -> Observed:
    bad = copy.deepcopy(ob)
    if how == "record a movement twice":
        bad.movements.append(dict(bad.movements[-1]))
    elif how == "lose a movement record":
        bad.movements = bad.movements[1:]
    elif how == "refuse a receipt":
        rec = next(r for r in bad.movements if r["kind"] == "receipt" and r["status"] == "applied")
        rec.update(status="refused", reason="below_zero")
    elif how == "one more unit available":
        view = next(iter(bad.availability.values()))
        sku = next(iter(view))
        ch = next(iter(view[sku]))
        view[sku][ch] = (view[sku][ch][0] + 1, view[sku][ch][1])
    return bad


@pytest.mark.parametrize(
    ("how", "cls"),
    [
        ("record a movement twice", "movement.duplicate"),
        ("lose a movement record", "movement.missing"),
        ("refuse a receipt", "movement.status"),
        ("one more unit available", "availability.mismatch"),
    ],
)
def test_the_checker_reports_doctored_movements_and_availability(
    url: str, how: str, cls: str
) -> None:
    ob, _ = run_fast(generate(_receipt_seed(1), MOVES), url)
    assert cls not in {c for c, _ in check(ob)}
    assert any(c == cls for c, _ in check(_doctor_moves(ob, how)))


def test_the_checker_reports_a_movement_applied_twice(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product broken: every movement of one slot applied a second time."""
    real = state_movements.Movements.run

    def twice(self: Any, calls: list[state_movements.Call]) -> list[state_movements.Answer]:
        out = real(self, calls)
        again = [c._replace(movement_id=c.movement_id + "-again") for c in calls
                 if c.mode == state_movements.APPLY]  # fmt: skip
        real(self, again)
        return out

    monkeypatch.setattr(state_movements.Movements, "run", twice)
    ob, _ = run_fast(generate(_receipt_seed(1), MOVES), url)
    assert {"stock.conservation", "audit.oversold"} <= {c for c, _ in check(ob)}


def test_the_checker_reports_a_movement_half_applied(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product broken: a movement across slots commits in its first slot only; the
    others abort, and its record says refused."""
    real = flow_movements._second_round

    def half(plans: Any, answers: Any) -> Any:
        seen: set[int] = set()
        out = []
        for (i, slot), c in real(plans, answers):
            if c.mode == state_movements.COMMIT and i in seen:
                c = c._replace(mode=state_movements.ABORT, reason="below_zero\x1fby hand")
            seen.add(i)
            out.append(((i, slot), c))
        return out

    monkeypatch.setattr(flow_movements, "_second_round", half)
    h = generate(_receipt_seed(2), MOVES)
    h.layout = "slots"  # (in the one-server layout a movement is one call: nothing to half apply)
    ob, _ = run_fast(h, url)
    assert {"stock.conservation", "audit.oversold"} <= {c for c, _ in check(ob)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_fast_then_cli_with_kill_9() -> None:
    features = Features.parse(CI_FEATURES)
    fast = soak(FAST_MINUTES, "fast", features, ignore=KNOWN)
    cli = soak(10, "cli", features, histories=CLI_HISTORIES, ignore=KNOWN)
    assert fast.histories["fast"] > 20
    assert cli.faults >= CLI_HISTORIES  # every CLI history was killed or had Redis restarted
    assert not fast.failures and not cli.failures, _failed(fast) + "\n" + _failed(cli)
