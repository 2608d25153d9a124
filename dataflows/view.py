"""The catalog as the decider needs it (``Decider.view``), rebuilt when its version changes:
id sets, rules, safety stock, routing, first-N campaign SKUs, hot-SKU bucket plans, payment
deadlines and what re-routing needs (locations' coordinates, claim timeouts, capacities)."""

from __future__ import annotations

from dataflows.buckets import BucketPlan
from dataflows.cross_slot import Rules
from dataflows.fulfilment import Places
from onestock.domain.routing import Router
from onestock.domain.types import Catalog


class CatalogView:
    """The catalog as the decider needs it, rebuilt when the catalog version changes."""

    def __init__(self, catalog: Catalog | None, version: int = 0) -> None:
        catalog = catalog or Catalog(channels=[], locations=[], skus=[])
        self.version = version  # the catalog version, as the scripts check it
        self.router = Router(catalog)
        self.channels = {c.id for c in catalog.channels}
        self.skus = {s.sku for s in catalog.skus}
        # SKUs with rules judged before the stock (per-customer limit, VIP pre-sale, locks)
        self.ruled = {
            s.sku
            for s in catalog.skus
            if s.per_customer_limit is not None
            or s.vip_presale_until is not None
            or s.channel_locks
        }
        self.locations = set(self.router.ids)
        by_id = {loc.id: loc for loc in catalog.locations}
        # units online channels cannot take, per location in router order (store channels can)
        self.safety = [by_id[loc].safety_stock for loc in self.router.ids]
        self.floors = {loc: n for loc, n in zip(self.router.ids, self.safety, strict=True) if n}
        self.store_channels = {c.id for c in catalog.channels if c.kind == "store"}
        self.fewest = int(catalog.routing == "fewest_shipments")
        limits = {s.sku: s.per_customer_limit for s in catalog.skus if s.per_customer_limit}
        presale = {
            s.sku: int(s.vip_presale_until.timestamp() * 1000)
            for s in catalog.skus
            if s.vip_presale_until is not None
        }
        bucketed = frozenset(s.sku for s in catalog.skus if s.buckets > 1)
        self.rules = Rules(
            self.ruled, limits, presale, self.floors, self.store_channels, bool(self.fewest),
            bucketed, version,
        )  # fmt: skip
        self.loc_index = {loc: i + 1 for i, loc in enumerate(self.router.ids)}
        # SKUs with a first-N gift campaign: their accepted orders' records wait for it
        self.campaign_skus = {c.sku for c in catalog.campaigns}
        self.buckets = BucketPlan(catalog, list(self.router.ids), self.floors, version)
        self.payment_deadline_ms = catalog.payment_deadline_s * 1000  # a pending order's default
        # what re-routing a rejected shipment needs (dataflows/fulfilment.py)
        coords: dict[str, tuple[float, float] | None] = {
            loc.id: (loc.lat, loc.lon) if loc.lat is not None and loc.lon is not None else None
            for loc in catalog.locations
        }
        timeouts = {loc.id: loc.claim_timeout_s * 1000 for loc in catalog.locations
                    if loc.claim_timeout_s is not None}  # fmt: skip
        capacity = {loc.id: loc.daily_capacity for loc in catalog.locations
                    if loc.daily_capacity is not None}  # fmt: skip
        self.places = Places(
            self.router, coords, dict(self.floors), list(self.router.ids), timeouts, capacity,
            self.buckets,
        )  # fmt: skip
