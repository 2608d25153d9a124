"""Run the dataflow: one process per worker (the GIL), Bytewax recovery on.

``run`` starts N worker processes that form one Bytewax cluster over loopback TCP, forwards
SIGTERM/SIGINT to them (each ends its partitions cleanly) and returns their exit status. A
worker dies with its parent (PR_SET_PDEATHSIG), so ``kill -9`` of ``onestock run`` leaves no
orphan behind, and the next run resumes from the recovery snapshots. Each worker is a fresh
interpreter, or with ``ONESTOCK_FORK_WORKERS=1`` forked from ``run``'s process, which has
imported the dataflow once for all of them (``dataflows.forking``).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig, init_db_dir

from dataflows import forking
from dataflows.flow import build_flow
from dataflows.source import STARTED, STOP
from onestock.domain import events
from onestock.domain.errors import OnestockError
from onestock.domain.settings import Settings
from state import keys
from state.server import free_port

# Senders retry a failed webhook for up to 3 days (Stripe's): a shorter idempotency window is
# said at the start
RETRIES_MS = 3 * 86_400_000

RECOVERY_PARTITIONS = 4

# A worker allocates many short-lived objects per order; CPython's cycle collector passes
# over the young ones every 700 net allocations by default, about 2 us of the decider's
# ~22 us per accepted order (gc.callbacks around 100,000 orders). At a worker's start what
# is alive (modules, the flow) is frozen out of every pass and the young passes come every
# 20,000: cyclic garbage is still collected, in fewer passes.
GC_YOUNG = 20_000

STOP_GRACE_S = 15.0  # a worker still running this long after SIGTERM is killed
INSTANCE_KEY = keys.INSTANCE


def calm_gc() -> None:
    """The cycle collector set for a decider process (``GC_YOUNG``)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)


def recovery_dir(home: Path, instance: str) -> Path:
    """Snapshots belong to one Redis dataset (its stream ids): one directory per instance id."""
    return Path(home).absolute() / "recovery" / instance


def prepare_recovery(path: Path) -> None:
    """Create the recovery partitions once (under a lock: the processes of one cluster may
    start at the same moment over the same directory)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not any(path.glob("part-*")):
            init_db_dir(path, RECOVERY_PARTITIONS)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop_on_signals() -> None:
    """SIGTERM/SIGINT end the partitions cleanly once the dataflow runs, and end the process
    at once before that. A thread waits for them: while Bytewax is still connecting to its
    peers it runs no Python code, so a Python signal handler would wait with it (for ever, if
    the peer is gone)."""
    sigs = {signal.SIGTERM, signal.SIGINT}

    def stop(*_: object) -> None:
        if not STARTED.is_set():
            os._exit(0)  # nothing read yet: nothing to finish
        STOP.set()

    # (a thread started before this point, e.g. a BLAS pool, may still take the signal: the
    # Python handler covers that case; `run` starts workers with one BLAS thread)
    for sig in sigs:
        signal.signal(sig, stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)  # inherited by every thread started later

    def wait() -> None:
        while True:
            stop(signal.sigwait(sigs))

    threading.Thread(target=wait, name="onestock-signals", daemon=True).start()


def worker_main(argv: list[str] | None = None) -> int:
    """One worker process of the cluster (started by ``run``)."""
    p = argparse.ArgumentParser(prog="python -m dataflows.runner")
    p.add_argument("--url", required=True)
    p.add_argument("--recovery", required=True, type=Path)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--addresses", default="")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--poll-ms", type=int, default=20)
    p.add_argument("--snapshot-ms", type=int, default=1000)
    p.add_argument("--until-drained", action="store_true")
    p.add_argument("--parent", type=int, default=0)
    a = p.parse_args(argv)
    _die_with_parent()
    if a.parent and os.getppid() != a.parent:
        return 1  # the parent died before we asked to die with it: nobody waits for us
    _stop_on_signals()
    settings = Settings(
        shards=a.shards, batch_size=a.batch_size, poll_ms=a.poll_ms, snapshot_ms=a.snapshot_ms
    )
    flow = build_flow(a.url, settings, until_drained=a.until_drained)
    calm_gc()
    addresses = a.addresses.split(";") if a.addresses else None
    if addresses:
        _await_lower(addresses, a.process_id)
    cli_main(
        flow,
        workers_per_process=1,
        process_id=a.process_id if addresses else None,
        addresses=addresses,
        epoch_interval=timedelta(milliseconds=a.snapshot_ms),
        recovery_config=RecoveryConfig(str(a.recovery)),
    )
    return 0


def _await_lower(addresses: list[str], mine: int, wait_s: float = 30.0) -> None:
    """Wait until every lower-numbered process of the cluster on this machine listens.
    Timely connects each process to the lower-numbered ones, and one that is refused
    (the other still importing) prints "error connecting to worker ...; retrying" and
    sleeps a whole second: waiting here, a few ms at a time, makes a quiet start and saves
    those seconds. Only for loopback addresses and where ``/proc/net/tcp`` says what
    listens (Linux); elsewhere Timely's own retries. A probe connection is no option: Timely
    takes any connection for a worker's and reads its handshake."""
    ports = set()
    for address in addresses[:mine]:
        host, _, port = address.rpartition(":")
        if host in ("127.0.0.1", "localhost"):
            ports.add(int(port))
    if not ports or not Path("/proc/net/tcp").exists():
        return
    deadline = time.monotonic() + wait_s
    while not ports <= _listening() and time.monotonic() < deadline and not STOP.is_set():
        time.sleep(0.005)


