"""The protocol's names: outcome codes and separators, named once.

Every outcome the Lua scripts answer and every value a shard's registry stores starts with
one ``Code`` character; the rest of an outcome is fields joined by ``SEP``. The same names
are written once for Lua in ``state/lua/lib_protocol.lua`` (prepended to every script);
``tests/test_protocol.py`` checks the two agree. The Redis key names and the NUL-prefixed
internal fields stored beside orders and stock are named in ``state/keys.py``.

    A<SEP>loc<SEP>sku<SEP>qty...   accepted, with its allocations
    R<SEP>reason[<SEP>detail]      rejected (``onestock.domain.records.rejected``)
    C                              cancelled (never decided, or its units given back)
    V<SEP>loc<SEP>sku<SEP>qty...   reserved: a pending order's units, waiting for payment
    E<SEP>loc<SEP>sku<SEP>qty...   expired: its deadline passed unpaid, units given back
"""

from __future__ import annotations

from enum import StrEnum

from onestock.domain.errors import OnestockError

SEP = "\x1f"  # between the fields of one record or outcome
RS = "\x1e"  # between the records of one output stream entry
GS = "\x1d"  # inside a gift field; between the head and the outcome of a held record
BUCKET = "\x1c"  # between a hot SKU's id and its bucket number (state/keys.py bucket)
INTERNAL = "\x00"  # first byte of every internal field (an id is printable: never one)


class Code(StrEnum):
    """The first character of an outcome or of a registry value."""

    ACCEPTED = "A"  # + SEP-joined allocations (location, SKU, units)
    REJECTED = "R"  # + SEP reason [+ SEP detail]
    CANCELLED = "C"  # never decided (a cancel came first), or its units went back
    CANDIDATE = "G"  # decide.lua: accepted and a first-N candidate (its record is held)
    HELD = "H"  # registry: + the outcome; the record waits for its gift to be settled
    BUCKET_SHORT = "B"  # a hot SKU's bucket was short: borrow from the others, decide again
    STALE = "S"  # decide.lua / reserve_parts.lua: the caller's catalog is older; no change
    # decide.lua, decide_cross: an order asked only for its stored outcome (one that may have
    # been decided, now refused by the catalog: Decider._judge) has none; nothing changed
    UNDECIDED = "U"
    CAMPAIGN_REJECTED = "r"  # registry: a rejected order of a campaign SKU (decisions stream)
    EARLY_CANCEL = "P"  # registry: a cancel waits for its order (keys.REG_EARLY_CANCEL)
    RETURN = "T"  # registry and metric tag: an accepted return's record
    CANCELLATION = "X"  # metric tag: the record that cancels an accepted order
    DEAD = "D"  # registry (keys.REG_DEAD + entry id): the entry's dead letter is written
    MOVEMENT = "M"  # registry (keys.REG_MOVEMENT + movement id) and metric tag: its record
    RESERVED = "V"  # + allocations: a pending order's units, held until paid or its deadline
    EXPIRED = "E"  # + allocations given back: its payment deadline passed unpaid
    PAID = "Y"  # metric tag: the record of a reserved order's payment


# The state of a stock movement in one hash slot (movement.lua; keys.DEC_MOVEMENT + movement
# id in the decision hash of the slot's first SKU), then SEP-joined fields:
MOVE_HELD = "h"  # its decreases are taken out (+ the units taken per line); not yet applied
MOVE_APPLIED = "a"  # applied (+ per line: on hand, on hand at `to`, discrepancy)
MOVE_REFUSED = "x"  # refused, nothing changed (+ the reason)


class ProtocolError(OnestockError):
    """A stored or answered value that does not start with a known code."""


def code_of(value: str) -> Code:
    """The code an outcome or registry value starts with; an unknown one raises."""
    try:
        return Code(value[:1])
    except ValueError:
        raise ProtocolError(f"unknown outcome code in {value[:40]!r}") from None
