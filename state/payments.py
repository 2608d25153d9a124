"""A shard's reserved orders in Redis (a part of ``state.store.Store``): their deadlines
(``keys.deadlines``), which are due (``payments.lua``), and the registry fields a payment or
an expiry reads (docs/payments.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

from onestock.domain.protocol import SEP
from state import keys, wire
from state.conn import Redis, lua
from state.gens import Gen, newer_first, registries


class Due(NamedTuple):
    """A reserved order whose deadline passed with no payment read before it."""

    order_id: str
    deadline_ms: int
    channel: str
    mode: str


class OrderState(NamedTuple):
    """What a payment or an expiry needs to know of an order (``Payments.states``)."""

    value: str | None  # the registry value: its current outcome (None: never came)
    version: int  # the version of its latest record
    cancelled: bool  # a cancel's record is written (the units are back)
    deadline_ms: int | None  # its payment deadline while it is in the deadlines set
    channel: str
    mode: str
    # a cancel marked it and may be giving its units back (keys.REG_CANCELLING): a crash
    # left it so, or its record is written. The events before that cancel, replayed, judge
    # the order without it; the timers (expiries, claim timeouts) leave it alone.
    cancelling: bool = False
    # its outcome is in the registry of the generation after the caller's: a part of a later
    # batch was written before a crash, and this replay of earlier entries runs a generation
    # back. A timer leaves it alone: a later version written here would lie under that
    # outcome (reads take the newest generation's), and the order would be expired twice.
    ahead: bool = False


class Payments:
    def __init__(self, client: Redis, gen: Gen | None = None) -> None:
        self.r = client
        self.gen = gen or Gen()  # the generation this process writes registries in now
        self._script = client.register_script(lua("payments", "lib_clock"))

    def due(
        self,
        shard: int,
        after: str,
        new: list[tuple[str, int, str, str]],
        limit: int,
        gone: list[str] | None = None,
    ) -> list[Due]:
        """Record the new reserved orders (order id, deadline ms, channel, delivery mode),
        and drop the ``gone`` ones (paid), then the shard's reserved orders due to expire
        (at most ``limit``): their deadline is before every input entry after ``after``
        (``payments.lua``)."""
        args: list[Any] = [after, limit, len(new)]
        for oid, deadline, channel, mode in new:
            args += [oid, deadline, f"{channel}{SEP}{mode}"]
        args += [len(gone or ()), *(gone or ())]
        now, before, after = registries(shard, self.gen)
        ks = [now, keys.deadlines(shard), keys.inbox(shard), before, after]
        got = wire.scripts(self.r, [(self._script, ks, args)])[0]
        out: list[Due] = []
        for i in range(0, len(got), 3):
            channel, _, mode = got[i + 2].decode().partition(SEP)
            out.append(Due(got[i].decode(), int(float(got[i + 1])), channel, mode or "ship"))
        return out

    def states(self, shard: int, order_ids: list[str]) -> list[OrderState]:
        """Per order id: its registry value, record version, whether a cancel took it, its
        deadline and its channel and mode; one round trip."""
        if not order_ids:
            return []
        fields: list[str] = []
        for oid in order_ids:
            fields += [oid, keys.REG_STATE + oid, keys.REG_CANCEL + oid]
            fields += [keys.REG_CANCELLING + oid, keys.REG_PENDING + oid]
        commands: list[tuple[Any, ...]] = [
            ("HMGET", keys.emitted(shard, g), *fields) for g in self.gen.read()
        ]
        commands += [("ZSCORE", keys.deadlines(shard), oid) for oid in order_ids]
        got = wire.reads(self.r, commands)
        values, scores = newer_first(*got[:3]), got[3:]
        out: list[OrderState] = []
        for i in range(len(order_ids)):
            value, version, x, k, how = values[5 * i : 5 * i + 5]
            channel, _, mode = (how or b"").decode().partition(SEP)
            out.append(
                OrderState(
                    value.decode() if value is not None else None,
                    int(version) if version is not None else 1,
                    x is not None,
                    int(float(scores[i])) if scores[i] is not None else None,
                    channel,
                    mode or "ship",
                    k is not None or x is not None,
                    got[0][5 * i] is not None,  # (got[0]: the generation after gen.now)
                )
            )
        return out
