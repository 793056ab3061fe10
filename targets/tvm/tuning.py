"""MetaSchedule tuning of a model's fused kernels, with a JSON database kept between builds.

``tune`` extracts one task per fused kernel, splits the trial budget evenly over them, and tunes
only the kernels that have not had their share yet (``robopt_trials.json`` beside MetaSchedule's
database under ``$ROBOPT_CACHE/tvm/<target key>/``), so a second build of the same model, or of a
model sharing kernels, reuses the records instead of measuring again. Candidates are measured
with the thread count the robot will use. Without xgboost the random cost model runs with a
small search population. Progress goes to the ``robopt.tvm`` logger.
"""

from __future__ import annotations

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
from robopt_compile.targets.tvm.metaschedule import tune_here

log = logging.getLogger("robopt.tvm")


def _task_key(task: Any) -> str:
    return hashlib.sha256(task.dispatched[0].script().encode()).hexdigest()[:24]


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
    executor: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Tune ``mod``'s kernels into the JSON database at ``work_dir``; returns (database, report).

    ``trials`` is the budget for the whole model, split evenly over its kernels. A kernel that
    already got its share in an earlier build (``robopt_trials.json`` beside the database) is
    not tuned again: its records are reused. ``executor`` (robopt's ``--executor``, anything
    with ``map`` and ``workers``): the kernels to tune are split into one unit per worker
    (``distributed.py``) and their records merged into the database here.
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
    distributed = None
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
        if executor is not None and executor.workers > 1 and len(todo) > 1:
            from robopt_compile.targets.tvm.distributed import tune_on_executor

            distributed = tune_on_executor(
                executor, todo, target, arch, per_task, threads, cost_model, db, say
            )
        else:
            tune_here(todo, work_dir, arch, per_task, threads, cost_model, db, say)
        for i in todo_idx:
            ledger[keys[i]] = {"task": tasks[i].task_name, "trials": per_task}
        tmp = ledger_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        tmp.replace(ledger_path)  # atomic: a concurrent build reads the old or the new ledger
    report = {
        "trials_requested": trials,
        "executor": distributed,
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


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
