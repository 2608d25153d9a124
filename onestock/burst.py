"""Synthetic Double-Eleven bursts: deterministic order events for the demo and the benchmark.

Pure generation (no Redis): customers spread over Chinese cities, most buying the hot SKU,
some multi-line baskets, some in-store pickups, and a sprinkle of garbage the pipeline must
survive.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import orjson

from onestock.domain.types import Campaign, Catalog, ChannelLock, catalog_decoder

# The burst's midnight: the start of the hour before this process began (paid_at times a
# fixed date would turn stale, dead letters, once it is more than the idempotency window ago:
# docs/memory.md); offsets from it, and so rankings and rules, are the same every run.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
CITIES = [  # (lat, lon) of buyers' home cities
    (31.23, 121.47), (39.90, 116.40), (23.13, 113.26), (30.27, 120.15), (22.54, 114.06),
    (30.57, 104.07), (30.59, 114.31), (32.06, 118.80), (34.34, 108.94), (29.56, 106.55),
]  # fmt: skip
GARBAGE = [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"channel": "tmall", "lines": []}',
    b'{"order_id": 42}',
]


def demo_catalog_bytes() -> bytes:
    return files("onestock").joinpath("demo/catalog.json").read_bytes()


def demo_catalog() -> Catalog:
    return catalog_decoder.decode(demo_catalog_bytes())


def rules_catalog() -> Catalog:
    """The demo catalog with every rule of the product on every SKU, for the benchmark: a
    per-customer limit of 3, a low-stock threshold, a VIP pre-sale for the first minute, and
    10% of each SKU's units locked for douyin for the first 30 minutes (a 1M-order burst is
    paid over ~50 minutes, so orders meet the lock both active and dissolved)."""
    cat = demo_catalog()
    for sku in cat.skus:
        units = sum(sku.stock.values())
        sku.per_customer_limit = 3
        sku.low_stock_threshold = units // 20
        sku.vip_presale_until = T0 + timedelta(minutes=1)
        sku.channel_locks = [
            ChannelLock(channel="douyin", qty=units // 10, until=T0 + timedelta(minutes=30))
        ]
    return cat


def bucket_catalog(buckets: int = 4, stock_scale: float = 1.0) -> Catalog:
    """The demo catalog with its hot SKU split into ``buckets`` hot-SKU buckets (and its
    stock scaled by ``stock_scale``, to sell out within a short burst)."""
    cat = demo_catalog()
    hot = cat.skus[0]
    hot.buckets = buckets
    hot.stock = {loc: int(q * stock_scale) for loc, q in hot.stock.items()}
    return cat


def accepted_catalog(stock_scale: int = 1000) -> Catalog:
    """The demo catalog with ``stock_scale`` x its stock: every order of a burst accepted
    (what an accepted order costs, where the demo burst is mostly sold out)."""
    cat = demo_catalog()
    for sku in cat.skus:
        sku.stock = {loc: q * stock_scale for loc, q in sku.stock.items()}
    return cat


def refused_catalog() -> Catalog:
    """The demo catalog with no stock anywhere: every valid order of a burst refused
    (``sold_out``; the pickups ``pickup_unavailable``): what a refused order costs."""
    return accepted_catalog(0)


def campaign_catalog(first_n: int = 1000, lateness_ms: int = 2000) -> Catalog:
    """The demo catalog with a first-N campaign: a TOTE-BAG for the first buyers of the hot
    SKU, ranked by paid_at."""
    cat = demo_catalog()
    cat.campaigns = [
        Campaign(id="D11-GIFT", sku=cat.skus[0].sku, gift_sku="TOTE-BAG", first_n=first_n,
                 lateness_ms=lateness_ms)
    ]  # fmt: skip
    return cat


def orders(
    n: int, catalog: Catalog, *, seed: int = 11, garbage: float = 0.001, baskets: float = 0.2
) -> Iterator[bytes]:
    """``n`` raw events (JSON bytes), paid over the first minutes after midnight.

    Mix: ``baskets`` two-SKU orders, 5% one line of another SKU, the rest one unit of the
    hot SKU; 5% in-store pickups; ``garbage`` lines the pipeline must survive.
    """
    rnd = random.Random(seed)
    skus = [s.sku for s in catalog.skus]
    hot = skus[0]
    channels = [c.id for c in catalog.channels if c.kind == "online"]
    pickups = [loc.id for loc in catalog.locations if loc.allows_pickup]
    for i in range(n):
        if rnd.random() < garbage:
            yield GARBAGE[i % len(GARBAGE)]
            continue
        lat, lon = rnd.choice(CITIES)
        r = rnd.random()
        if r < 0.95 - baskets:
            lines = [{"sku": hot, "qty": 1}]
        elif r < 0.95:
            lines = [{"sku": s, "qty": rnd.randint(1, 2)} for s in rnd.sample(skus, 2)]
        else:
            lines = [{"sku": rnd.choice(skus), "qty": rnd.randint(1, 3)}]
        delivery: dict[str, str] = {"mode": "ship"}
        if pickups and rnd.random() < 0.05:
            delivery = {"mode": "pickup", "store": rnd.choice(pickups)}
        paid = T0 + timedelta(milliseconds=i * 3 + rnd.randint(0, 50))
        yield orjson.dumps(
            {
                "order_id": f"D11-{i:08d}",
                "channel": rnd.choice(channels),
                "customer": {
                    "id": f"c-{rnd.randint(1, n // 2 + 1)}",
                    "vip": rnd.random() < 0.1,
                    "lat": round(lat + rnd.uniform(-0.3, 0.3), 4),
                    "lon": round(lon + rnd.uniform(-0.3, 0.3), 4),
                },
                "lines": lines,
                "delivery": delivery,
                "paid_at": paid.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
        )
