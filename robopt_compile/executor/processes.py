"""Units of work on this machine's cores: a pool of spawned worker processes.

The compile's own closed-loop episodes (the ``--calibration task`` recordings, the student's
on-policy rounds, the accuracy guard's and the search finalists' task figures) ran one after
another in the compiling process: one core of the build machine, while the others idled
(``evaluate.pooled_episodes`` uses this pool for them). A unit is the same plain function of
plain arguments as on Ray (``evaluate.distributed.episode_batch``), so its results are the
ones the unit gives in this process.

Workers are spawned (never forked: MuJoCo's EGL context and ONNX Runtime's thread pools do
not survive a fork) with this process's environment and ``sys.path``; each keeps the task and
the policy it opened for its next unit. ``ROBOPT_EPISODE_WORKERS`` overrides the count
(``1``: everything here, no process; Ray workers get 1, the cluster shares out the cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

from robopt_compile.errors import InputError, RoboptError
from robopt_compile.executor import WORKERS_ENV, Executor


def cores_for(units: int, threads: int | None) -> int:
    """How many worker processes ``units`` units want, each running ``threads`` threads
    (None: all cores, so one worker): ``$ROBOPT_EPISODE_WORKERS`` or the machine's cores
    divided by ``threads``, never more than the units."""
    cores = os.cpu_count() or 1
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise InputError(f"{WORKERS_ENV}={text!r}: expected a whole number >= 1.")
        want = int(text)
    else:
        want = cores // (threads or cores)
    return max(1, min(want, units))


class ProcessExecutor(Executor):
    """``map`` on ``workers`` spawned processes; results in the order of ``args``."""

    name = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self._pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_quiet)

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple[Any, ...]],
        *,
        progress: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        futs = {self._pool.submit(fn, *a): i for i, a in enumerate(args)}
        out: list[Any] = [None] * len(futs)
        try:
            for fut in cf.as_completed(futs):
                i = futs[fut]
                try:
                    out[i] = fut.result()  # a unit's own exception is raised as it is
                except cf.process.BrokenProcessPool:
                    raise RoboptError(
                        f"a worker process running {fn.__name__} died (out of memory, or a "
                        "script calling robopt outside `if __name__ == '__main__':`); guard "
                        f"the script or set {WORKERS_ENV}=1 to run them in this process."
                    ) from None
                if progress is not None:
                    progress(i, out[i])
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _quiet() -> None:
    """A worker's stderr goes nowhere: a unit's error comes back through its future, and a
    worker's teardown (MuJoCo freeing its EGL context at exit) must not print tracebacks on
    the user's terminal."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
