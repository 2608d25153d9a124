"""Weighing memory (``onestock bench-memory``): the memory Redis holds, in all, per key
family, and per generation of the idempotency state (state/gens.py).

A key's family is its name with every ``{hash tag}`` emptied and a trailing ``:<digits>``
(a generation, a number) generalised: ``os:{s3}:done`` and ``os:{s7}:done`` are both
``os:{}:done``; ``os:{k:TEE-M}:dec:12`` is ``os:{}:dec:<n>``. The families say where the
memory is without knowing the key layout, so they hold across changes to it.
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

from state import gens, keys
from state.store import Store

_TAG = re.compile(r"\{[^}]*\}")
_NUMBER = re.compile(r":\d+$")


class Family(NamedTuple):
    """The keys of one family and the bytes they use (``MEMORY USAGE``, summed)."""

    name: str
    keys: int
    bytes: int


class Memory(NamedTuple):
    """``INFO memory`` figures, bytes."""

    used: int  # used_memory: everything the allocator holds for Redis
    dataset: int  # used_memory_dataset: the keys' share of it (no buffers, no overhead)


def family_of(key: str) -> str:
    """The key's family: hash tags emptied, a trailing ``:<digits>`` made ``:<n>``."""
    return _NUMBER.sub(":<n>", _TAG.sub("{}", key))


def memory_by_family(store: Store, samples: int = 0, batch: int = 500) -> list[Family]:
    """Every key (SCAN) grouped by family, with its ``MEMORY USAGE`` summed (``samples`` 0:
    every element counted, exact), biggest first. A key deleted between the scan and its
    usage counts as nothing."""
    found: dict[str, list[int]] = {}
    names: list[Any] = []  # as SCAN gave them (bytes: the exact key, whatever its encoding)

    def weigh() -> None:
        pipe = store.r.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=samples)
        for name, used in zip(names, pipe.execute(), strict=True):
            if used is not None:
                text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                got = found.setdefault(family_of(text), [0, 0])
                got[0] += 1
                got[1] += int(used)
        names.clear()

    for key in store.r.scan_iter(count=1000):
        names.append(key)
        if len(names) >= batch:
            weigh()
    weigh()
    fams = [Family(name, n, size) for name, (n, size) in found.items()]
    return sorted(fams, key=lambda f: (-f.bytes, f.name))


def memory(store: Store, settle_s: float = 10.0) -> Memory:
    """``used_memory`` and ``used_memory_dataset``, once the objects Redis frees in the
    background (lazy free) are freed, or after ``settle_s`` seconds."""
    info: Any = store.r.info("memory")
    until = time.monotonic() + settle_s
    while int(info.get("lazyfree_pending_objects", 0)) and time.monotonic() < until:
        time.sleep(0.1)
        info = store.r.info("memory")
    return Memory(int(info["used_memory"]), int(info["used_memory_dataset"]))


def generations(store: Store) -> dict[int, int]:
    """The generations of idempotency state Redis holds (``keys.GEN_FAMILIES``): generation
    number -> its keys."""
    held: dict[int, int] = {}
    for family in keys.GEN_FAMILIES:
        for key in store.r.scan_iter(match=f"{keys.PREFIX}:*}}{family}*", count=1000):
            gen = gens.generation(key, family)
            if gen is not None:
                held[gen] = held.get(gen, 0) + 1
    return dict(sorted(held.items()))
