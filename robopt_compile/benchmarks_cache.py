"""Bench section: a cold build against an unchanged rebuild that the build cache serves.

Both runs are whole ``robopt-compile`` processes (as in CI), on a fresh store of their own::

    robopt-compile zoo:visuomotor-cnn --target host --threads 1 --precision int8 \\
        --calibration calib.npz

One run each; the rebuild still imports robopt, resolves the target, analyzes the model,
verifies the engine and writes the bundle and its reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "visuomotor-cnn"
# The bundle files a rebuild must reproduce byte for byte (report.json and analysis.json hold
# timings and measured host figures).
COMPARED = ("model.onnx", "reference/inputs.npz", "reference/outputs.npz")


def _compile(out: Path, calib: Path, store: Path) -> tuple[float, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "robopt_compile.cli",
        f"zoo:{MODEL}",
        "--target",
        "host",
        "--threads",
        "1",
        "--precision",
        "int8",
        "--calibration",
        str(calib),
        "-o",
        str(out),
        "--force",
    ]
    env = {**os.environ, "ROBOPT_STORE": str(store)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-400:]}")
    return wall, json.loads((out / "report.json").read_text())


def bench_rebuild(work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold build, then the unchanged rebuild; wall times, their ratio and the cache states."""
    from robopt_compile.benchmarks_quant import synthetic_calibration

    work = Path(work) / "cache"
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    calib = synthetic_calibration(MODEL, work / "calib.npz")
    log(f"[bench] cache: cold build of zoo:{MODEL} int8 (host, 1 thread, fresh store)")
    cold_s, cold = _compile(work / "cold", calib, store)
    log(f"[bench] cache: unchanged rebuild (cold took {cold_s:.1f} s)")
    warm_s, warm = _compile(work / "rebuild", calib, store)
    cold_files = json.loads((work / "cold" / "manifest.json").read_text())["files"]
    warm_files = json.loads((work / "rebuild" / "manifest.json").read_text())["files"]
    engine = [k for k in cold_files if k.startswith("engine/")]
    same = all(cold_files.get(k) == warm_files.get(k) for k in (*COMPARED, *engine))
    return {
        "model": MODEL,
        "command": f"robopt-compile zoo:{MODEL} --target host --threads 1 --precision int8 "
        "--calibration calib.npz",
        "cold_s": round(cold_s, 2),
        "rebuild_s": round(warm_s, 2),
        "ratio": round(warm_s / cold_s, 3),
        "cold_stages": cold.get("stage_seconds", {}),
        "rebuild_stages": warm.get("stage_seconds", {}),
        "cache": {k: v.get("cache") for k, v in warm.get("cache", {}).items()},
        "identical_files": same,
    }


def report_lines(d: dict[str, Any]) -> list[str]:
    """Markdown lines for the bench report."""
    stages = ", ".join(f"{k} {v}" for k, v in d["cache"].items())
    return [
        "### Build cache: cold build vs unchanged rebuild",
        "",
        f"`{d['command']}`, each a whole process, one run each, on a fresh store.",
        "",
        "| build | wall time (s) |",
        "|---|---:|",
        f"| cold | {d['cold_s']:.2f} |",
        f"| unchanged rebuild | {d['rebuild_s']:.2f} |",
        "",
        f"Rebuild / cold: **{d['ratio']:.1%}** (stages: {stages}); model, engine and reference "
        f"files identical to the cold bundle: {'yes' if d['identical_files'] else 'NO'}.",
    ]
