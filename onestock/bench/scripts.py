"""``onestock bench-scripts``: the hot path's Lua scripts against a baseline's, call for call.

On a shared machine rates, and even Redis's own CPU, swing by ±20 % between identical runs:
more than most changes to a script move them. This bench takes the calls an in-process drain
makes of ``decide.lua``, ``reserve_parts.lua`` and ``emit.lua`` (N demo orders, 20 % of them
two-SKU baskets, with 1000 x the stock: every order accepted) and replays each call on two
fresh Redis servers in lockstep, one loaded with the baseline's scripts, one with this
checkout's, the two taking turns to go first, with fresh order ids each round. Per script
it sums the time Redis logs for each call (``SLOWLOG``, every call) per item (an order, a
basket's part, a record) on each server, so the machine's swing falls on both alike, and it
checks that the two answered every call alike: a change that alters what a script does
shows as differing answers. A control row (the baseline against itself) shows the
harness's own bias.

The baseline is a directory of Lua files (a ``state/lua`` of another checkout) or a git
revision of this repository (its ``state/lua``, by ``git archive``). A change to what the
scripts take (their ARGV layout) needs ``--own-calls``: the revision's own code then drains
the same orders in a subprocess and each server replays its side's own calls (the same
orders, batched alike), the control being the revision against itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script
from rich.console import Console
from rich.table import Table

from onestock import burst, harness
from onestock.bench.measure import bare_drain
from onestock.domain.errors import OnestockError
from state import wire
from state.conn import lua
from state.store import Store

# the scripts replayed: the Store attribute that registers each, and its libraries in order
# (checked against the registered text: a list out of date fails the bench)
SCRIPTS = {
    "decide.lua": ("_decide", ("lib_stock", "lib_route"), "decide"),
    "reserve_parts.lua": ("_reserve_parts", ("lib_stock",), "reserve_parts"),
    "emit.lua": ("_emit", (), "emit"),
}
Call = tuple[list[str], list[Any]]  # (KEYS, ARGV)
# The drain's input shards, fixed (not the default K), so that a revision from before the
# default became 48 drains the orders in the same batches (``--own-calls``)
SHARDS = 16


class Side(NamedTuple):
    """What one server replays: per script its calls, each call's item positions
    (``items_of``, as that side's code lays ARGV out) and the script's text."""

    calls: dict[str, list[Call]]
    items: dict[str, list[list[int]]]
    texts: dict[str, str]


# Run in a revision's own tree (its code on PYTHONPATH): its side, pickled to argv[3]
_CAPTURE = """
import pickle, sys
from onestock.bench import scripts as s
from state.conn import lua
calls = s.capture(int(sys.argv[1]), sys.argv[2])
items = {n: [s.items_of(n, a) for _, a in got] for n, got in calls.items()}
texts = {n: lua(base, *libs) for n, (_, libs, base) in s.SCRIPTS.items()}
with open(sys.argv[3], "wb") as f:
    pickle.dump((calls, items, texts), f)
"""


class Row(NamedTuple):
    script: str
    items: int  # per side
    baseline_us: float  # per item
    current_us: float
    differing: int  # calls answered differently


def run_bench_scripts(
    baseline: str, orders: int, rounds: int, layout: str, own_calls: bool = False
) -> list[Row]:
    """Capture (in the dataset ``layout``: reserve_parts.lua runs only in "slots"), replay,
    print the table; the rows (the control row's script is suffixed). ``own_calls``: the
    baseline (a revision) replays the calls its own code makes (``Side``)."""
    console = Console()
    here = Path(__file__).resolve().parents[2] / "state" / "lua"
    console.print(f"capturing the script calls of a drain of {orders:,} orders ...")
    calls = capture(orders, layout)
    current = Side(calls, {n: [items_of(n, a) for _, a in got] for n, got in calls.items()},
                   {n: source(here, n) for n in calls})  # fmt: skip
    with contextlib.ExitStack() as stack:
        if own_calls:
            console.print(f"capturing {baseline}'s own calls of the same orders ...")
            base = _revision_side(baseline, orders, layout)
        else:
            lua_dir = stack.enter_context(_baseline_dir(baseline))
            base = current._replace(texts={n: source(lua_dir, n) for n in calls})
        rows = []
        for name, got in calls.items():
            if not got:
                console.print(f"no calls of {name} in the {layout!r} layout")
                continue
            console.print(f"replaying {len(got):,} calls of {name} ...")
            rows.append(replay(name, (base, current), rounds))
            control = replay(name, (base, base), rounds)
            rows.append(control._replace(script=name + " (control)"))
    table = Table(title=f"onestock bench-scripts: baseline {baseline} against this checkout")
    for col in ("script", "items", "baseline us/item", "current us/item", "current / baseline",
                "calls answered differently"):  # fmt: skip
        table.add_column(col, justify="left" if col == "script" else "right")
    for r in rows:
        table.add_row(r.script, f"{r.items:,}", f"{r.baseline_us:.2f}", f"{r.current_us:.2f}",
                      f"{r.current_us / r.baseline_us:.3f}", str(r.differing))  # fmt: skip
    console.print(table)
    return rows


@contextlib.contextmanager
def _baseline_dir(baseline: str) -> Iterator[Path]:
    """The baseline's Lua directory: the one named, or a revision's ``state/lua`` unpacked."""
    if Path(baseline).is_dir():
        yield Path(baseline)
        return
    with _revision(baseline, "state/lua") as tree:
        yield tree / "state" / "lua"


@contextlib.contextmanager
def _revision(rev: str, *paths: str) -> Iterator[Path]:
    """A git revision of this checkout (these paths of it; all without), unpacked."""
    root = Path(__file__).resolve().parents[2]
    got = subprocess.run(["git", "archive", rev, *paths], cwd=root, capture_output=True)
    if got.returncode != 0:
        raise OnestockError(
            f"--baseline {rev!r}: neither a directory nor a git revision of {root} "
            f"({got.stderr.decode().strip()})"
        )
    with tempfile.TemporaryDirectory(prefix="onestock-scripts-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


def _revision_side(rev: str, orders: int, layout: str) -> Side:
    """A revision's own calls of the same drain (its code, in a subprocess of its tree)."""
    with _revision(rev) as tree:
        out = tree / "side.pickle"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        got = subprocess.run(
            [sys.executable, "-c", _CAPTURE, str(orders), layout, str(out)],
            cwd=tree, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if got.returncode != 0:
            last = (got.stderr.strip().splitlines() or ["no output"])[-1]
            raise OnestockError(f"--own-calls: {rev}'s capture failed: {last}")
        with out.open("rb") as f:
            calls, items, texts = pickle.load(f)  # (written just now by this checkout's git)
    return Side(calls, items, texts)


def source(lua_dir: Path, name: str) -> str:
    """A script's text as ``state.conn.lua`` composes it, from ``lua_dir``'s files."""
    _, libs, base = SCRIPTS[name]
    return "\n".join((lua_dir / f"{n}.lua").read_text() for n in ("lib_protocol", *libs, base))


def capture(orders: int, layout: str) -> dict[str, list[Call]]:
    """The calls of the SCRIPTS an in-process drain of the demo burst makes (accepted), in
    the dataset ``layout`` (keys.LAYOUT)."""
    captured: dict[str, list[Call]] = {name: [] for name in SCRIPTS}
    real = wire.scripts
    with harness.scratch_redis("onestock-scripts-") as (server, _):
        store = Store.connect(server.url)
        names = _registered(store)

        def recording(client: Any, calls: list[tuple[Script, list[str], list[Any]]]) -> Any:
            for script, ks, args in calls:
                name = names.get(script.sha)
                if name is not None:
                    captured[name].append((list(ks), [_arg(a) for a in args]))
            return real(client, calls)

        harness.reset(store, SHARDS, burst.accepted_catalog(), layout)
        harness.push(store, list(burst.orders(orders, burst.demo_catalog(), seed=2026)), SHARDS)
        from dataflows.decider import Decider

        decider = Decider(store, say=lambda _m: None)
        wire.scripts = recording  # type: ignore[assignment]
        try:
            bare_drain(store, decider, list(range(SHARDS)), 1000)
        finally:
            wire.scripts = real  # type: ignore[assignment]
    return captured


def _registered(store: Store) -> dict[str, str]:
    """sha -> script name of the SCRIPTS, their composed text checked against the Store's."""
    out = {}
    for name, (attr, libs, base) in SCRIPTS.items():
        owner = next(p for p in vars(store).values() if isinstance(getattr(p, attr, None), Script))
        script: Script = getattr(owner, attr)
        if script.script != lua(base, *libs):
            raise AssertionError(f"bench-scripts: the libraries of {name} are out of date")
        out[script.sha] = name
    return out


def _arg(a: Any) -> bytes | str:
    return a if isinstance(a, (bytes, str)) else str(a)


def items_of(name: str, args: list[Any]) -> list[int]:
    """The ARGV positions (0-based) of a call's order ids (decide, reserve_parts) or record
    keys (emit): one per item."""
    if name == "decide.lua":
        nskus, nlocs, nchans = int(args[0]), int(args[1]), int(args[2])
        at = 5 + nskus + 2 * nlocs + nchans  # norders
        return [at + 1 + 2 * o for o in range(int(args[at]))]  # (id, spec) per order
    if name == "reserve_parts.lua":
        p = 1 + int(args[0])
        p += 1 + 2 * int(args[p]) + 1  # the safety stock, the version
        n, p = int(args[p]), p + 1
        out = []
        for _ in range(n):
            out.append(p)
            p += 8 + 3 * int(args[p + 7])
        return out
    return [2 + 2 * k for k in range(int(args[1]))]


def _fresh(args: list[Any], at: list[int], tag: str) -> list[Any]:
    """The call with its items' ids made new (``tag`` appended; internal fields, which start
    with NUL, as they are)."""
    out = list(args)
    for p in at:
        v = args[p].decode() if isinstance(args[p], bytes) else args[p]
        if not v.startswith("\x00"):
            out[p] = v + tag
    return out


def replay(name: str, sides: tuple[Side, Side], rounds: int) -> Row:
    """Each call on two fresh servers in lockstep (the baseline's side on one, the current's
    on the other: its script, its own call of the same orders), the first of the two
    alternating; SLOWLOG time per item on each."""
    if len(sides[0].calls[name]) != len(sides[1].calls[name]):
        raise OnestockError(
            f"bench-scripts: {name} was called {len(sides[0].calls[name])} times by the "
            f"baseline and {len(sides[1].calls[name])} times here: the drains differ"
        )
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(harness.scratch_redis("onestock-replay-"))[0]
                   for _ in range(2)]  # fmt: skip
        loaded = []
        for server, side in zip(servers, sides, strict=True):
            store = Store.connect(server.url)
            harness.reset(store, catalog=burst.accepted_catalog())
            r = store.r
            r.config_set("slowlog-log-slower-than", 0)
            r.config_set("slowlog-max-len", 1_000_000)
            loaded.append((r, r.script_load(side.texts[name])))
        spent, items, differing = [0, 0], 0, 0
        for rnd in range(rounds):
            for i in range(len(sides[0].calls[name])):
                answers: list[Any] = [None, None]
                for k in (0, 1) if (i + rnd) % 2 == 0 else (1, 0):
                    (r, sha), side = loaded[k], sides[k]
                    ks, args = side.calls[name][i]
                    fresh = _fresh(args, side.items[name][i], f"#{rnd}")
                    try:
                        answers[k] = r.evalsha(sha, len(ks), *ks, *fresh)
                    except redis.ResponseError as exc:
                        which = ("the baseline's", "this checkout's")[k]
                        raise OnestockError(
                            f"bench-scripts: {which} {name} refused a call ({exc}): its "
                            "arguments' layout differs; compare with --own-calls"
                        ) from None
                differing += answers[0] != answers[1]
                items += len(sides[1].items[name][i])
            for k, (r, sha) in enumerate(loaded):
                for entry in r.slowlog_get(1_000_000):
                    if sha.encode() in entry["command"]:
                        spent[k] += entry["duration"]
                r.slowlog_reset()
    n = max(items, 1)
    return Row(name, items, spent[0] / n, spent[1] / n, differing)
