"""The TVM part of ``make bench``: ONNX Runtime fp32 vs TVM untuned vs TVM tuned, 1 thread.

For each model: robopt's ONNX Runtime engine, a TVM build without tuning, a TVM build tuned with
MetaSchedule for ``trials`` trials (from an empty tuning database in the bench's own folder, so
the tuning time is that of a first build), and a second tuned build of the same model that
reuses the database (its new trials and seconds show the reuse). Latencies are medians of
interleaved rounds through each runner's ``bind``; an engine slower than ``SLOW_MS`` per run
(untuned TVM on a CNN takes seconds) is timed on its own for ``SLOW_RUNS`` runs instead, so
that it does not stretch the bench by minutes. The issue's goal is tuned TVM within
``GOAL_RATIO`` of ONNX Runtime.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("state-mlp", "visuomotor-cnn")
GOAL_RATIO = 1.5
SLOW_MS = 100.0
SLOW_RUNS = 5


def _export(name: str, workdir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    from robopt_compile import ir
    from robopt_compile.compile.frontend import load_source

    src = load_source(
        f"zoo:{name}", dynamic_batch=False, opset=None, seed=0, check_parity=False,
        reference_inputs=None,
    )  # fmt: skip
    path = workdir / f"tvm-{name}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(src.model, path)
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in src.model.graph.inputs:
        shape = [int(d) for d in vi.shape]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return path, feeds


def _time(fns: dict[str, Callable[[], Any]], rounds: int, per_round: int) -> dict[str, Any]:
    from benchmarks.run import interleaved_median_ms

    probe = {}
    for k, fn in fns.items():
        t = time.perf_counter()
        fn()
        probe[k] = (time.perf_counter() - t) * 1e3
    slow = {k for k, ms in probe.items() if ms > SLOW_MS}
    out: dict[str, Any] = interleaved_median_ms(
        {k: f for k, f in fns.items() if k not in slow}, rounds, per_round
    )
    for k in slow:
        runs = []
        for _ in range(SLOW_RUNS):
            t = time.perf_counter()
            fns[k]()
            runs.append((time.perf_counter() - t) * 1e3)
        out[k] = statistics.median(runs)
    out["_separately"] = sorted(slow)
    return out


def bench_tvm(
    workdir: Path, rounds: int, per_round: int, log: Callable[[str], None], trials: int
) -> dict[str, Any]:
    from robopt_compile.hwprofiles import load_profile
    from robopt_compile.targets import BuildOptions
    from robopt_compile.targets.onnxruntime import OnnxRuntimeBackend
    from robopt_compile.targets.tvm import TvmBackend

    host = load_profile("host")
    tvm, ort = TvmBackend(), OnnxRuntimeBackend()
    cache = workdir / "tvm-cache"
    old_cache = os.environ.get("ROBOPT_CACHE")
    os.environ["ROBOPT_CACHE"] = str(cache)  # start from an empty tuning database
    rows = []
    try:
        for name in MODELS:
            log(f"[bench] tvm: {name}: export, ONNX Runtime and untuned TVM builds")
            path, feeds = _export(name, workdir)
            d = path.parent
            builds: dict[str, Any] = {}
            seconds: dict[str, float] = {}
            for key, backend, opts in (
                ("ORT fp32", ort, BuildOptions(threads=1)),
                ("TVM untuned", tvm, BuildOptions(threads=1)),
                ("TVM tuned", tvm, BuildOptions(threads=1, tune_trials=trials)),
                ("TVM tuned again", tvm, BuildOptions(threads=1, tune_trials=trials)),
            ):
                if key.startswith("TVM tuned"):
                    log(f"[bench] tvm: {name}: {key} ({trials} trials) ...")
                t = time.perf_counter()
                builds[key] = backend.build(path, host, opts, d / key.replace(" ", "-"))
                seconds[key] = time.perf_counter() - t
            runners = {
                k: (ort if k.startswith("ORT") else tvm).runner(builds[k], threads=1)
                for k in ("ORT fp32", "TVM untuned", "TVM tuned")
            }
            for r in runners.values():
                r.__enter__()
            try:
                outs = {k: r.infer(feeds) for k, r in runners.items()}
                ref = outs["ORT fp32"]
                max_abs = {
                    k: max(float(np.max(np.abs(o[n] - ref[n]))) for n in ref)
                    for k, o in outs.items()
                    if k != "ORT fp32"
                }
                log(f"[bench] tvm: {name}: timing ...")
                ms = _time({k: r.bind(feeds) for k, r in runners.items()}, rounds, per_round)
            finally:
                for r in runners.values():
                    r.__exit__(None, None, None)
            rows.append({
                "model": name,
                "ms": {k: v for k, v in ms.items() if not k.startswith("_")},
                "timed_separately": ms["_separately"],
                "max_abs_vs_ort": max_abs,
                "build_s": seconds,
                "tuning": builds["TVM tuned"].config["tuning"],
                "tuning_again": builds["TVM tuned again"].config["tuning"],
                "target": builds["TVM tuned"].config["target"],
            })  # fmt: skip
    finally:
        if old_cache is None:
            os.environ.pop("ROBOPT_CACHE", None)
        else:
            os.environ["ROBOPT_CACHE"] = old_cache
    return {"trials": trials, "rounds": rounds, "per_round": per_round, "rows": rows}


def report_lines(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    if not rows:
        return []
    lines = [
        "### TVM 0.27: untuned vs MetaSchedule-tuned vs ONNX Runtime (host CPU, 1 thread)",
        "",
        f"Target `{rows[0]['target']}`. Tuned = {result['trials']} MetaSchedule trials per "
        'model, split evenly over its kernels, from an empty tuning database; "again" is a '
        "second build of the same model reusing that database. Medians of interleaved rounds "
        f"({result['rounds']} x {result['per_round']}); engines slower than {SLOW_MS:.0f} ms "
        f"were timed alone ({SLOW_RUNS} runs). Goal: tuned TVM within {GOAL_RATIO}x of ORT.",
        "",
        "| model | ORT fp32 ms | TVM untuned ms | TVM tuned ms | tuned / ORT | goal | "
        "tuning s (new trials) | again: s (new trials, records reused) | max abs vs ORT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, t, t2 = r["ms"], r["tuning"], r["tuning_again"]
        ratio = ms["TVM tuned"] / ms["ORT fp32"]
        goal = "met" if ratio <= GOAL_RATIO else "not met"
        lines.append(
            f"| {r['model']} | {ms['ORT fp32']:.3f} | {ms['TVM untuned']:.1f} | "
            f"{ms['TVM tuned']:.3f} | {ratio:.2f}x | {goal} | {t['seconds']:.0f} "
            f"({t['new_trials']}) | {t2['seconds']:.1f} ({t2['new_trials']}, "
            f"{t2['records_reused']}) | {max(r['max_abs_vs_ort'].values()):.1e} |"
        )
    lines.append("")
    return lines
