"""MetaSchedule run in this process: the tuning contexts, the builder, the runner's threads.

``tune_here`` is what a local tuning (``tuning.py``) and a tuning unit on a worker
(``distributed.py``) both run: one TuneContext per kernel, candidates built with the CPU
intrinsics registered and measured with the robot's thread count (``TVM_NUM_THREADS``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.targets.tvm.lowering import register_cpu_tensor_intrinsics


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tune_here(
    tasks: list[Any],
    work_dir: Path,
    arch: str,
    per_task: int,
    threads: int,
    cost_model: str,
    db: Any,
    progress: Callable[[str], None] | None = None,
) -> None:
    """MetaSchedule on ``tasks`` (ExtractedTasks) in this process, records into ``db``."""
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule logs everything to <work_dir>/logs and, at its logger's level, to stdout:
    # WARNING keeps its task tables off the console (its file logs stay at DEBUG).
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    contexts = _tune_contexts(tasks, work_dir, cost_model, per_task)
    builder = ms.builder.LocalBuilder(
        initializer=functools.partial(register_cpu_tensor_intrinsics, arch)
    )
    callbacks = [*ms.MeasureCallback.create("default")]
    if progress is not None:
        callbacks.append(_progress(progress))
    # Measure with the thread count the robot will use.
    with _env(TVM_NUM_THREADS=str(threads)):
        ms.tune_tasks(
            tasks=contexts,
            task_weights=[float(t.weight) for t in tasks],
            work_dir=str(work_dir),
            max_trials_global=per_task * len(tasks),
            max_trials_per_task=per_task,
            num_trials_per_iter=min(64, per_task),
            builder=builder,
            database=db,
            cost_model=cost_model,
            measure_callbacks=callbacks,
        )


def _tune_contexts(tasks: list[Any], work_dir: Path, cost_model: str, per_task: int) -> list[Any]:
    """One TuneContext per kernel (as MetaSchedule's own helper, with a search sized to suit)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts = []
    loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    for task, logger, seed in zip(tasks, loggers, fork_seed(0, n=len(tasks)), strict=True):
        if cost_model == "random":
            # Without xgboost the search cannot rank candidates: a big population only costs time.
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=max(32, 2 * per_task), init_min_unmeasured=min(50, per_task)
            )
        else:
            strategy = "evolutionary"
        contexts.append(
            ms.TuneContext(
                mod=task.dispatched[0],
                target=task.target,
                space_generator="post-order-apply",
                search_strategy=strategy,
                task_name=task.task_name,
                logger=logger,
                rand_state=seed,
                num_threads=os.cpu_count() or 1,
            ).clone()
        )
    return contexts


def _progress(say: Callable[[str], None]) -> Any:
    """A MeasureCallback that reports each measured batch: tuning takes minutes."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self) -> None:
            self.trials = 0

        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            if not runner_results:
                return
            self.trials += len(runner_results)
            ok = [min(r.run_secs) for r in runner_results if r.run_secs and not r.error_msg]
            best = f", best {min(float(s) for s in ok) * 1e6:.1f} us" if ok else ""
            say(f"tvm tuning: kernel #{task_id}: {len(runner_results)} trials{best} "
                f"({self.trials} so far)")  # fmt: skip

    return Progress()
