"""Crashes for fast mode: the dataflow's Redis clients count the commands they send; at a
seeded count the process "dies" (a private exception no retry loop of the product catches,
raised before the command reached Redis or after it did, its reply lost), and at another a
hook runs (a catalog reload from another process, between two commands of a batch). With
lost replies, at other seeded counts the connection drops once a command reached Redis: the
product sees redis.ConnectionError and its retries send the command again (redis-py's own,
``Waiter.call``'s): every write must be one a second send changes nothing by.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import redis

from state.store import Store


class Crash(BaseException):
    """The simulated process dies here: no retry loop of the product catches it, nor the
    flow's quarantine of a batch that raises (``except Exception``)."""


class Faults:
    """Counts the dataflow's Redis commands: a crash at ``crash_at``, a hook at ``hook_at``."""

    def __init__(self, rng: random.Random, crashes: int) -> None:
        self.rng, self.left, self.crashes = rng, crashes, 0
        self.count = 0
        self.crash_at: int | None = None
        self.after_send = False
        self.hook_at = 0
        self.hook: Callable[[], None] | None = None
        self.hook_after = False
        self.first_ms: int | None = None  # wall ms of the first crash
        self.lose_rng: random.Random | None = None  # lost replies' draws (``lose_replies``)
        self.lose_at = 0
        self.lost = 0  # replies lost so far
        self.aims: dict[str, int] = {}  # per aim: crashes ``aimed`` may still arm (1 each)
        self.arm()

    def arm(self) -> None:
        if self.left > 0:
            self.left -= 1
            self.crash_at = self.count + self.rng.randint(1, 200)
            self.after_send = self.rng.random() < 0.5

    def aimed(
        self,
        fn: Callable[..., Any],
        p: float = 0.3,
        aim: str = "movement",
        after: Callable[[Any], bool] | None = None,
    ) -> Callable[..., Any]:
        """``fn`` that now and then (``p``, once per ``aim``) arms a crash at the first
        Redis command it sends, before or after it reached Redis: a crash aimed at a rare,
        short step (a movement's hold or commit) that random counts seldom hit. With
        ``after``: at the first command sent once ``fn`` returned what ``after`` accepts
        (between a step and the next, e.g. an expiry's give-back and its records)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            armed = self.aims.get(aim, 1) > 0 and self.rng.random() < p
            if armed and after is None:
                self.aims[aim] = 0
                self.crash_at, self.after_send = self.count + 1, self.rng.random() < 0.5
            got = fn(*args, **kwargs)
            if armed and after is not None and after(got):
                self.aims[aim] = 0
                self.crash_at, self.after_send = self.count + 1, self.rng.random() < 0.5
            return got

        return call

    def lose_replies(self, rng: random.Random) -> None:
        """From now on, every 1 to 300 commands a reply is lost (draws from ``rng`` alone:
        the crashes' and the history's draws stay as they were)."""
        self.lose_rng = rng
        self.lose_at = self.count + rng.randint(1, 300)

    def lose(self) -> bool:
        """Is the reply of the command just sent lost?"""
        if self.lose_rng is None or self.count < self.lose_at:
            return False
        self.lose_at = self.count + self.lose_rng.randint(1, 300)
        self.lost += 1
        return True

    def set_hook(self, hook: Callable[[], None], within: int) -> None:
        """Run ``hook`` at one of the next ``within`` commands: before it is sent, or after
        (when the caller already sent what it read before the hook, e.g. a stale version)."""
        self.hook, self.hook_at = hook, self.count + self.rng.randint(1, within)
        self.hook_after = self.rng.random() < 0.5

    def _run_hook(self, after: bool) -> None:
        if self.hook is not None and self.count >= self.hook_at and after == self.hook_after:
            hook, self.hook = self.hook, None
            hook()

    def before(self) -> None:
        self.count += 1
        self._run_hook(False)
        if self.crash_at == self.count and not self.after_send:
            self._die()

    def after(self) -> None:
        self._run_hook(True)
        if self.crash_at == self.count and self.after_send:
            self._die()

    def _die(self) -> None:
        self.crash_at = None
        self.crashes += 1
        self.first_ms = self.first_ms or int(time.time() * 1000)
        raise Crash(f"simulated crash at Redis command {self.count}")


def faulty_store(url: str, faults: Faults) -> Store:
    base: Any = redis.UnixDomainSocketConnection if url.startswith("unix:") else redis.Connection

    class Conn(base):  # type: ignore[misc,valid-type]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            faults.before()
            super().send_packed_command(command, check_health)
            if faults.lose():  # Redis has the command; the connection drops before its reply
                self.disconnect()
                raise redis.ConnectionError("simulated: the connection dropped, reply lost")
            faults.after()

    return Store(redis.Redis.from_url(url, health_check_interval=10, connection_class=Conn))
