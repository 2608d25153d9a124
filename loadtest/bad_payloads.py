"""Bad payloads mixed in: 10% wrong signature (401), 10% not JSON (400), 10% signed orders
that are not valid (a zero quantity: stored, then rejected as ``invalid``), 5% signed events
without an order id (stored, then dead letters); the rest good orders.

The intake must refuse what it must refuse, store the rest, and the pipeline keep going:
every stored event ends as a record or a dead letter.

    onestock loadtest bad_payloads --rate 300 --seconds 30
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import OrdersHttp
from onestock import burst


def rate(t: float, opts: Any) -> float:
    return float(opts.target_rate)


def orders() -> Orders:
    return Orders([("SNEAKER-42", 0.7), ("TEE-M", 0.3)], [("tmall", 0.5), ("jd", 0.5)])


def checks(o: gate.Outcome) -> list[gate.Check]:
    invalid = sum(1 for r in o.records.values() if r.reason == "invalid")
    refused = {k: n for k, n in o.figures.intake.items() if k.endswith(("unauthorized", "invalid"))}
    return [
        gate.Check("invalid orders rejected as invalid", invalid > 0, f"{invalid:,}"),
        gate.Check(
            "bad requests refused at the door",
            len(refused) == 2,
            ", ".join(f"{k} {n:,}" for k, n in sorted(refused.items())),
        ),  # fmt: skip
        gate.Check(
            "events without an order id became dead letters",
            o.figures.dead > 0,
            f"{o.figures.dead:,}",
        ),  # fmt: skip
    ]


SCENARIO = gate.Scenario("bad_payloads", burst.demo_catalog, rate, 300.0, 30, checks)
gate.install(SCENARIO)


class Buyers(OrdersHttp):
    rate = staticmethod(rate)
    make_orders = staticmethod(orders)
    mistakes = [(0.10, "bad signature"), (0.10, "not JSON"), (0.10, "invalid order"),
                (0.05, "no order id")]  # fmt: skip
