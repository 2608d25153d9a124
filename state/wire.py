"""How the hot path talks to Redis: many commands in one write, packed by hiredis.

redis-py's pipeline converts every argument in Python before hiredis packs it; the hot path
sends 7-10 arguments per order (script calls, the registry and planning reads), so on a
single server they go to ``hiredis.pack_command`` and one ``sendall`` per round trip on a
pooled redis-py connection. A Redis Cluster client keeps redis-py's routing per slot.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script


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


def reads(client: redis.Redis | RedisCluster, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Read commands in one round trip (a pipeline routed per slot on a cluster); replies as
    Redis sends them (HGETALL: a flat list on a single server)."""
    if not commands:
        return []
    if isinstance(client, redis.Redis):
        return round_trip(client, commands)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()  # type: ignore[no-any-return]


def round_trip(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Commands sent in one write and their replies read in order (single server). Every
    reply is read before the first error reply is raised, so the connection goes back to
    the pool in step; a broken connection raises redis.ConnectionError (retried by
    ``state.conn.Waiter``)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join([hiredis.pack_command(c) for c in commands])])
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        for _ in commands:
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
