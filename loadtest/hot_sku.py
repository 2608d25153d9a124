"""Hot-SKU contention: many buyers, one SKU, tiny stock, a first-N gift.

Every order is one unit of HOT-1 (120 units over two warehouses and a store) from a
different buyer; the first 50 buyers (by paid_at) get a GIFT-1. After the run exactly the
stock is sold (when more orders than units were acknowledged), never more, and exactly
min(50, sold, gift units) gifts are given.

    onestock loadtest hot_sku --rate 300 --seconds 20
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import buyers
from onestock.domain.types import Campaign, Catalog, Channel, Location, Sku

UNITS = {"wh-shanghai": 60, "wh-beijing": 40, "st-hangzhou-1": 20}
FIRST_N, GIFTS = 50, 80


def catalog() -> Catalog:
    return Catalog(
        channels=[Channel("tmall"), Channel("jd"), Channel("douyin")],
        locations=[
            Location("wh-shanghai", lat=31.23, lon=121.47),
            Location("wh-beijing", lat=39.90, lon=116.40),
            Location("st-hangzhou-1", kind="store", lat=30.27, lon=120.15, pickup=True),
        ],
        skus=[Sku("HOT-1", dict(UNITS)), Sku("GIFT-1", {"wh-shanghai": GIFTS})],
        campaigns=[Campaign("HOT-FIRST-50", "HOT-1", "GIFT-1", FIRST_N, lateness_ms=500)],
    )


def rate(t: float, opts: Any) -> float:
    return float(opts.target_rate)


def orders() -> Orders:
    return Orders([("HOT-1", 1.0)], [("tmall", 0.5), ("jd", 0.3), ("douyin", 0.2)],
                  customers=10**9)  # fmt: skip


def checks(o: gate.Outcome) -> list[gate.Check]:
    sold = sum(ln.qty for r in o.records.values() if r.status == "accepted"
               for s in r.shipments for ln in s.lines)  # fmt: skip
    stock = sum(UNITS.values())
    want = min(stock, o.figures.decided)  # (orders in flight at the stop were decided too)
    gifts = sum(1 for r in o.records.values() if r.gift is not None)
    return [
        gate.Check("exactly the stock sold", sold == want, f"{sold} sold, {want} expected"),
        gate.Check(
            "exactly min(N, sold) gifts",
            gifts == min(FIRST_N, sold, GIFTS),
            f"{gifts} gifts, first_n {FIRST_N}",
        ),  # fmt: skip
    ]


SCENARIO = gate.Scenario("hot_sku", catalog, rate, 300.0, 20, checks)
gate.install(SCENARIO)


HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)
