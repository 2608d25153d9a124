"""Stored outcomes <-> fulfilment records.

A decision is stored compactly (``Code.ACCEPTED`` + location/sku/qty triples, or
``Code.REJECTED`` + reason [+ detail], fields separated by ``SEP``) and an output stream entry
is one packed string; the public JSON record of the contract is rebuilt from it on export.
This keeps a 20-million-order day small.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from onestock.domain.protocol import BUCKET, GS, RS, SEP, Code, ProtocolError, code_of
from onestock.domain.types import (
    DeadLetter,
    FulfilmentRecord,
    Gift,
    ReturnRecord,
    ShipLine,
    Shipment,
    json_encoder,
)


def head(
    oid: str,
    channel: str,
    paid: str,
    mode: str,
    received_ms: str,
    decided_ms: str,
    version: str = "",
) -> str:
    """The fields of a packed record before its gift, late flag and outcome (``oid`` and
    ``mode`` hold no separator: decoding refuses control characters in an order id);
    ``version`` "" is 1."""
    if not channel.isprintable():  # (the usual answer is the fast one)
        channel = _clean(channel)
    if not paid.isprintable():
        paid = _clean(paid)
    return (
        f"{oid}{SEP}{channel}{SEP}{paid}{SEP}{mode}{SEP}{received_ms}{SEP}{decided_ms}{SEP}"
        f"{version}"
    )


def pack(
    oid: str,
    channel: str,
    paid: str,
    mode: str,
    received_ms: str,
    decided_ms: str,
    outcome: str,
    version: str = "",
) -> str:
    """One record of an output stream entry (field ``v``): head, gift ("" or campaign GS sku
    GS rank GS location), late ("" or "1"), then the outcome, last since it holds SEPs."""
    rec_head = head(oid, channel, paid, mode, received_ms, decided_ms, version)
    return f"{rec_head}{SEP}{SEP}{SEP}{outcome}"


# the status of a record per the code its outcome starts with
_STATUS = {
    Code.ACCEPTED: "accepted",
    Code.REJECTED: "rejected",
    Code.CANCELLED: "cancelled",
    Code.RESERVED: "reserved",
    Code.EXPIRED: "expired",
}


def held(record_head: str, outcome: str) -> str:
    """A record held until its gift is settled (``release_held.lua`` fills gift and late)."""
    return f"{record_head}{GS}{outcome}"


def _clean(text: str) -> str:
    if SEP in text or RS in text:
        return text.replace(SEP, "\ufffd").replace(RS, "\ufffd")
    return text


def rejected(reason: str, detail: str | None = None) -> str:
    r = Code.REJECTED
    return f"{r}{SEP}{reason}" if detail is None else f"{r}{SEP}{reason}{SEP}{detail}"


def iso_ms(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC with milliseconds, e.g. 2026-11-11T00:00:00.180Z."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def allocations(outcome: str) -> list[tuple[str, str, int]]:
    """An accepted outcome's (location, SKU, qty) in the record's order: grouped by location,
    the locations in the order they first appear, each one's in allocation order. A re-route
    appends what it took at a location the order may already ship from; the record shows it
    with that location, and what counts "last" (returned units are taken off the last
    allocations first: ``Aftersale.undo``) follows the record."""
    fields = outcome.split(SEP)
    return by_location([(fields[i], fields[i + 1], int(fields[i + 2]))
                        for i in range(1, len(fields) - 2, 3)])  # fmt: skip


def by_location(allocs: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """(location, SKU, qty) allocations grouped by location, the locations in the order they
    first appear, each one's in their order: the record's order (``allocations``)."""
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for a in allocs:
        groups.setdefault(a[0], []).append(a)
    return [a for group in groups.values() for a in group]


def shipments(outcome: str, mode: str) -> list[Shipment]:
    """Accepted outcome -> shipments grouped by location (``allocations``' order)."""
    by_loc: dict[str, Shipment] = {}
    for loc, sku, qty in allocations(outcome):
        ship = by_loc.get(loc)
        if ship is None:
            ship = by_loc[loc] = Shipment(location=loc, mode=mode, lines=[])
        # a hot SKU's bucket (``state.keys.bucket``) is shown as the SKU
        ship.lines.append(ShipLine(sku=sku.partition(BUCKET)[0], qty=qty))
    return list(by_loc.values())


class Outcome(NamedTuple):
    """What the audit reads of a packed record (``record_from_packed`` without the times)."""

    order_id: str
    status: str
    reason: str | None
    shipments: list[Shipment]
    gift: str  # the gift field ("" or campaign GS sku GS rank GS location)


def _status(outcome: str) -> tuple[Code, str]:
    """The code a record's outcome starts with, and the record's status."""
    code = code_of(outcome)
    status = _STATUS.get(code)
    if status is None:
        raise ProtocolError(f"a fulfilment record of outcome {outcome[:40]!r}")
    return code, status


def outcome_of(packed: str) -> Outcome:
    """The order id, status, reason, shipments and gift field of a packed record."""
    oid, _, _, mode, _, _, _, gift, _, outcome = packed.split(SEP, 9)
    code, status = _status(outcome)
    if code is Code.REJECTED:
        return Outcome(oid, status, outcome.split(SEP, 2)[1], [], gift)
    return Outcome(oid, status, None, shipments(outcome, mode), gift)


def record_from_packed(packed: str) -> FulfilmentRecord:
    """One output stream entry -> the contract's fulfilment record."""
    oid, channel, paid, mode, received, decided, version, gift, late, outcome = packed.split(SEP, 9)
    code, status = _status(outcome)
    if code is not Code.ACCEPTED and code is not Code.REJECTED:
        # cancelled, expired: the shipments listed are what was given back; reserved: what
        # is held for the order
        return FulfilmentRecord(
            order_id=oid, status=status, reason=None,  # type: ignore[arg-type]
            channel=channel or None, shipments=shipments(outcome, mode), gift=None,
            paid_at=paid or None, received_at=iso_ms(int(received)),
            decided_at=iso_ms(int(decided)), version=int(version or 1),
        )  # fmt: skip
    accepted = code is Code.ACCEPTED
    parts = [] if accepted else outcome.split(SEP, 2)
    g = None
    if gift:
        camp, sku, rank, loc = gift.split(GS)
        g = Gift(campaign=camp, sku=sku, rank=int(rank), location=loc)
    return FulfilmentRecord(
        order_id=oid,
        status="accepted" if accepted else "rejected",
        reason=None if accepted else parts[1],
        channel=channel or None,
        shipments=shipments(outcome, mode) if accepted else [],
        gift=g,
        paid_at=paid or None,
        received_at=iso_ms(int(received)),
        decided_at=iso_ms(int(decided)),
        detail=parts[2] if len(parts) > 2 else None,
        late=True if late else None,
        version=int(version or 1),
    )


def return_from_packed(packed: str) -> ReturnRecord:
    """One returns stream record -> an accepted return (where the units went back)."""
    oid, _, _, _, received, decided, _, _, _, outcome = packed.split(SEP, 9)
    f = outcome.split(SEP)
    lines = [ShipLine(sku=f[i + 1], qty=int(f[i + 2])) for i in range(1, len(f) - 2, 3)]
    return ReturnRecord(oid, f[1], lines, iso_ms(int(received)), iso_ms(int(decided)))


def packed_records(fields: dict[bytes, bytes]) -> list[str]:
    """The packed records of one output stream entry (one decided batch)."""
    return fields[b"v"].decode().split(RS)


def encode_record(rec: FulfilmentRecord) -> bytes:
    """JSON of a record; ``detail`` appears only on records that have one."""
    raw = json_encoder.encode(rec)
    if rec.detail is None:
        raw = raw.replace(b',"detail":null', b"")
    if rec.late is None:
        raw = raw.replace(b',"late":null', b"")
    return raw


def dead_from_entry(fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        raw=fields[b"raw"].decode(errors="replace"), reason=fields[b"reason"].decode()
    )
