"""Hot-SKU contention with the SKU split into hot-SKU buckets: many buyers, one SKU, tiny stock.

HOT-B (120 units over two warehouses and a store) is split over 4 buckets on 4 hash slots,
so its orders are decided in parallel slots and a dry bucket borrows from the others. After
the run exactly the stock is sold (when more orders than units were acknowledged), never
more, whichever bucket each unit started in.

    onestock loadtest hot_sku_buckets --rate 300 --seconds 20
"""

from __future__ import annotations

from typing import Any

from loadtest import gate
from loadtest.common import Orders
from loadtest.users import buyers
from onestock.domain.types import Catalog, Channel, Location, Sku

UNITS = {"wh-shanghai": 61, "wh-beijing": 39, "st-hangzhou-1": 20}
BUCKETS = 4


def catalog() -> Catalog:
    return Catalog(
        channels=[Channel("tmall"), Channel("jd"), Channel("pos", kind="store")],
        locations=[
            Location("wh-shanghai", lat=31.23, lon=121.47),
            Location("wh-beijing", lat=39.90, lon=116.40),
            Location("st-hangzhou-1", kind="store", lat=30.27, lon=120.15, pickup=True),
        ],
        skus=[Sku("HOT-B", dict(UNITS), buckets=BUCKETS)],
    )


def rate(t: float, opts: Any) -> float:
    return float(opts.target_rate)


def orders() -> Orders:
    return Orders([("HOT-B", 1.0)], [("tmall", 0.6), ("jd", 0.3), ("pos", 0.1)],
                  pickups=["st-hangzhou-1"], pickup_share=0.1, customers=10**9)  # fmt: skip


def checks(o: gate.Outcome) -> list[gate.Check]:
    sold = sum(ln.qty for r in o.records.values() if r.status == "accepted"
               for s in r.shipments for ln in s.lines)  # fmt: skip
    stock = sum(UNITS.values())
    want = min(stock, o.figures.decided)  # (orders in flight at the stop were decided too)
    return [gate.Check("exactly the stock sold", sold == want, f"{sold} sold, {want} expected")]


SCENARIO = gate.Scenario("hot_sku_buckets", catalog, rate, 300.0, 20, checks)
gate.install(SCENARIO)


HttpBuyers, StreamBuyers = buyers(rate, orders, __name__)
