"""The dataflow's worker processes, forked from ``onestock run``'s process: it has imported
the dataflow once for all of them (a fresh interpreter spends 0.4 s of CPU on that). A fork
copies only the calling thread, so it is used only where that is the process's one thread
(``may_fork``); ``dataflows.runner`` starts a fresh interpreter otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

STOPS = {signal.SIGTERM, signal.SIGINT}


def may_fork() -> bool:
    """Whether this process may fork the workers: one thread only (a fork copies just the
    calling one; importing ``onestock`` keeps BLAS to one), on Linux."""
    try:
        return threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class Forked:
    """A worker forked from this process: what ``run`` asks of a ``subprocess.Popen``. Its
    ``poll`` may be entered again from a signal handler (``forward``): the inner call
    answers None rather than reap the child under the outer one."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._busy = False

    def poll(self) -> int | None:
        if self.returncode is None and not self._busy:
            self._busy = True
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped elsewhere: its status is lost, not its end
                self.returncode = 1
            finally:
                self._busy = False
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        """Without reaping (a handler may call it inside ``poll``): an unreaped child's pid
        cannot be reused."""
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Worker = subprocess.Popen[bytes] | Forked


def fork(main: Callable[[list[str]], int], argv: list[str], env: dict[str, str]) -> Forked:
    """Fork ``main(argv)`` with ``env`` (``run``'s worker). SIGTERM/SIGINT stay blocked
    across the fork: the child must not run ``run``'s handler (it would signal its
    siblings); one that comes meanwhile waits for the worker's own (``_stop_on_signals``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return Forked(pid)
    for sig in STOPS:
        signal.signal(sig, signal.SIG_DFL)
    os.environ.update(env)
    for stream in (sys.stdout, sys.stderr):  # as PYTHONUNBUFFERED does for a fresh worker
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, write_through=True)
    os._exit(_forked_main(main, argv))


def _forked_main(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """The forked worker's exit status (it never returns into ``run``'s frames)."""
    code = 1
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001, S110 (a closed pipe: the status still stands)
            pass
    return code
