"""The compile's own episodes of an ONNX model on this machine's cores.

A compile drives its task with an fp32 ONNX model in ONNX Runtime several times: the
``--calibration task`` recordings (the original model), each on-policy round of
``--distill onpolicy=R`` (the student), the accuracy guard's reference and candidates, and the
architecture search's finalists. These ran one after another on one core while the build
machine's other cores idled; on Meta-World they were a quarter of a ``--search-arch`` compile.

``pooled_episodes`` runs the first seed here and, when the rest would take more than
``POOL_AFTER_S`` seconds at that pace, sends them in units to worker processes
(``executor.processes``: as many as the machine has cores for ``threads`` each, or
``$ROBOPT_EPISODE_WORKERS``). Each worker runs ``distributed.episode_batch``, the unit a Ray
worker runs, so every seed's episode (return, success, steps, recorded feeds) is the one this
process gives for it (tests/evaluate/test_pooled_episodes.py). Tasks that are not robopt's own
(a gymnasium id, a ``module:factory``) run here: a fresh process may not know them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from robopt_compile.tasks import Episode, Task

POOL_AFTER_S = 10.0  # below this, starting workers (2-4 s each) costs more than it saves
UNITS_PER_WORKER = 3  # units per worker: late units even out episodes of unequal length


def pooled_episodes(
    task_name: str,
    model: Any,
    seeds: Sequence[int],
    threads: int | None = 1,
    progress: Callable[[int], None] | None = None,
    record: bool = False,
    task: Task | None = None,
) -> list[Episode]:
    """``run_episodes`` of ``model`` (an fp32 ``ir.Model`` or .onnx path, in ONNX Runtime
    with ``threads`` intra-op threads) on ``task_name`` for ``seeds``, in seed order.
    ``task``: ``task_name`` already open here (used for this process's episodes, left open);
    None opens and closes it."""
    from robopt_compile.evaluate.episodes import run_episodes
    from robopt_compile.evaluate.policies import onnx_policy
    from robopt_compile.tasks import TASKS, get_task

    seeds = [int(s) for s in seeds]
    here = contextlib.nullcontext(task) if task is not None else get_task(task_name)
    with here as task, onnx_policy(model, threads) as pol:
        t0 = time.perf_counter()
        eps = run_episodes(task, pol, seeds[:1], progress, record=record)
        rest = seeds[1:]
        workers = _workers(task_name in TASKS, time.perf_counter() - t0, len(rest), threads)
        if workers == 1:
            return eps + run_episodes(task, pol, rest, progress, record=record)
    return eps + _in_workers(task_name, model, rest, threads, workers, progress, record)


def _workers(ours: bool, first_s: float, rest: int, threads: int | None) -> int:
    from robopt_compile.executor import WORKERS_ENV
    from robopt_compile.executor.processes import cores_for

    if not ours or rest < 2 or first_s * rest < POOL_AFTER_S:
        return 1
    if not (os.environ.get(WORKERS_ENV) or _spawn_safe()):
        return 1
    return cores_for(rest, threads)


def _spawn_safe() -> bool:
    """Whether workers may start unasked: a spawned worker first runs the main script's top
    level, harmless for robopt's commands (pip's wrappers guard it) and for an interactive
    session, not for a user's script that calls robopt outside ``if __name__ == "__main__"``
    (such a script opts in with ``ROBOPT_EPISODE_WORKERS``)."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None:
        return True
    return os.path.basename(sys.argv[0]).startswith("robopt-")


def _in_workers(
    task_name: str,
    model: Any,
    seeds: list[int],
    threads: int | None,
    workers: int,
    progress: Callable[[int], None] | None,
    record: bool,
) -> list[Episode]:
    from robopt_compile.evaluate.distributed import episode_batch, ship_onnx
    from robopt_compile.executor.processes import ProcessExecutor

    per = math.ceil(len(seeds) / (workers * UNITS_PER_WORKER))
    units = [seeds[k : k + per] for k in range(0, len(seeds), per)]
    ex = ProcessExecutor(workers)
    try:
        s = ship_onnx(ex, model)
        args = [(task_name, s.kind, s.key, s.data, u, threads, record) for u in units]
        done = None if progress is None else (lambda _i, res: progress(len(res[0])))
        got = ex.map(episode_batch, args, progress=done)
    finally:
        ex.close()
    return [e for eps, _, _ in got for e in eps]