def _listening() -> set[int]:
    """The TCP ports something on this machine listens on (``/proc/net/tcp``, ``tcp6``)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def _check_ports(base: int, n: int) -> None:
    """Bytewax's webserver binds 0.0.0.0:<port> in a thread that only panics when the port is
    taken (the dataflow runs on without it): say so before starting instead."""
    for port in range(base, base + n):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as exc:
                raise OnestockError(
                    f"--metrics-port {base}: port {port} (worker {port - base}) is taken: {exc}"
                ) from None


def run(
    url: str,
    instance: str,
    settings: Settings,
    *,
    until_drained: bool = False,
    process_id: int | None = None,
    cluster: list[str] | None = None,
) -> int:
    """Run ``settings.workers`` worker processes until drained or stopped; their exit status.

    With ``cluster`` (every process's host:port) and ``process_id``, run only that process of
    a Bytewax cluster whose other processes are started elsewhere (other machines, or other
    invocations), all with the same list."""
    mine, addresses = _processes(settings, process_id, cluster)
    if events.WINDOW_MS < RETRIES_MS:
        print(f"onestock: the idempotency window (ONESTOCK_IDEMPOTENCY_DAYS) is shorter than "
              f"{RETRIES_MS // 86_400_000} days, how long some senders retry a webhook: "
              "a copy of an order that comes after it is a dead letter", flush=True)  # fmt: skip
    if settings.metrics_port:
        _check_ports(settings.metrics_port + mine[0], len(mine))
    rdir = recovery_dir(settings.home, instance)
    prepare_recovery(rdir)
    procs: list[forking.Worker] = []
    stop_at: list[float] = []  # when the workers were first asked to stop

    def forward(signum: int, _frame: object) -> None:
        if not stop_at:
            stop_at.append(time.monotonic())
        for pr in procs:  # (no poll here: it may interrupt one; send_signal skips the ended)
            pr.send_signal(signal.SIGTERM)

    # before the first worker starts: a SIGTERM while they start stops them, not just us
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in mine:
            if stop_at:
                break
            args = _worker_args(url, rdir, i, addresses, settings, until_drained)
            # a signal while a worker starts is forwarded once it is in ``procs``
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, forking.STOPS)
            try:
                env = _worker_env(settings, i)
                fresh = [sys.executable, "-m", "dataflows.runner", *args]
                procs.append(
                    forking.fork(worker_main, args, env)
                    if settings.fork_workers and forking.may_fork()
                    else subprocess.Popen(fresh, env=env)
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return _wait(procs, stop_at, lambda: forward(signal.SIGTERM, None))
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _processes(
    settings: Settings, process_id: int | None, cluster: list[str] | None
) -> tuple[list[int], str]:
    """The ids of the processes this run starts, and every process's address (";"-joined;
    "" for a single process)."""
    if cluster:
        return [process_id or 0], ";".join(cluster)
    workers = max(1, settings.workers)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(workers)) if workers > 1 else ""
    return list(range(workers)), addresses


def _worker_args(
    url: str, rdir: Path, i: int, addresses: str, settings: Settings, until_drained: bool
) -> list[str]:
    """The arguments of worker process ``i`` (``worker_main``)."""
    cmd = [
        "--url", url, "--recovery", str(rdir), "--process-id", str(i),
        "--addresses", addresses, "--shards", str(settings.shards),
        "--batch-size", str(settings.batch_size), "--poll-ms", str(settings.poll_ms),
        "--snapshot-ms", str(settings.snapshot_ms), "--parent", str(os.getpid()),
    ]  # fmt: skip
    if until_drained:
        cmd.append("--until-drained")
    return cmd


def _worker_env(settings: Settings, i: int) -> dict[str, str]:
    """The environment of worker process ``i``: one BLAS thread; with a metrics port,
    Bytewax's own webserver (its metrics and ours) on that port + i."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if settings.metrics_port:
        env |= {
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(settings.metrics_port + i),
            # where it writes the dataflow's JSON description (default: the working dir)
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(Path(settings.home).absolute()),
        }
    return env


def _wait(procs: list[forking.Worker], stop_at: list[float], stop: Callable[[], None]) -> int:
    """Wait for the workers to end; the first failure's status, else 0. One worker failing
    stops the others (``stop``: the cluster cannot go on without it); a worker still running
    STOP_GRACE_S after the first stop (``stop_at``) is killed."""
    status = 0
    while any(pr.poll() is None for pr in procs):
        for pr in procs:
            rc = pr.poll()
            if rc not in (None, 0) and not stop_at:
                # one worker failed: the cluster cannot go on without it
                status = status or rc
                stop()
        if stop_at and time.monotonic() - stop_at[0] > STOP_GRACE_S:
            _kill_stragglers(procs)
        time.sleep(0.05)
    for pr in procs:
        status = status or (pr.returncode if pr.returncode and pr.returncode > 0 else 0)
    return status


def _kill_stragglers(procs: list[forking.Worker]) -> None:
    """Kill the workers still running, e.g. one still waiting for a peer that is gone:
    recovery makes this safe."""
    for i, pr in enumerate(procs):
        if pr.poll() is None:
            print(f"onestock: worker {i} did not stop within {STOP_GRACE_S:.0f} s of "
                  "SIGTERM: killed (the next run resumes from recovery)",
                  file=sys.stderr, flush=True)  # fmt: skip
            pr.kill()
            pr.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(worker_main())
