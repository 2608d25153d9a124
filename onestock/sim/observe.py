"""Reading a finished run back: the public outputs (as the commands print them) and two
internal views the checker needs beside them: every record version in the output streams
(a cancellation supersedes a record; the first one says what was taken) and the campaign's
settled ranks (a cancelled winner's rank stays used but is no longer printed).
"""

from __future__ import annotations

import io
import time
from typing import Any

import msgspec
import orjson

from onestock.domain.records import RS, SEP, packed_records, record_from_packed
from onestock.ops import availability
from onestock.ops import services as ops
from onestock.sim.model import ms
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


def ranked_at(store: Store, campaign_sku: str | None) -> dict[str, int]:
    """Order id -> the paid_at (epoch ms) its settled rank was given by."""
    if campaign_sku is None:
        return {}
    out = {}
    for fields in store.shards.merged([keys.ranks(campaign_sku)]):
        for entry in fields[b"v"].decode().split(RS):
            _, oid, _, _, _, paid = entry.split(SEP)
            out[oid] = int(paid)
    return out


FAR_MS = 10**13  # a reading time after every lock's end (the year 2286)

Availability = dict[int, dict[str, dict[str, tuple[int, str | None]]]]


def reading_times(cat: dict[str, Any], few: bool = False) -> list[int]:
    """When to read availability (epoch ms): while every lock holds, just before and at each
    lock's end, after them all; ``few``: only the first and the last."""
    untils = sorted({u for s in cat["skus"] for lk in s.get("channel_locks", [])
                     if (u := ms(lk["until"])) is not None})  # fmt: skip
    times = sorted({t for u in untils for t in (u - 1, u)} | {FAR_MS})
    return [times[0], times[-1]] if few and len(times) > 2 else times


def available_at(store: Store, times: list[int]) -> Availability:
    """``GET /availability``'s figures (``availability.read``), for every channel and SKU,
    at each of ``times``: at ms -> SKU -> channel -> (available, status)."""
    out: Availability = {}
    for at in times:
        doc = availability.read(store, at_ms=at)
        view: dict[str, dict[str, tuple[int, str | None]]] = out.setdefault(at, {})
        for ch, figures in doc["channels"].items():
            for sku, f in figures["skus"].items():
                view.setdefault(sku, {})[ch] = (f["available"], f["status"])
    return out


def from_stock(doc: dict[str, Any]) -> dict[str, dict[str, tuple[int, str | None]]]:
    """SKU -> channel -> (available, None) from what `onestock stock --json` prints."""
    return {sku: {ch: (n, None) for ch, n in v["available"].items()} for sku, v in doc.items()}


def audit(store: Store, shards: int, base: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    """The product's own stock audit (``ops.audit``: loaded + applied movements - shipped +
    given back = on hand), as a violation when it finds units off; then every record folded,
    trimmed and settled (state/ledger.py, as if every reader were past them and their
    generations swept): the audit must add up to the same. Last: it trims the streams."""
    got = ops.audit(store, shards, base)
    off = got.oversold
    out = [("audit.oversold", f"`ops.audit` finds {off} units off")] if off else []
    hi = -1
    for s in range(shards):
        store.ledger.fold_all(s)
        store.ledger.trim(s, f"{2**63}-0")
        hi = max(hi, int(store.r.hget(keys.tally(s), "hi") or -1))
    store.sweeper.mark(hi + 1, shards)  # (as if every generation were swept)
    store.ledger.settle(shards)
    after = ops.audit(store, shards, base)
    same = [f for f in ("records", "accepted", "rejected", "dead", "duplicates", "oversold",
                        "gifts", "first_decided_ms", "last_decided_ms")
            if getattr(after, f) != getattr(got, f)]  # fmt: skip
    if same:
        diff = ", ".join(f"{f} {getattr(got, f)} -> {getattr(after, f)}" for f in same)
        out.append(("audit.trimmed", f"`ops.audit` of the trimmed records differs: {diff}"))
    return out


def public(store: Store, shards: int, campaign: str | None, cat: dict[str, Any]) -> dict[str, Any]:
    """What `fulfilments`, `deadletters`, `returns`, `movements`, `stock --json`, `gifts
    --json` and `alerts` print, produced by the same functions the commands call (fast mode),
    and the availability at the reading times of ``cat`` (the catalog loaded last)."""

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
        "movements": lines(ops.write_movements, store, shards),
        "availability": available_at(store, reading_times(cat)),
    }


def capacity(store: Store, cat: dict[str, Any]) -> dict[tuple[str, int], set[str]]:
    """(location, day) -> the orders counted against the daily capacity of each location
    of ``cat`` that has one, on the days around now (UTC days since 1970)."""
    today = int(time.time() // 86_400)
    out: dict[tuple[str, int], set[str]] = {}
    for loc in cat["locations"]:
        if "daily_capacity" not in loc:
            continue
        for day in (today - 1, today, today + 1):
            got = store.r.hkeys(keys.capacity(loc["id"], day))
            out[(loc["id"], day)] = {k.decode() if isinstance(k, bytes) else str(k) for k in got}
    return out
