"""Catalog validation: the whole file is checked before anything is written.

Errors name the file and the JSON path (``catalog.json: $.skus[2].stock.wh-x: unknown
location``), so a user can fix the line without reading code.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from onestock.errors import CatalogError
from onestock.types import Catalog, catalog_decoder


def _check_id(where: str, value: str) -> None:
    if any(ord(ch) < 32 for ch in value):
        raise CatalogError(f"{where}: control characters are not allowed in ids")


def validate(catalog: Catalog, source: str = "catalog") -> Catalog:
    """Semantic checks msgspec cannot express: unique ids and references that resolve."""

    def fail(path: str, msg: str) -> None:
        raise CatalogError(f"{source}: {path}: {msg}")

    channels: set[str] = set()
    for i, ch in enumerate(catalog.channels):
        _check_id(f"{source}: $.channels[{i}].id", ch.id)
        if ch.id in channels:
            fail(f"$.channels[{i}].id", f"duplicate channel {ch.id!r}")
        channels.add(ch.id)
    locations: set[str] = set()
    for i, loc in enumerate(catalog.locations):
        _check_id(f"{source}: $.locations[{i}].id", loc.id)
        if loc.id in locations:
            fail(f"$.locations[{i}].id", f"duplicate location {loc.id!r}")
        if (loc.lat is None) != (loc.lon is None):
            fail(f"$.locations[{i}]", "give both lat and lon, or neither")
        locations.add(loc.id)
    skus: set[str] = set()
    for i, sku in enumerate(catalog.skus):
        _check_id(f"{source}: $.skus[{i}].sku", sku.sku)
        if sku.sku in skus:
            fail(f"$.skus[{i}].sku", f"duplicate SKU {sku.sku!r}")
        skus.add(sku.sku)
        for loc_id in sku.stock:
            if loc_id not in locations:
                fail(f"$.skus[{i}].stock.{loc_id}", f"unknown location {loc_id!r}")
        for j, lock in enumerate(sku.channel_locks):
            if lock.channel not in channels:
                fail(f"$.skus[{i}].channel_locks[{j}].channel", f"unknown channel {lock.channel!r}")
    campaigns: set[str] = set()
    for i, camp in enumerate(catalog.campaigns):
        if camp.id in campaigns:
            fail(f"$.campaigns[{i}].id", f"duplicate campaign {camp.id!r}")
        campaigns.add(camp.id)
        for name in ("sku", "gift_sku"):
            if getattr(camp, name) not in skus:
                fail(f"$.campaigns[{i}].{name}", f"unknown SKU {getattr(camp, name)!r}")
    return catalog


def parse(data: bytes, source: str = "catalog") -> Catalog:
    """Decode and validate catalog JSON; raises CatalogError naming the path."""
    try:
        catalog = catalog_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise CatalogError(f"{source}: not valid JSON: {exc}") from None
    return validate(catalog, source)


def read(path: Path) -> Catalog:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(data, str(path))


def merge(old: Catalog | None, new: Catalog) -> Catalog:
    """The catalog after loading ``new`` over ``old``: SKUs and campaigns it names are
    replaced, the others kept; channels and locations are those of ``new``."""
    if old is None:
        return new
    named = {s.sku for s in new.skus}
    camps = {c.id for c in new.campaigns}
    return Catalog(
        channels=new.channels,
        locations=new.locations,
        skus=[s for s in old.skus if s.sku not in named] + new.skus,
        campaigns=[c for c in old.campaigns if c.id not in camps] + new.campaigns,
    )
