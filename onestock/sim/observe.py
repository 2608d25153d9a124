"""Reading a finished run back: the public outputs (as the commands print them) and two
internal views the checker needs beside them: every record version in the output streams
(a cancellation supersedes a record; the first one says what was taken) and the campaign's
settled ranks (a cancelled winner's rank stays used but is no longer printed).
"""

from __future__ import annotations

import io
from typing import Any

import msgspec
import orjson

from onestock.domain.records import RS, SEP, packed_records, record_from_packed
from onestock.ops import services as ops
from state import keys
from state.store import Store


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def versions(store: Store, shards: int) -> list[dict[str, Any]]:
    """Every record written to the output streams, in decision order."""
    return [
        msgspec.to_builtins(record_from_packed(p))
        for fields in store.shards.entries(keys.outbox, shards)
        for p in packed_records(fields)
    ]


def ranks(store: Store, campaign_sku: str | None) -> list[tuple[str, str, int, str, bool]]:
    """(campaign, order id, rank, gift location or ""/"-"/"x", late) of each settled rank."""
    if campaign_sku is None:
        return []
    out = []
    for fields in store.shards.merged([keys.ranks(campaign_sku)]):
        for entry in fields[b"v"].decode().split(RS):
            camp, oid, rank, loc, late, _paid = entry.split(SEP)
            out.append((camp, oid, int(rank), loc, late == "1"))
    return out


def public(store: Store, shards: int, campaign: str | None) -> dict[str, Any]:
    """What `fulfilments`, `deadletters`, `returns`, `stock --json`, `gifts --json` and
    `alerts` print, produced by the same functions the commands call (fast mode)."""

    def lines(write: Any, *args: Any) -> list[dict[str, Any]]:
        buf = io.BytesIO()
        write(*args, buf)
        return jsonl(buf.getvalue())

    stock = orjson.loads(msgspec.json.encode(ops.stock_view(store)))
    gifts = orjson.loads(msgspec.json.encode(ops.gifts(store, campaign))) if campaign else None
    return {
        "fulfilments": lines(ops.write_records, store, shards),
        "deadletters": lines(ops.write_deadletters, store, shards),
        "returns": lines(ops.write_returns, store, shards),
        "stock": stock,
        "gifts": gifts,
        "alerts": lines(ops.write_alerts, store),
    }
