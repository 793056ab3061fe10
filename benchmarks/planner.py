"""``make bench`` section: the planner's choice against hand-written recipes, same run.

For each model and criteria set, the planner (``robopt-compile ... --max-latency-ms ...``)
proposes, builds and measures plans within its build limit and keeps the best that meets the
bounds. The hand-written recipes of the earlier issues (ONNX Runtime fp32, OpenVINO f32,
OpenVINO bf16, ONNX Runtime int8, OpenVINO int8) are built with the same calibration and
measured in the same run with the same harness settings; the best recipe that meets the same
bounds is the baseline the planner must match on the objective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

RECIPES = (
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
)
MODELS = ("state-mlp", "hopper-mlp", "reacher-cnn", "visuomotor-cnn")


def _criteria_sets() -> list[tuple[str, Any]]:
    from robopt_compile.plan.planner import OptimizationCriteria

    return [
        ("fastest within 1% output error", OptimizationCriteria(max_accuracy_drop=0.01)),
        (
            "smallest within 5% output error",
            OptimizationCriteria(max_accuracy_drop=0.05, objective="size"),
        ),
    ]


def _calibration(name: str, work: Path) -> str:
    from benchmarks.quant import synthetic_calibration
    from robopt_compile.zoo import ZOO

    if ZOO[name].task:
        return "task"
    return str(synthetic_calibration(name, work / f"{name}-calib.npz"))


def _recipes(name: str, base: Any, crit: Any, work: Path, runs: int, log: Callable) -> list:
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.errors import RoboptError
    from robopt_compile.plan.measure import (
        applied_label,
        bundle_size_mb,
        measure_bundle,
        output_drop,
    )
    from robopt_compile.plan.planner import Candidate, Measured

    # The planner's one measure, on the same reference inputs: comparable with its rows.
    src = load_source(f"zoo:{name}", seed=base.seed, check_parity=False)
    out = []
    for backend, precision in RECIPES:
        d = work / f"{name}-{backend}-{precision}"
        opts = replace(base, backend=backend, precision=precision)
        try:
            from robopt_compile.compile.pipeline import compile_model

            res = compile_model(f"zoo:{name}", d, opts, force=True)
            lat = measure_bundle(d, base.threads, runs)
        except RoboptError as exc:
            log(f"[bench] planner: recipe {backend} {precision} failed: {exc}")
            continue
        drop = output_drop(d, src.reference_inputs, src.reference_outputs)
        latency = {"p50": lat["p50"], "p99": lat["p99"]}
        size = bundle_size_mb(d)
        c = Candidate(backend, precision)
        m = Measured(c, latency, size, lat["memory_mb"], drop, str(d))
        m.rolled_back = bool((res.report.get("quantization") or {}).get("rolled_back"))
        m.applied = applied_label(c, res.manifest, res.report)
        out.append(m)
    return out


def bench_planner(work: Path, log: Callable[[str], None], runs: int = 200) -> dict[str, Any]:
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.plan.planner import choose, objective_of
    from robopt_compile.plan.search import plan_and_search

    rows = []
    for name in MODELS:
        calib = _calibration(name, work)
        sets = _criteria_sets()
        if name == "visuomotor-cnn":  # each int8 build calibrates a ResNet-18: one set only
            sets = sets[:1]
        for label, crit in sets:
            log(f"[bench] planner: {name}, {label} ...")
            base = CompileOptions(
                threads=1, quant=QuantOptions(calibration=calib, max_drop=crit.max_accuracy_drop)
            )
            t0 = time.perf_counter()
            r = plan_and_search(
                f"zoo:{name}", work / f"{name}-auto", base, crit, force=True, bench_runs=runs,
                log=lambda m: log(f"[bench]   {m}"),
            )  # fmt: skip
            planner_s = time.perf_counter() - t0
            recipes = _recipes(name, base, crit, work, runs, log)
            best_recipe, _ = choose(recipes, crit)
            row = {
                "model": name,
                "criteria": label,
                "objective": crit.objective,
                "planner": None if r.best is None else r.best.to_json(),
                "planner_objective": None if r.best is None else objective_of(r.best, crit),
                "planner_builds": len(r.measured) + len(r.failed),
                "planner_s": planner_s,
                "recipes": [m.to_json() for m in recipes],
                "best_recipe": None if best_recipe is None else best_recipe.to_json(),
                "recipe_objective": None
                if best_recipe is None
                else objective_of(best_recipe, crit),
            }
            po, ro = row["planner_objective"], row["recipe_objective"]
            # Same-run noise: within 10% counts as a match on latency.
            tol = 1.10 if crit.objective == "latency" else 1.0001
            row["as_good"] = ro is None or (po is not None and po <= ro * tol)
            rows.append(row)
    return {"runs": runs, "rows": rows}


def report_lines(p: dict[str, Any]) -> list[str]:
    lines = [
        "## Planner vs hand-written recipes",
        "",
        "The planner (`robopt-compile SOURCE --max-accuracy-drop D [--objective size]`) chooses "
        "backend and precision itself; the hand-written recipes (ONNX Runtime fp32/int8, "
        "OpenVINO f32/bf16/int8) are built and measured in the same run with the same "
        f"calibration and harness settings ({p['runs']} timed runs, 1 thread). Accuracy drop: "
        "held-out relative L2 of the outputs against fp32 (the accuracy guard's figure; the "
        "trained policies calibrate on task recordings). A match on latency allows 10% "
        "same-run noise.",
        "",
        "| model | criteria | planner's choice | its objective | builds | planner s | best recipe |"
        " its objective | as good |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        unit = "ms" if r["objective"] == "latency" else "MB"
        pl = r["planner"]["candidate"] if r["planner"] else "none met the bounds"
        br = r["best_recipe"]["candidate"] if r["best_recipe"] else "none met the bounds"
        po = "" if r["planner_objective"] is None else f"{r['planner_objective']:.4g} {unit}"
        ro = "" if r["recipe_objective"] is None else f"{r['recipe_objective']:.4g} {unit}"
        lines.append(
            f"| {r['model']} | {r['criteria']} | {pl} | {po} | {r['planner_builds']} | "
            f"{r['planner_s']:.0f} | {br} | {ro} | {'yes' if r['as_good'] else 'NO'} |"
        )
    lines.append("")
    return lines
