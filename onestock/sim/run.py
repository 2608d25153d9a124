"""The soak driver: histories through fast mode (in-process, crashes injected) and CLI mode
(the real commands, kill -9 and Redis restarts) until a time budget ends.

    python3 dev.py soak [--minutes N] [--seed S] [--mode fast|cli|both] [--features SPEC]

Prints how many histories, events and faults ran and every violation with the one command
that replays its seed; exits 1 on a violation. ``soak()`` is the same for tests.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onestock.sim.history import Features, generate
from onestock.sim.model import Violation, check
from state.server import RedisServer, free_port

CLI_EVERY = 25  # mode "both": one CLI history after this many fast ones
# what follows a dead run (or an unreadable output) is its consequence
FATAL = ("run.exception", "run.failed", "read.exception")


@dataclass
class Failure:
    seed: int
    mode: str
    events: int
    violations: list[Violation]
    features: Features

    def replay(self) -> str:
        extra = "" if self.features == Features() else f" --features {self.features.spec()}"
        return f"python3 dev.py soak --seed {self.seed} --mode {self.mode}{extra}"


@dataclass
class Report:
    histories: dict[str, int] = field(default_factory=lambda: {"fast": 0, "cli": 0})
    events: int = 0
    movements: int = 0  # of the events, stock movements (copies and bad ones too)
    payments: int = 0  # of the events, pending orders and payments (copies too)
    faults: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def by_class(self) -> dict[str, Failure]:
        """Per violation class, the failing history with the fewest events."""
        best: dict[str, Failure] = {}
        for f in self.failures:
            for cls in {c for c, _ in f.violations} - {"(cascade)"}:
                if cls not in best or f.events < best[cls].events:
                    best[cls] = f
        return best

    def summary(self) -> str:
        n = sum(self.histories.values())
        out = [
            f"soak: {n} histories ({self.histories['fast']} fast, {self.histories['cli']} cli), "
            f"{self.events} events ({self.movements} movements, {self.payments} pending orders "
            f"and payments), {self.faults} faults in "
            f"{self.seconds:.0f} s; "
            f"{len(self.failures)} failed"
        ]
        for cls, f in sorted(self.by_class().items()):
            detail = next(d for c, d in f.violations if c == cls)
            out.append(f"  {cls}: {detail[:240]}\n    replay: {f.replay()}")
        return "\n".join(out)


def one(
    seed: int, mode: str, features: Features, url: str
) -> tuple[list[Violation], int, int, tuple[int, int]]:
    """Run the history of ``seed`` in ``mode``: (violations, events, faults, (movements,
    pending orders and payments))."""
    h = generate(seed, features)
    if mode == "fast":
        from onestock.sim.fast import run_fast

        ob, stats = run_fast(h, url)
    else:
        from onestock.sim.clirun import run_cli

        with tempfile.TemporaryDirectory(prefix="os-sim-", dir="/tmp") as tmp:
            ob, stats = run_cli(h, Path(tmp))
    violations = check(ob)
    fatal = [v for v in violations if v[0] in FATAL]
    if fatal and len(fatal) < len(violations):
        more = len(violations) - len(fatal)
        violations = [*fatal, ("(cascade)", f"{more} further violations follow from it")]
    return violations, stats["events"], stats["faults"], (h.movements(), h.payments())


def soak(
    minutes: float,
    mode: str = "fast",
    features: Features | None = None,
    seed: int | None = None,
    say: Callable[[str], None] = print,
    histories: int | None = None,
    url: str | None = None,
    ignore: frozenset[str] = frozenset(),
) -> Report:
    """Histories until ``minutes`` pass or ``histories`` ran (``seed``: that one history
    only; ``url``: a Redis for fast mode, else one is started; ``ignore``: violation classes
    not counted, e.g. known ones until their fix lands)."""
    features = features or Features()
    report = Report()
    started = time.monotonic()
    deadline = started + minutes * 60
    seeds = [seed] if seed is not None else None
    next_seed = random.SystemRandom().randrange(1, 10**6)
    with tempfile.TemporaryDirectory(prefix="os-soak-", dir="/tmp") as tmp:
        server = RedisServer(Path(tmp), persistent=False, port=free_port())
        if url is None:
            server.start()
        try:
            n = 0
            while seeds or seeds is None and time.monotonic() < deadline and n != histories:
                s = seeds.pop() if seeds else next_seed + n
                modes = ["fast", "cli"] if mode == "both" and seed is not None else [mode]
                if mode == "both" and seed is None:
                    modes = ["cli" if n % CLI_EVERY == CLI_EVERY - 1 else "fast"]
                n += 1
                for m in modes:
                    violations, events, faults, (moves, pays) = one(
                        s, m, features, url or server.url
                    )
                    violations = [v for v in violations if v[0] not in ignore]
                    report.histories[m] += 1
                    report.events += events
                    report.faults += faults
                    report.movements += moves
                    report.payments += pays
                    if violations:
                        f = Failure(s, m, events, violations, features)
                        report.failures.append(f)
                        cls, detail = violations[0]
                        say(f"VIOLATION seed {s} ({m}, {events} events): {cls}: "
                            f"{detail[:300]}\n  replay: {f.replay()}")  # fmt: skip
                        for cls, detail in violations[1 : 30 if seed is not None else 4]:
                            say(f"  {cls}: {detail[:300]}")
        finally:
            if url is None:
                server.stop()
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dev.py soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="replay this one history")
    p.add_argument("--mode", choices=["fast", "cli", "both"], default="fast")
    known = ", ".join(Features.names())
    p.add_argument("--features", default="all",
                   help=f"'all', 'none', or e.g. 'all,-skew'; known: {known}")  # fmt: skip
    p.add_argument("--ignore", default="", help="violation classes not to count, e.g. a,b")
    a = p.parse_args(argv)
    try:
        features = Features.parse(a.features)
    except ValueError as exc:
        p.error(str(exc))
    ignore = frozenset(filter(None, a.ignore.split(",")))
    report = soak(a.minutes, a.mode, features, a.seed, ignore=ignore)
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
