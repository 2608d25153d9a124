"""Catalog validation: the whole file is checked before anything is written.

Errors name the file and the JSON path (``catalog.json: $.skus[2].stock.wh-x: unknown
location``), so a user can fix the line without reading code.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import msgspec

from onestock.domain.errors import CatalogError
from onestock.domain.events import text_problem
from onestock.domain.types import Catalog, RecordSubscriber, Sku, Subscriber, catalog_decoder


def _unique_ids(source: str, section: str, field: str, what: str, ids: list[str]) -> set[str]:
    """The set of ids of one catalog section; a duplicate or an unprintable id is refused."""
    seen: set[str] = set()
    for i, value in enumerate(ids):
        where = f"{source}: $.{section}[{i}].{field}"
        problem = text_problem(value)  # the same rule as for every id of an event
        if problem is not None:
            raise CatalogError(f"{where}: an id {problem}")
        if value in seen:
            raise CatalogError(f"{where}: duplicate {what} {value!r}")
        seen.add(value)
    return seen


def validate(catalog: Catalog, source: str = "catalog") -> Catalog:
    """Semantic checks msgspec cannot express: unique ids and references that resolve."""
    channels = _unique_ids(source, "channels", "id", "channel", [c.id for c in catalog.channels])
    locations = _unique_ids(
        source, "locations", "id", "location", [loc.id for loc in catalog.locations]
    )
    skus = _unique_ids(source, "skus", "sku", "SKU", [s.sku for s in catalog.skus])
    _unique_ids(source, "campaigns", "id", "campaign", [c.id for c in catalog.campaigns])
    for i, loc in enumerate(catalog.locations):
        if (loc.lat is None) != (loc.lon is None):
            _fail(source, f"$.locations[{i}]", "give both lat and lon, or neither")
    for i, sku in enumerate(catalog.skus):
        _check_sku(source, f"$.skus[{i}]", sku, channels, locations)
    bucketed = {s.sku for s in catalog.skus if s.buckets > 1}
    for i, camp in enumerate(catalog.campaigns):
        for name in ("sku", "gift_sku"):
            where, value = f"$.campaigns[{i}].{name}", getattr(camp, name)
            if value not in skus:
                _fail(source, where, f"unknown SKU {value!r}")
            if value in bucketed:
                _fail(source, where, f"SKU {value!r} is split into buckets (campaigns need one)")
    _unique_ids(source, "subscribers", "id", "subscriber", [s.id for s in catalog.subscribers])
    for i, sub in enumerate(catalog.subscribers):
        _check_subscriber(source, f"$.subscribers[{i}]", sub, channels)
    rsubs = catalog.record_subscribers
    _unique_ids(source, "record_subscribers", "id", "record subscriber", [s.id for s in rsubs])
    for i, rsub in enumerate(rsubs):
        _check_subscriber(source, f"$.record_subscribers[{i}]", rsub, locations)
    return catalog


def _fail(source: str, path: str, msg: str) -> NoReturn:
    raise CatalogError(f"{source}: {path}: {msg}")


def _check_sku(source: str, at: str, sku: Sku, channels: set[str], locations: set[str]) -> None:
    """One SKU's stock locations, channel locks (one per known channel) and, split into
    buckets, no rule that counts per SKU."""
    for loc_id in sku.stock:
        if loc_id not in locations:
            _fail(source, f"{at}.stock.{loc_id}", f"unknown location {loc_id!r}")
    locked: set[str] = set()
    for j, lock in enumerate(sku.channel_locks):
        where = f"{at}.channel_locks[{j}].channel"
        if lock.channel not in channels:
            _fail(source, where, f"unknown channel {lock.channel!r}")
        if lock.channel in locked:
            _fail(
                source, where,
                f"a second lock for channel {lock.channel!r} (one lock per channel and SKU)",
            )  # fmt: skip
        locked.add(lock.channel)
    if sku.buckets > 1:
        # Rules that count per SKU (a customer's units, a lock's draws, a threshold) would
        # count per bucket: refused rather than judged wrongly.
        for rule in ("per_customer_limit", "low_stock_threshold", "channel_locks"):
            if getattr(sku, rule):
                _fail(source, f"{at}.buckets", f"a SKU split into buckets cannot have {rule}")


SECRET_PREFIX = "whsec_"  # Standard Webhooks: "whsec_" + the key in base64


def _check_subscriber(
    source: str, at: str, sub: Subscriber | RecordSubscriber, known: set[str]
) -> None:
    """A webhook subscriber: an http(s) URL with a host, a Standard Webhooks secret, and
    known channels (a record subscriber: locations), each once."""
    try:
        url = urlsplit(sub.url)
        url.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        _fail(source, f"{at}.url", f"not a URL: {exc}")
    if url.scheme not in ("http", "https") or not url.hostname:
        _fail(source, f"{at}.url", f"want an http:// or https:// URL with a host, not {sub.url!r}")
    if not sub.url.isprintable():
        _fail(source, f"{at}.url", "contains unprintable characters")
    if not sub.secret.startswith(SECRET_PREFIX):
        _fail(source, f"{at}.secret", f'want "{SECRET_PREFIX}" followed by the key in base64')
    key = sub.secret[len(SECRET_PREFIX) :]
    try:
        ok = bool(base64.b64decode(key + "=" * (-len(key) % 4), validate=True))
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        _fail(source, f"{at}.secret", f'the key after "{SECRET_PREFIX}" is not base64')
    record = isinstance(sub, RecordSubscriber)
    field, what = ("locations", "location") if record else ("channels", "channel")
    seen: set[str] = set()
    for j, ref in enumerate(getattr(sub, field)):
        if ref not in known:
            _fail(source, f"{at}.{field}[{j}]", f"unknown {what} {ref!r}")
        if ref in seen:
            _fail(source, f"{at}.{field}[{j}]", f"{what} {ref!r} given twice")
        seen.add(ref)


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
    replaced, the others kept; channels, locations and subscribers are those of ``new``."""
    if old is None:
        return new
    named = {s.sku for s in new.skus}
    camps = {c.id for c in new.campaigns}
    return Catalog(
        channels=new.channels,
        locations=new.locations,
        skus=[s for s in old.skus if s.sku not in named] + new.skus,
        campaigns=[c for c in old.campaigns if c.id not in camps] + new.campaigns,
        subscribers=new.subscribers,
        record_subscribers=new.record_subscribers,
        routing=new.routing,
        payment_deadline_s=new.payment_deadline_s,
    )
