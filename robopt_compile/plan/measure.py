"""How the search measures a built plan: its latency, size, what it really applied, and one
accuracy measure for every plan of a search.

One measure per search, named once: with ``--eval`` the task's own drop (return or success,
closed loop on seeded episodes), else the relative L2 of each engine's outputs against the
fp32 source model on the search's reference inputs (``--reference-inputs``, else seeded random
inputs, which the calibration never sees). Each plan's own accuracy guard still decides its
rollback inside the compile; the table compares plans by the same yardstick.

What was applied: a plan's label is what was asked; a quantization the guard rolled back to
fp32 or a pruning step it undid is not in the engine, so ``applied_label`` says what is.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from robopt_compile.plan.planner import Candidate

OUTPUT_MEASURE = "relative L2 vs the fp32 model on the reference inputs"


def bundle_size_mb(bundle: Path) -> float:
    """The engine folder's size in MB (what the robot stores)."""
    m = json.loads((bundle / "manifest.json").read_text())
    engine = bundle / m["engine"]["dir"]
    return sum(p.stat().st_size for p in engine.rglob("*") if p.is_file()) / 2**20


def measure_bundle(bundle: Path, threads: int | None, runs: int) -> dict[str, Any]:
    """p50/p99 latency and memory growth from the harness, ``runs`` timed runs."""
    from robopt_compile.bench.harness import run_benchmark

    r = run_benchmark(bundle, runs=runs, warmup=max(5, runs // 10), threads=threads or 1)
    return {
        "p50": r["latency"]["p50_ms"],
        "p99": r["latency"]["p99_ms"],
        "memory_mb": r["memory"]["rss_increase_mib"],
    }


def output_drop(bundle: Path, inputs: dict[str, Any], reference: dict[str, Any]) -> float:
    """Relative L2 of the bundle's engine outputs against ``reference`` (the fp32 source
    model's outputs) on ``inputs``, over every output."""
    import numpy as np

    from robopt_compile.bench.harness import enter_runner, open_bundle

    b = open_bundle(bundle, verify=False)
    with contextlib.ExitStack() as stack:
        got = enter_runner(stack, b, 1).infer(inputs)
    num = sum(float(np.sum((np.asarray(got[k], np.float64) - reference[k]) ** 2))
              for k in reference)  # fmt: skip
    den = sum(float(np.sum(np.asarray(reference[k], np.float64) ** 2)) for k in reference)
    return (num / den) ** 0.5 if den else num**0.5


def applied_label(c: Candidate, manifest: dict[str, Any], report: dict[str, Any]) -> str | None:
    """The plan the engine really is, when it differs from ``c``'s label (a rolled-back
    quantization, a pruning step undone or not applied); None when it is ``c``."""
    precision = manifest.get("precision", c.precision)
    steps = (report.get("compression") or {}).get("steps", [])
    kept = {s.get("pass") for s in steps if not s.get("rolled_back")}
    prune = c.prune if "prune-channels" in kept else None
    arch = c.arch if "arch-search" in kept else None
    applied = Candidate(c.backend, precision, prune, arch)
    if applied.label == c.label:
        return None
    why = []
    if precision != c.precision:
        why.append(f"{c.precision} rolled back to {precision}")
    asks = ((c.prune, prune, "prune-channels", "pruning"),
            (c.arch, arch, "arch-search", "architecture search"))  # fmt: skip
    for asked, done, name, what in asks:
        if asked and not done:
            undone = [s for s in steps if s.get("pass") == name]
            reason = undone[0].get("rollback_reason") if undone else "not applied"
            why.append(f"{what} {'rolled back' if undone else 'not applied'}"
                       + (f": {reason}" if reason and undone else ""))  # fmt: skip
    return f"{applied.label} ({'; '.join(why)})"
