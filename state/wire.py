"""How the hot path talks to Redis: many commands in one write, packed by hiredis.

redis-py's pipeline converts every argument in Python before hiredis packs it; the hot path
sends 7-10 arguments per order (script calls, the registry and planning reads), so on a
single server they go to ``hiredis.pack_command`` and one ``sendall`` per round trip on a
pooled redis-py connection. A Redis Cluster client keeps redis-py's routing per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script


class Same(NamedTuple):
    """``name key *args`` for each of ``keys``, in order (one reply each): on a single
    server the arguments after the key are packed once, for every key (RESP sends them as
    the same bytes); e.g. one batch's order ids looked up in two generations of a hash."""

    name: str
    keys: tuple[str, ...]
    args: list[Any]


Command = tuple[Any, ...] | Same


def scripts(
    client: redis.Redis | RedisCluster, calls: list[tuple[Script, list[str], list[Any]]]
) -> list[Any]:
    """Script calls (script, keys, args): in one round trip on a single server, each routed
    to its slot's node by a Redis Cluster client. A script Redis no longer has (restarted
    without it) is loaded and the whole round sent again: every script of the hot path is
    idempotent, so a call that ran the first time changes nothing the second."""
    if not isinstance(client, redis.Redis):
        return [script(keys=ks, args=args) for script, ks, args in calls]
    commands = [("EVALSHA", script.sha, len(ks), *ks, *args) for script, ks, args in calls]
    try:
        return round_trip(client, commands)
    except redis.exceptions.NoScriptError:
        for script in {id(c[0]): c[0] for c in calls}.values():
            script.sha = client.script_load(script.script)
        return round_trip(client, commands)


def reads(client: redis.Redis | RedisCluster, commands: Sequence[Command]) -> list[Any]:
    """Read commands in one round trip (a pipeline routed per slot on a cluster); replies as
    Redis sends them (HGETALL: a flat list on a single server), one per key of a ``Same``."""
    if not commands:
        return []
    if isinstance(client, redis.Redis):
        return round_trip(client, commands)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        if isinstance(command, Same):
            for key in command.keys:
                pipe.execute_command(command.name, key, *command.args)
        else:
            pipe.execute_command(*command)
    return pipe.execute()  # type: ignore[no-any-return]


def _packed(commands: Sequence[Command]) -> tuple[bytes, int]:
    """The commands packed in one buffer, and how many replies they get."""
    out: list[bytes] = []
    for c in commands:
        if not isinstance(c, Same):
            out.append(hiredis.pack_command(c))
            continue
        first = hiredis.pack_command((c.name, c.keys[0], *c.args))
        cut = len(_head(c.name, c.keys[0], len(c.args)))
        out.append(first)
        out += [_head(c.name, key, len(c.args)) + first[cut:] for key in c.keys[1:]]
    return b"".join(out), sum(len(c.keys) if isinstance(c, Same) else 1 for c in commands)


def _head(name: str, key: str, nargs: int) -> bytes:
    """RESP of a command's array header, its name and its key (what precedes its args)."""
    n, k = name.encode(), key.encode()
    return b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (nargs + 2, len(n), n, len(k), k)


def round_trip(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Commands sent in one write and their replies read in order (single server). Every
    reply is read before the first error reply is raised, so the connection goes back to
    the pool in step; a broken connection raises redis.ConnectionError (retried by
    ``state.conn.Waiter``)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        packed, n = _packed(commands)
        conn.send_packed_command([packed])
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        for _ in range(n):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
                error = error or exc
    finally:
        pool.release(conn)
    if error is not None:
        raise error
    return replies
