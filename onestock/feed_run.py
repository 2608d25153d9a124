"""``onestock feed``: the availability change feed's publisher, and the webhook deliveries
(of the feed's transitions and of the fulfilment records, ``onestock/ops/deliver.py``), in a
process of its own so that a slow subscriber never slows the decisions. ``onestock run``
starts one beside its workers (``--no-feed``: not); any number may run, one publishes at a
time (a lease)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from onestock.ops import deliver
from onestock.ops.feed import Publisher
from state.store import Store


def serve(url: str, say: Callable[[str], None], stop: threading.Event) -> None:
    """Publish (a thread) and deliver (asyncio, here) until ``stop`` is set; then the
    publisher's last round, and the deliveries of what it published and of the records
    written (``drain_s`` at most)."""
    publisher = Publisher(Store.connect(url), say)
    published = threading.Event()

    def publish() -> None:
        try:
            publisher.run(stop)
        finally:
            published.set()

    thread = threading.Thread(target=publish, name="onestock-publisher", daemon=True)
    thread.start()
    try:
        deliver.run(url, say, stop, published)
    finally:
        stop.set()  # (the deliverer failed: the publisher stops too, and the process ends)
        thread.join()


def main(url: str) -> int:
    """The command: until SIGTERM or SIGINT, then one last round; exit 0."""
    stop = threading.Event()

    def stopping(_signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # (blocked by start)

    def say(message: str) -> None:
        print(f"onestock feed: {message}", file=sys.stderr, flush=True)

    parent = os.environ.pop(PARENT, None)
    if parent:
        _die_with(int(parent))
    serve(url, say, stop)
    return 0


PARENT = "ONESTOCK_FEED_PARENT"  # set by ``start``: the pid of the onestock run it serves


def _die_with(parent: int) -> None:
    """End at once, writing nothing more, when the ``onestock run`` that started this process
    is gone (a ``kill -9`` of it leaves no feed process behind, as it leaves no worker: the
    next publisher sweeps every SKU, the next deliverer resumes from its progress). The
    kernel's parent-death signal where there is one, and a watch of the parent pid."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def start(url: str) -> subprocess.Popen[bytes]:
    """``onestock feed`` as a child process (of ``onestock run``). It starts with SIGTERM
    blocked, so a stop that comes while it is still starting waits for its handler (one last
    round, the deliveries of it) instead of killing it."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "onestock", "feed", "--redis-url", url],
            start_new_session=True,  # a Ctrl-C reaches it through run, after the workers
            env={**os.environ, PARENT: str(os.getpid())},
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def finish(child: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop the child (one last round of publishing first); kill it if it does not end."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
