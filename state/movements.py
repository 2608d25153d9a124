"""Stock movements in Redis: ``movement.lua``, one call per hash slot of a movement's lines
(its header says what each mode does; the rules: docs/movements.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

from state import keys, wire
from state.conn import Redis, lua
from state.gens import Gen
from state.skus import sku_keys

# movement.lua's modes
APPLY, HOLD, COMMIT, ABORT, REHOLD = "apply", "hold", "commit", "abort", "rehold"


class MoveLine(NamedTuple):
    """A movement's line as movement.lua takes it (``sku``: the name whose keys hold it)."""

    sku: str
    op: str
    location: str
    qty: int
    to: str


class Call(NamedTuple):
    """One movement.lua call: the lines of one movement in one slot."""

    mode: str
    movement_id: str
    lines: list[MoveLine]
    # why an abort refuses the movement; a hold's (rehold's) guard, answered by every hold
    # after it (dataflows/movements.py: a hot SKU's count)
    reason: str = ""


class Answer(NamedTuple):
    """movement.lua's answer: a ``protocol.MOVE_*`` state and its payload."""

    state: str
    payload: str


class Movements:
    """The movement script (a part of ``state.store.Store``)."""

    def __init__(
        self, client: Redis, touched: set[str] | None = None, gen: Gen | None = None
    ) -> None:
        self.r = client
        self.gen = gen or Gen()  # the generation this process writes in now
        self.touched: set[str] = touched if touched is not None else set()  # (Store.touched)
        self._script = client.register_script(lua("movement", "lib_stock"))

    def run(self, calls: list[Call]) -> list[Answer]:
        """The calls, in order, in one round trip on a single server (each atomic; a Redis
        Cluster client runs them one by one, each routed to its slot's node)."""
        if not calls:
            return []
        jobs = []
        self.touched.update(ln.sku for c in calls for ln in c.lines)
        for c in calls:
            names: dict[str, int] = {}
            for ln in c.lines:
                names.setdefault(ln.sku, len(names) + 1)
            args: list[Any] = [c.mode, c.movement_id, c.reason, len(names), *names, len(c.lines)]
            for ln in c.lines:
                args += [names[ln.sku], ln.op, ln.location, ln.qty, ln.to]
            jobs.append((self._script, sku_keys(list(names), keys.decisions, self.gen), args))
        return [Answer(_text(s), _text(p)) for s, p in wire.scripts(self.r, jobs)]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
