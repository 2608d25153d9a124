"""What a stock movement does to the stock, line by line (docs/movements.md): the ops
``movement.lua`` applies, and the change an applied movement record made (the stock audit
adds these up)."""

from __future__ import annotations

import msgspec

from onestock.domain.types import MovementRecord

# movement.lua's ops: what a line does at its location
IN, OUT, MOVE, COUNT = "in", "out", "move", "count"
# (a write-off: the units a location that rejected its shipment was holding for the order,
# recorded by the dataflow, never an input kind)
_OPS = {"receipt": IN, "sale": OUT, "transfer": MOVE, "count": COUNT, "write_off": OUT}


def op_of(kind: str, qty: int) -> tuple[str, int]:
    """movement.lua's op and units for a line of ``qty`` of a movement of ``kind``."""
    if kind == "adjustment":
        return (IN, qty) if qty > 0 else (OUT, -qty)
    return _OPS[kind], qty


def moved_units(rec: MovementRecord) -> list[tuple[str, str, int]]:
    """The change an applied movement record made to the stock: (SKU, location, units) per
    line and location (a count's: its discrepancy); nothing for a refused one."""
    if rec.status != "applied" or rec.kind is None or rec.location is None:
        return []
    out = []
    for ln in rec.lines:
        if rec.kind == "count":
            out.append((ln.sku, rec.location, ln.discrepancy or 0))
        elif rec.kind == "transfer" and rec.to is not None:
            out += [(ln.sku, rec.location, -ln.qty), (ln.sku, rec.to, ln.qty)]
        else:
            op, units = op_of(rec.kind, ln.qty)
            out.append((ln.sku, rec.location, units if op == IN else -units))
    return out


movement_from_packed = msgspec.json.Decoder(MovementRecord).decode  # a movements stream record
