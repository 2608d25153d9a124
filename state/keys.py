"""The key layout. Every key a script touches together shares one ``{hash tag}``.

- ``{s<N>}``: one input shard N: its input stream, its output streams, its registry of
  emitted order ids and its trim watermark, so ``emit.lua`` is one slot.
- ``{k:<sku>}``: one SKU: its stock per location, its decision records and its parts of
  orders that span slots, so ``decide.lua`` touches only SKUs of one slot.
"""

from __future__ import annotations

from redis.crc import key_slot

PREFIX = "os"
CATALOG = f"{PREFIX}:catalog"  # JSON of the loaded catalog
CATALOG_VERSION = f"{PREFIX}:catalog:version"  # INCR on every load; workers re-read on change
SHARDS = f"{PREFIX}:shards"  # K, fixed once the first event is pushed
STOCK_MARKER = "\x00sku"  # field present in every stock hash: the SKU exists even at 0 units
# The SKU's rules live beside its stock (fields that start with NUL are never locations), so
# one HGETALL gives a script everything it needs about the SKU.
RULE_LIMIT = "\x00limit"  # per_customer_limit, units
RULE_VIP_UNTIL = "\x00vip"  # vip_presale_until, epoch milliseconds
RULE_LOW = "\x00low"  # low_stock_threshold, units (the flag "\x00alerted" marks a fired alert)
# A channel lock of the SKU: its units, its end (epoch ms), and the units its channel drew
# from it so far (kept across catalog reloads while the SKU keeps a lock for that channel).
LOCK_QTY, LOCK_UNTIL, LOCK_USED = "\x00Lq:", "\x00Lu:", "\x00Lc:"
SEP = "\x1f"  # separates fields inside a stored outcome


def lock_qty(channel: str) -> str:
    return LOCK_QTY + channel


def lock_until(channel: str) -> str:
    return LOCK_UNTIL + channel


def shard_tag(shard: int) -> str:
    return f"{PREFIX}:{{s{shard}}}"


def inbox(shard: int) -> str:
    return f"{shard_tag(shard)}:in"


def outbox(shard: int) -> str:
    return f"{shard_tag(shard)}:out"


def deadbox(shard: int) -> str:
    return f"{shard_tag(shard)}:dl"


def emitted(shard: int) -> str:
    return f"{shard_tag(shard)}:done"


def counters(shard: int) -> str:
    return f"{shard_tag(shard)}:counts"


def watermark(shard: int) -> str:
    return f"{shard_tag(shard)}:wm"


def delivery(shard: int, source: str, delivery_id: str) -> str:
    """A webhook delivery id already stored (dedup; in the slot of the shard it went to)."""
    return f"{shard_tag(shard)}:hook:{source}:{delivery_id}"


def sku_tag(sku: str) -> str:
    return f"{PREFIX}:{{k:{sku}}}"


def stock(sku: str) -> str:
    return f"{sku_tag(sku)}:stock"


def decisions(sku: str) -> str:
    return f"{sku_tag(sku)}:dec"


def bought(sku: str) -> str:
    """Units of this SKU each customer was sold (per-customer limits)."""
    return f"{sku_tag(sku)}:bought"


def alerts(sku: str) -> str:
    """Low-stock and sold-out alerts of this SKU (a stream in its slot)."""
    return f"{sku_tag(sku)}:alerts"


def parts(sku: str) -> str:
    return f"{sku_tag(sku)}:parts"


_slots: dict[str, int] = {}


def sku_slot(sku: str) -> int:
    """The cluster hash slot of a SKU's keys (cached: it is asked for every order line)."""
    slot = _slots.get(sku)
    if slot is None:
        slot = _slots[sku] = key_slot(stock(sku).encode())
    return slot
