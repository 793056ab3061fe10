"""MetaSchedule tuning as units of work on robopt's executor (``--executor ray``, docs/SCALE.md).

``tune_on_executor`` deals the kernels still to tune round-robin into one unit per worker; a
unit (``tune_kernels``) gets its kernels as TVM's JSON of their TIR modules, the target as a
dict and the trial budget, tunes them on the worker into a database of its own and sends that
database's two JSON files back. The driver commits each record into the model's database
(``tuning.py``), so the ledger, the reuse on the next build and the compile are the same as
after a local tuning.

Timings only mean something on the CPU the engine is for: a unit refuses to measure on a
worker whose CPU is not the driver's (``cpu_identity``), with a one-line ``BuildError``.
Several units on one machine measure at the same time, each with the robot's thread count:
on a 2-core machine the candidates' timings are noisier than in a local tuning.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from robopt_compile.errors import BuildError
from robopt_compile.targets.tvm.lowering import register_cpu_tensor_intrinsics

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def cpu_identity() -> str:
    """This machine's CPU model and a digest of its feature flags (Linux), else its platform."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".strip()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    model = fields.get("model name") or fields.get("Model") or platform.machine()
    flags = fields.get("flags") or fields.get("Features") or ""
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:8]
    return f"{model} (flags {digest})"


def tune_kernels(unit: dict[str, Any]) -> dict[str, Any]:
    """One unit on a worker: tune ``unit['kernels']``; the database files' text and timings."""
    import tvm

    from robopt_compile.targets.tvm.metaschedule import tune_here

    here = cpu_identity()
    if here != unit["cpu"]:
        raise BuildError(
            f"a tuning unit landed on a worker with another CPU ({here}, not {unit['cpu']}): "
            "MetaSchedule's timings would not be the robot's; run the cluster's workers on "
            "machines like the target, or tune with --executor local."
        )
    t0 = time.perf_counter()
    register_cpu_tensor_intrinsics(unit["arch"])
    target = tvm.target.Target(unit["target"])
    kernels = [
        SimpleNamespace(
            dispatched=[tvm.ir.load_json(k["mod"])],
            target=target,
            task_name=k["name"],
            weight=k["weight"],
        )
        for k in unit["kernels"]
    ]
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="robopt-tune-") as d:
        db = ms.database.JSONDatabase(work_dir=d)
        tune_here(kernels, Path(d), unit["arch"], unit["per_task"], unit["threads"],
                  unit["cost_model"], db)  # fmt: skip
        files = {name: (Path(d) / name).read_text() for name in DB_FILES}
    return {"files": files, "kernels": [k["name"] for k in unit["kernels"]],
            "seconds": round(time.perf_counter() - t0, 2), "cpu": here}  # fmt: skip


def tune_on_executor(
    executor: Any,
    tasks: list[Any],
    target: Any,
    arch: str,
    per_task: int,
    threads: int,
    cost_model: str,
    db: Any,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Tune ``tasks`` in ``executor.workers`` units; their records committed into ``db``."""
    import tvm

    n = min(executor.workers, len(tasks))
    kernels = [{"name": t.task_name, "weight": float(t.weight),
                "mod": tvm.ir.save_json(t.dispatched[0])} for t in tasks]  # fmt: skip
    base = {"target": json.loads(str(target)), "arch": arch, "per_task": per_task,
            "threads": threads, "cost_model": cost_model, "cpu": cpu_identity()}  # fmt: skip
    units = [({**base, "kernels": kernels[i::n]},) for i in range(n)]
    say(f"tvm tuning: {len(tasks)} kernels in {n} units on the {executor.name} executor")
    t0 = time.perf_counter()

    def done(i: int, result: dict[str, Any]) -> None:
        say(f"tvm tuning: unit {i + 1}/{n} done ({len(result['kernels'])} kernels, "
            f"{result['seconds']} s)")  # fmt: skip

    results = executor.map(tune_kernels, units, progress=done)
    merged = sum(merge_records(db, r["files"]) for r in results)
    return {
        "executor": executor.name,
        "units": n,
        "records_merged": merged,
        "unit_seconds": [r["seconds"] for r in results],
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }


def merge_records(db: Any, files: dict[str, str]) -> int:
    """Commit every tuning record of a unit's database files into ``db``; how many."""
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="robopt-merge-") as d:
        for name in DB_FILES:
            (Path(d) / name).write_text(files.get(name, ""))
        theirs = ms.database.JSONDatabase(work_dir=d)
        records = list(theirs.get_all_tuning_records())
        for rec in records:
            workload = db.commit_workload(rec.workload.mod)
            db.commit_tuning_record(
                ms.database.TuningRecord(
                    rec.trace, workload, rec.run_secs, rec.target, rec.args_info
                )
            )
    return len(records)
