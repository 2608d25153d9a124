"""The forked workers' handle (dataflows/forking.py ``Forked``) against real processes and
real signals: `run`'s signal handler polls the workers, and may interrupt a poll of its own.
After an adversarial review of the forked start."""

from __future__ import annotations

import linecache
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from dataflows.forking import Forked
from tests.conftest import ROOT


def _dead_child(code: int = 3) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    time.sleep(0.2)  # a zombie now: the next waitpid reaps it
    return pid


def _poll_interrupted_after_waitpid(pr: Any, target: str) -> object:
    """``pr.poll()`` with a signal, whose handler polls too, sent right after ``target``'s
    waitpid line: where a SIGTERM to `onestock run` may land."""
    fired: list[int] = []

    def trace(frame: FrameType, event: str, _arg: object) -> Any:
        if frame.f_code.co_name != target:
            return trace
        before = linecache.getline(frame.f_code.co_filename, frame.f_lineno - 1)
        if event == "line" and not fired and "waitpid(self.pid" in before:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGUSR1)
        return trace

    old = signal.signal(signal.SIGUSR1, lambda *_: pr.poll())
    sys.settrace(trace)
    try:
        return pr.poll()
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGUSR1, old)
        assert fired, "the signal was never sent"


def test_a_poll_interrupted_by_a_handler_that_polls_keeps_the_status() -> None:
    pr = Forked(_dead_child())
    assert _poll_interrupted_after_waitpid(pr, "poll") == 3  # was: ChildProcessError
    assert pr.wait() == 3


def test_a_signal_to_an_ended_worker_is_no_error() -> None:
    pr = Forked(_dead_child(0))
    assert pr.wait() == 0
    pr.send_signal(signal.SIGTERM)
    pr.kill()


def test_the_command_line_may_fork_however_it_is_started() -> None:
    """`python -m onestock` and the `onestock` script (the image's entry point) both import
    the package first, which keeps BLAS to one thread: after the CLI and the dataflow are
    imported the process has one thread, so `onestock run` can fork its workers
    (ONESTOCK_FORK_WORKERS=1)."""
    code = "import onestock.cli, onestock.cli_perf, dataflows.runner as r\n"
    code += "print(r.forking.may_fork())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd=ROOT, check=True,
        env={k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",
                                                               "OMP_NUM_THREADS")},
    )  # fmt: skip
    assert out.stdout.strip() == b"True", out.stderr


def test_a_run_with_more_threads_starts_fresh_workers(cli_env: dict[str, str], url: str) -> None:
    """Where BLAS runs threads of its own, `onestock run` cannot fork even when asked to
    (ONESTOCK_FORK_WORKERS=1): its workers are fresh interpreters, and the run decides every
    order all the same."""
    from onestock import burst
    from state.store import Store
    from tests.conftest import onestock
    from tests.test_flow import CATALOG

    onestock("catalog", "load", str(CATALOG), env=cli_env)
    lines = list(burst.orders(300, burst.demo_catalog(), seed=4))
    onestock("orders", "push", "-", input=b"\n".join(lines), env=cli_env)
    threads = {**cli_env, "OPENBLAS_NUM_THREADS": "2", "ONESTOCK_FORK_WORKERS": "1"}
    code = "import onestock.cli, dataflows.runner as r; print(r.forking.may_fork())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT,
                          env={**os.environ, **threads}).stdout.strip() == b"False"  # fmt: skip
    onestock("run", "--until-drained", "--workers", "2", env=threads, timeout=120)
    store = Store.connect(url)
    assert sum(store.shards.outcome_counts(store.shards.shard_count())) == 300
