"""MetaSchedule tuning of a model's fused kernels, with a JSON database kept between builds.

``tune`` extracts one task per fused kernel, splits the trial budget evenly over them, and tunes
only the kernels that have not had their share yet (``robopt_trials.json`` beside MetaSchedule's
database under ``$ROBOPT_CACHE/tvm/<target key>/``), so a second build of the same model, or of a
model sharing kernels, reuses the records instead of measuring again. Candidates are measured
with the thread count the robot will use. Without xgboost the random cost model runs with a
small search population. Progress goes to the ``robopt.tvm`` logger.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError
from robopt_compile.targets.tvm.lowering import fuse_passes, register_cpu_tensor_intrinsics

log = logging.getLogger("robopt.tvm")


def _task_key(task: Any) -> str:
    return hashlib.sha256(task.dispatched[0].script().encode()).hexdigest()[:24]


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


def tune(
    mod: Any,
    target: Any,
    arch: str,
    trials: int,
    work_dir: Path,
    *,
    threads: int,
    can_measure: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Tune ``mod``'s kernels into the JSON database at ``work_dir``; returns (database, report).

    ``trials`` is the budget for the whole model, split evenly over its kernels. A kernel that
    already got its share in an earlier build (``robopt_trials.json`` beside the database) is
    not tuned again: its records are reused.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    say = progress or log.info
    t0 = time.perf_counter()
    register_cpu_tensor_intrinsics(arch)
    work_dir.mkdir(parents=True, exist_ok=True)
    with target:
        fused = tvm.transform.Sequential(fuse_passes(target))(mod)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    per_task = max(1, math.ceil(trials / max(1, len(tasks))))
    ledger_path = work_dir / "robopt_trials.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    db = ms.database.JSONDatabase(work_dir=str(work_dir))
    records_before = len(db)
    keys = [_task_key(t) for t in tasks]
    todo_idx = [i for i, k in enumerate(keys) if ledger.get(k, {}).get("trials", 0) < per_task]
    todo = [tasks[i] for i in todo_idx]
    reused = sum(
        len(db.get_top_k(db.commit_workload(t.dispatched[0]), 1 << 20))
        for i, t in enumerate(tasks)
        if i not in todo_idx and db.has_workload(t.dispatched[0])
    )
    cost_model = "xgb" if _has_module("xgboost") else "random"
    if todo and not can_measure:
        raise BuildError(
            f"{len(todo)} of {len(tasks)} kernels have no tuning records for this target and "
            "cannot be measured from this machine: tune on the board (robopt-compile there) and "
            f"copy {work_dir} here, or build without --tune-trials."
        )
    say(
        f"tvm tuning: {len(tasks)} kernels, {len(tasks) - len(todo)} already tuned "
        f"({reused} records reused), {len(todo)} to tune with {per_task} trials each "
        f"(cost model {cost_model}); database {work_dir}"
    )
    if todo:
        # MetaSchedule logs everything to <work_dir>/logs and, at its logger's level, to stdout:
        # WARNING keeps its task tables off the console (its file logs stay at DEBUG).
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        contexts = _tune_contexts(todo, work_dir, cost_model, per_task)
        builder = ms.builder.LocalBuilder(
            initializer=functools.partial(register_cpu_tensor_intrinsics, arch)
        )
        # Measure with the thread count the robot will use.
        with _env(TVM_NUM_THREADS=str(threads)):
            ms.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in todo],
                work_dir=str(work_dir),
                max_trials_global=per_task * len(todo),
                max_trials_per_task=per_task,
                num_trials_per_iter=min(64, per_task),
                builder=builder,
                database=db,
                cost_model=cost_model,
                measure_callbacks=[*ms.MeasureCallback.create("default"), _progress(say)],
            )
        for i in todo_idx:
            ledger[keys[i]] = {"task": tasks[i].task_name, "trials": per_task}
        tmp = ledger_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        tmp.replace(ledger_path)  # atomic: a concurrent build reads the old or the new ledger
    report = {
        "trials_requested": trials,
        "trials_per_kernel": per_task,
        "kernels": len(tasks),
        "kernels_tuned": len(todo),
        "kernels_reused": len(tasks) - len(todo),
        "records_reused": reused,
        "new_trials": len(db) - records_before,
        "seconds": round(time.perf_counter() - t0, 2),
        "database": str(work_dir),
        "cost_model": cost_model,
    }
    say(
        f"tvm tuning done in {report['seconds']} s: {report['new_trials']} new trials, "
        f"{reused} records reused"
    )
    return db, report


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


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


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
