"""Multi-channel mix with pickups: every channel at once against one inventory.

Tmall, JD, Douyin, the brand's app and the stores' POS (a store channel: it may sell a
store's safety stock), 20% two-SKU baskets, 10% in-store pickups at the stores that offer
them, at a steady target rate. After the run every channel and both delivery modes must
have accepted orders, and nothing is oversold.

    onestock loadtest multichannel --rate 500 --seconds 30
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import buyers
from onestock import burst

CHANNELS = [("tmall", 0.35), ("jd", 0.25), ("douyin", 0.2), ("app", 0.12), ("pos", 0.08)]
PICKUPS = ["st-hangzhou-1", "st-shenzhen-1", "st-chengdu-1", "st-wuhan-1", "st-nanjing-1",
           "st-xian-1"]  # fmt: skip


def rate(t: float, opts: Any) -> float:
    return float(opts.target_rate)


def orders() -> Orders:
    return Orders(
        [("SNEAKER-42", 0.4), ("SNEAKER-43", 0.2), ("TEE-M", 0.2), ("JACKET-L", 0.1),
         ("TOTE-BAG", 0.1)],  # fmt: skip
        CHANNELS, pickups=PICKUPS, pickup_share=0.1, basket_share=0.2,
    )  # fmt: skip


def checks(o: gate.Outcome) -> list[gate.Check]:
    accepted = [r for r in o.records.values() if r.status == "accepted"]
    channels = {r.channel for r in accepted}
    modes = {s.mode for r in accepted for s in r.shipments}
    want = {c for c, _ in CHANNELS}
    return [
        gate.Check(
            "every channel sold", channels >= want, ", ".join(sorted(c or "" for c in channels))
        ),
        gate.Check("shipped and picked up", modes == {"ship", "pickup"}, ", ".join(sorted(modes))),
    ]


SCENARIO = gate.Scenario("multichannel", burst.demo_catalog, rate, 300.0, 30, checks)
gate.install(SCENARIO)


HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)
