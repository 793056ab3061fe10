"""Bench section: a cold build against an unchanged rebuild that the build cache serves.

Both runs are whole ``robopt-compile`` processes (as in CI), on a fresh store of their own::

    robopt-compile zoo:visuomotor-cnn --target host --threads 1 --precision int8 \\
        --calibration calib.npz

One run each: the cold build, the unchanged rebuild (restored whole from the cache: it
imports robopt, resolves the target, chains the cache keys, checks every restored file's
sha256 and rewrites report.json), and a rebuild with one build option changed (``--threads
2``: export and transform hit, the engine is built and checked again, the report redrawn).
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


def _compile(out: Path, calib: Path, store: Path, threads: int = 1) -> tuple[float, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "robopt_compile.cli",
        f"zoo:{MODEL}",
        "--target",
        "host",
        "--threads",
        str(threads),
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


SEARCH_MODEL = "pendulum-swingup-mlp"
SEARCH_ARGS = ("--target", "host", "--threads", "1", "-b", "onnxruntime", "--techniques",
               "quantize", "--max-latency-ms", "5", "--max-accuracy-drop", "0.05")  # fmt: skip


def _search(out: Path, store: Path) -> float:
    """One planner search as a whole process on ``store``; its wall time."""
    cmd = [sys.executable, "-m", "robopt_compile.cli", f"zoo:{SEARCH_MODEL}", *SEARCH_ARGS,
           "-o", str(out), "--force"]  # fmt: skip
    env = {**os.environ, "ROBOPT_STORE": str(store)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-400:]}")
    return wall


def bench_search_rerun(work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """A cold planner search, then the same search again on the same store."""
    work = Path(work) / "search-rerun"
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    log(f"[bench] cache: cold planner search of zoo:{SEARCH_MODEL} (fresh store)")
    cold_s = _search(work / "cold", store)
    log(f"[bench] cache: the unchanged search again (cold took {cold_s:.1f} s)")
    rerun_s = _search(work / "rerun", store)
    return {
        "command": f"robopt-compile zoo:{SEARCH_MODEL} {' '.join(SEARCH_ARGS)}",
        "cold_s": round(cold_s, 2),
        "rerun_s": round(rerun_s, 2),
        "ratio": round(rerun_s / cold_s, 3),
    }


def bench_rebuild(work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold build, then the unchanged rebuild; wall times, their ratio and the cache states."""
    from benchmarks.quant import synthetic_calibration

    work = Path(work) / "cache"
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    calib = synthetic_calibration(MODEL, work / "calib.npz")
    log(f"[bench] cache: cold build of zoo:{MODEL} int8 (host, 1 thread, fresh store)")
    cold_s, cold = _compile(work / "cold", calib, store)
    log(f"[bench] cache: unchanged rebuild (cold took {cold_s:.1f} s)")
    warm_s, warm = _compile(work / "rebuild", calib, store)
    log(f"[bench] cache: rebuild with --threads 2 (unchanged rebuild took {warm_s:.2f} s)")
    two_s, two = _compile(work / "threads2", calib, store, threads=2)
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
        "threads2_s": round(two_s, 2),
        "threads2_ratio": round(two_s / cold_s, 3),
        "threads2_cache": {k: v.get("cache") for k, v in two.get("cache", {}).items()},
        "search": bench_search_rerun(work, log),
    }


def report_lines(d: dict[str, Any]) -> list[str]:
    """Markdown lines for the bench report."""
    stages = ", ".join(f"{k} {v}" for k, v in d["cache"].items())
    out = [
        "### Build cache: cold build vs unchanged rebuild",
        "",
        f"`{d['command']}`, each a whole process, one run each, on a fresh store.",
        "",
        "| build | wall time (s) |",
        "|---|---:|",
        f"| cold | {d['cold_s']:.2f} |",
        f"| unchanged rebuild | {d['rebuild_s']:.2f} |",
        *(
            [f"| `--threads 2` (the build stage changed) | {d['threads2_s']:.2f} |"]
            if "threads2_s" in d
            else []
        ),
        "",
        f"Unchanged rebuild / cold: **{d['ratio']:.1%}** (goal: under 10%; cache: {stages}); "
        f"model, engine and reference files identical to the cold bundle: "
        f"{'yes' if d['identical_files'] else 'NO'}.",
    ]
    if "search" in d:
        sr = d["search"]
        out += ["", f"A planner search run again unchanged (`{sr['command']}`, whole processes, "
                f"one run each): cold {sr['cold_s']:.2f} s, again {sr['rerun_s']:.2f} s = "
                f"**{sr['ratio']:.1%}** (goal: under 10%). The export and the analysis come from "
                "the cache, every plan's bundle is restored from it; every plan's latency and "
                "accuracy are measured again."]  # fmt: skip
    if "threads2_s" in d:
        two = ", ".join(f"{k} {v}" for k, v in d["threads2_cache"].items())
        out += ["", f"One build option changed (`--threads 2`): {d['threads2_ratio']:.1%} of "
                f"cold (cache: {two}); only the build and what follows it ran again."]  # fmt: skip
    return out
