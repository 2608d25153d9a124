"""The entry point to onestock's state in Redis: ``Store.connect(url)``, whose parts each
touch one kind of key (``keys.py`` names them all):

- ``store.shards`` (``state.shards``): the input shards' keys: input and output streams,
  registry, watermark, decide mark; appending, reading, writing decided batches;
- ``store.skus`` (``state.skus``): the SKUs' keys: stock and rules, decisions, parts of
  orders across slots, units sold per customer; planning reads and the deciding scripts;
- ``store.campaigns`` (``state.campaigns``): first-N gift campaigns;
- ``store.buckets`` (``state.buckets``): hot-SKU buckets and the moves between them;
- ``store.movements`` (``state.movements``): stock movements (receipts, sales, counts...);
- ``store.feed`` (``state.feed``): the availability change feed;
- ``store.ledger`` (``state.ledger``): folding and trimming the output streams.

The Store itself holds the catalog (``keys.CATALOG``, ``keys.CATALOG_VERSION``): loading one
writes the stock and rules of the SKUs it names through ``skus``.

Every multi-key operation is one Lua script over keys of one hash slot (see ``keys.py``), so
the same code runs against a single server and a Redis Cluster. What one script call may span
is the dataset's layout (``Store.layout``): on a single server any SKUs (a basket is decided in
one call), on a Cluster one slot's (a basket across slots is reserved slot by slot).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from redis.cluster import RedisCluster

from onestock.domain.errors import OnestockError
from onestock.domain.types import Catalog, Sku, catalog_decoder, json_encoder
from state import keys
from state.buckets import Buckets, split
from state.campaigns import Campaigns
from state.conn import Redis, connect, lua
from state.feed import Feed
from state.fulfilment import Shipments
from state.gens import Gen, Sweeper
from state.ledger import Ledger
from state.movements import Movements
from state.payments import Payments
from state.shards import Shards
from state.skus import Skus, campaign_fields, rule_fields
from state.stock import Alone, Lock

__all__ = ["Alone", "Lock", "Store"]  # (Alone and Lock: for dataflows/refusals.py)

# The layout a fresh single-server dataset takes (keys.LAYOUT_ONE unless this says "slots":
# the tests and the randomized check run the slot-by-slot path on one server with it)
LAYOUT_ENV = "ONESTOCK_LAYOUT"


class Store:
    """Domain operations on one Redis (or Redis Cluster)."""

    def __init__(self, client: Redis) -> None:
        self.r = client
        self._layout: str | None = None
        # The group of script calls a SKU belongs to (``layout``): SKUs of one group may
        # share a call. Resolved on first use.
        self.slot: Callable[[str], int] = self._first_slot
        self.buckets = Buckets(
            client, client.register_script(lua("lend")), client.register_script(lua("receive"))
        )
        # The catalog SKUs whose stock this process's scripts may have changed since the
        # availability feed was last told (``Decider.emit`` hands them to ``feed.mark``)
        self.touched: set[str] = set()
        # The generation of the idempotency state this process writes in (state/gens.py):
        # the decider sets it for each part of a batch; every part of the store shares it.
        self.gen = gen = Gen()
        self.sweeper = Sweeper(client)
        self.shards = Shards(client, self.campaign_skus, gen)
        self.skus = Skus(client, self.buckets, self.touched, gen, lambda sku: self.slot(sku))
        self.campaigns = Campaigns(client, self.touched, gen)
        self.movements = Movements(client, self.touched, gen)
        self.payments = Payments(client, gen)
        self.shipments = Shipments(client, self.touched, gen)
        self.feed = Feed(client)
        self.ledger = Ledger(client, self.shards)
        self._camps: tuple[int, set[str]] | None = None  # (catalog version, campaign SKUs)

    @classmethod
    def connect(cls, url: str) -> Store:
        return cls(connect(url))

    def layout(self) -> str:
        """The dataset's layout (``keys.LAYOUT``), fixed by the first process that asks: a
        Cluster's is LAYOUT_SLOTS (a key saying otherwise: a dataset moved there, refused);
        a fresh single-server dataset's LAYOUT_ONE (or what ONESTOCK_LAYOUT says); one with
        a catalog but no layout key predates the key: it was decided slot by slot, and
        stays so (its parts and decisions live there)."""
        if self._layout is None:
            self._layout = self._resolve()
            self.slot = keys.sku_slot if self._layout == keys.LAYOUT_SLOTS else keys.one_slot
        return self._layout

    def _resolve(self) -> str:
        got = self.r.get(keys.LAYOUT)
        if isinstance(self.r, RedisCluster):  # (a dataset decided on one server, moved here)
            if got is not None and got != keys.LAYOUT_SLOTS.encode():
                raise OnestockError(
                    f"Redis key {keys.LAYOUT} holds {got!r}: a dataset of the one-server layout "
                    "cannot be decided on a Redis Cluster (its baskets' replays would take "
                    "their units again)"
                )
            self.r.set(keys.LAYOUT, keys.LAYOUT_SLOTS, nx=True)
            return keys.LAYOUT_SLOTS
        if got is None:
            want = os.environ.get(LAYOUT_ENV) or keys.LAYOUT_ONE
            if want not in (keys.LAYOUT_ONE, keys.LAYOUT_SLOTS):
                raise OnestockError(f"{LAYOUT_ENV}={want!r}: expected 'one' or 'slots'")
            if self.r.exists(keys.CATALOG_VERSION):
                want = keys.LAYOUT_SLOTS
            self.r.set(keys.LAYOUT, want, nx=True)
            got = self.r.get(keys.LAYOUT)
        layout = got.decode() if isinstance(got, bytes) else str(got)
        if layout not in (keys.LAYOUT_ONE, keys.LAYOUT_SLOTS):
            raise OnestockError(
                f"Redis key {keys.LAYOUT} holds {layout!r}: expected 'one' or 'slots'"
            )
        return layout

    def _first_slot(self, sku: str) -> int:
        self.layout()
        return self.slot(sku)

    def memory_used(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    # -- catalog ---------------------------------------------------------------------------

    def catalog(self) -> tuple[int, Catalog | None]:
        version, raw = self.r.get(keys.CATALOG_VERSION), self.r.get(keys.CATALOG)
        return int(version or 0), catalog_decoder.decode(raw) if raw else None

    def catalog_version(self) -> int:
        return int(self.r.get(keys.CATALOG_VERSION) or 0)

    def campaign_skus(self) -> set[str]:
        """The campaign SKUs of the loaded catalog (read again when its version moves)."""
        version = self.catalog_version()
        if self._camps is None or self._camps[0] != version:
            _, cat = self.catalog()
            self._camps = (version, {c.sku for c in cat.campaigns} if cat else set())
        return self._camps[1]

    def load_catalog(self, catalog: Catalog, replace_stock: Iterable[str]) -> None:
        """Store the (already validated and merged) catalog; replace stock of the named SKUs."""
        # The layout is fixed before the first catalog (a dataset with one has a layout), and
        # asked again here: the database may have been emptied since this process asked
        self._layout = None
        self.layout()
        by_sku = {s.sku: s for s in catalog.skus}
        camps = campaign_fields(catalog.campaigns)  # the definitions beside the SKU's stock
        named = set(replace_stock)
        old_version, old = self.catalog()
        # Every stock hash this load writes says which catalog it belongs to; the version
        # itself moves last, so a decider never reads a version whose rules are half written.
        version = old_version + 1
        before = {s.sku: s.buckets for s in old.skus} if old is not None else {}
        floors = {loc.id: loc.safety_stock for loc in catalog.locations if loc.safety_stock}
        for name in replace_stock:
            sku = by_sku[name]
            if sku.buckets > 1 or before.get(name, 1) > 1:
                self._load_buckets(sku, before.get(name, 1), floors, camps.get(name, []), version)
                continue
            self.skus.set_stock(name, sku.stock, rule_fields(sku, version) + camps.get(name, []))
        for name, fields in camps.items():
            if name not in named:
                self.skus.set_campaigns(name, fields, version)
        self.r.set(keys.CATALOG, json_encoder.encode(catalog))
        self.r.set(keys.CATALOG_VERSION, version)

    def _load_buckets(
        self, sku: Sku, before: int, floors: dict[str, int], camps: list[Any], version: int
    ) -> None:
        """Replace a bucketed SKU's stock (or one that was bucketed): split over its buckets,
        under the SKU's mover lease so no transfer is half way; buckets it no longer has go."""
        with self.buckets.lease(sku.sku):
            self.buckets.clear_in_flight(sku.sku, max(before, sku.buckets))
            for b, levels in enumerate(split(sku, floors)):
                rules = rule_fields(sku, version) + (camps if b == 0 else [])
                self.skus.set_stock(keys.bucket(sku.sku, b), levels, rules)
            for b in range(sku.buckets, before):
                self.r.delete(keys.stock(keys.bucket(sku.sku, b)))
