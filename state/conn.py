"""How onestock reaches Redis: the client for a URL (a Cluster node is detected), the errors
that mean "Redis is away for now", the retry loop the dataflow wraps its calls in, and the
scripts' text. Nothing here knows onestock's keys (``state.keys`` names them).
"""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

from onestock.domain.errors import OnestockError

Redis = redis.Redis | RedisCluster
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def lua(name: str, *libs: str) -> str:
    """A script's text, after the protocol's names (``lib_protocol.lua``, always) and the
    shared ``lib_*.lua`` functions it uses (Redis has no ``require``: a script is one text,
    so the libraries are prepended once, here)."""
    files = importlib.resources.files("state")
    names = ("lib_protocol", *libs, name)
    return "\n".join(files.joinpath(f"lua/{n}.lua").read_text() for n in names)


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def connect(url: str) -> Redis:
    """A client for ``url``; a node of a Redis Cluster is detected, not configured."""
    client = redis.Redis.from_url(url, decode_responses=False, health_check_interval=10)
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        info = {}
    except TRANSIENT as exc:
        raise OnestockError(f"cannot reach Redis at {url}: {exc}") from None
    if info.get("cluster_enabled"):
        client.close()
        return RedisCluster.from_url(url)
    return client


class Waiter:
    """Retries a Redis call while Redis is away; says so once, and once when it is back."""

    def __init__(self, say: Callable[[str], None], stopping: Callable[[], bool] = lambda: False):
        self.say = say
        self.stopping = stopping
        self.waiting = False

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                result = fn(*args)
            except TRANSIENT as exc:
                if not self.waiting:
                    self.say(f"Redis is unreachable ({exc}); waiting for it to come back")
                    self.waiting = True
                if self.stopping():
                    raise
                time.sleep(0.25)
                continue
            if self.waiting:
                self.say("Redis is back; carrying on")
                self.waiting = False
            return result
