"""Webhook retry storm: Shopify redelivers (the same X-Shopify-Webhook-Id) 1-5 times for 30%
of the orders, some copies at once, some after a pause, as it does when acks are slow.

Every delivery must be acknowledged (202 the first time, 200 "duplicate" after), and every
order exactly once: one stored event and one fulfilment record per order, however many
copies arrived.

    onestock loadtest retry_storm --rate 300 --seconds 30
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import ShopifyHttp
from onestock import burst

CHANNEL = "app"  # the brand's Shopify store sells as its app channel (onestock loadtest sets it)


def rate(t: float, opts: Any) -> float:
    return float(opts.target_rate)


def orders() -> Orders:
    return Orders([("SNEAKER-42", 0.6), ("TEE-M", 0.3), ("JACKET-L", 0.1)], [(CHANNEL, 1.0)])


def checks(o: gate.Outcome) -> list[gate.Check]:
    stored = o.figures.intake_events.get("shopify", 0)
    dups = o.figures.intake.get("shopify:duplicate", 0)
    shopify = [oid for oid in o.records if oid.startswith("shopify-")]
    return [
        gate.Check(
            "one stored event per order",
            stored == len(shopify),
            f"{stored:,} stored, {len(shopify):,} orders decided",
        ),  # fmt: skip
        gate.Check("redeliveries answered as duplicates", dups > 0, f"{dups:,} duplicates"),
    ]


SCENARIO = gate.Scenario("retry_storm", burst.demo_catalog, rate, 300.0, 30, checks)
gate.install(SCENARIO)


class Webhooks(ShopifyHttp):
    rate = staticmethod(rate)
    make_orders = staticmethod(orders)
    retry_share = 0.3
