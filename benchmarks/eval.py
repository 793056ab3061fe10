"""``make bench`` section: closed-loop task success of fp32, int8 and int4 engines.

For each trained zoo policy, robopt builds the engines a user would build and runs every one on
the same seeded episodes as the original fp32 model (exported ONNX in ONNX Runtime):

- ``fp32``: the plain ONNX Runtime engine (should match the original exactly or nearly).
- ``int8``: robopt's int8, as a user runs it: calibrated on observations recorded from the
  policy's own task (``--calibration task``, seeds from 1,000,000) and guarded by the task
  itself (``--eval task --max-accuracy-drop 0.02``, guard seeds from 500,000), so the
  evaluation seeds (0..N-1) were never used to pick or calibrate anything.
- ``int4-weight``: robopt's weight-only int4 (ONNX Runtime ``MatMulNBits``) where the graph
  has MatMuls it applies to, under the same task guard as int8.
- ``crude int4``: a deliberately crude baseline (every weight tensor rounded to 4 bits with
  one scale per tensor, no calibration, run in fp32): the drop the evaluation must detect.

The latency is the engine call's p50 inside the closed loop (one thread), measured on the
same episodes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

EVAL_MODELS = ("hopper-mlp", "double-pendulum-mlp", "pendulum-swingup-mlp", "reacher-cnn")


def crude_int4(src: Path, dst: Path) -> int:
    """Round every float weight (rank >= 2) to 4 bits, one symmetric scale per tensor."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(src)
    n = 0
    for init in m.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        scale = float(np.abs(w).max()) / 7.0 or 1.0
        q = np.clip(np.round(w / scale), -8, 7) * scale
        init.CopyFrom(numpy_helper.from_array(q.astype(np.float32), init.name))
        n += 1
    onnx.save(m, dst)
    return n


def _build(
    source: str, out: Path, log: Callable[[str], None], **kw: Any
) -> tuple[Path | None, dict[str, Any]]:
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.errors import RoboptError

    t0 = time.perf_counter()
    try:
        res = compile_model(source, out, CompileOptions(threads=1, **kw), force=True)
    except RoboptError as exc:
        log(f"[bench]   {out.name}: not built: {exc}")
        return None, {"error": str(exc)}
    q = res.report.get("quantization") or {}
    return out, {
        "build_s": time.perf_counter() - t0,
        "precision": res.manifest["precision"],
        "rolled_back": bool(q.get("rolled_back")),
        "fp32_layers": len((q.get("mixed_precision") or {}).get("fp32_nodes") or []),
        "metric": q.get("metric"),
    }


def bench_model(name: str, work: Path, episodes: int, log: Callable[[str], None]) -> dict:
    from robopt_compile import evaluate as ev
    from robopt_compile.compile.frontend import load_fp32
    from robopt_compile.compile.options import QuantOptions
    from robopt_compile.tasks import get_task
    from robopt_compile.zoo import ZOO

    task_name = ZOO[name].task
    assert task_name is not None
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    log(f"[bench] eval {name}: building engines ...")
    builds: dict[str, tuple[Path | None, dict[str, Any]]] = {}
    builds["fp32"] = _build(f"zoo:{name}", d / "fp32", log)
    builds["int8"] = _build(
        f"zoo:{name}",
        d / "int8",
        log,
        precision="int8",
        quant=QuantOptions(calibration="task:episodes=4", max_drop=0.02),
        eval=ev.EvalSpec(episodes=20),
    )
    builds["int4-weight"] = _build(
        f"zoo:{name}",
        d / "int4",
        log,
        precision="int4-weight",
        quant=QuantOptions(calibration="task:episodes=4", max_drop=0.02),
        eval=ev.EvalSpec(episodes=20),
    )
    crude_n = 0
    if builds["fp32"][0] is not None:
        crude_n = crude_int4(d / "fp32" / "model.onnx", d / "crude.onnx")
        builds["crude int4"] = _build(str(d / "crude.onnx"), d / "crude", log)
    log(f"[bench] eval {name}: {episodes} episodes x {1 + len(builds)} engines on {task_name}")
    with contextlib.ExitStack() as stack:
        task = stack.enter_context(get_task(task_name))
        ref = stack.enter_context(ev.source_policy(f"zoo:{name}", 1, load_fp32))
        cands = []
        for label, (path, info) in builds.items():
            if path is None:
                continue
            pol = stack.enter_context(ev.bundle_policy(path, 1))
            cands.append((label, pol, {**ev.bundle_meta(path), **info}))
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if done[0] % 25 == 0:
                log(f"[bench]   {done[0]}/{episodes * (1 + len(cands))} episodes")

        res = ev.closed_loop(
            task, ref, cands, episodes=episodes, seed=0, reference_label="original fp32",
            progress=tick,
        )  # fmt: skip
    res["model"] = name
    res["not_built"] = {k: v[1]["error"] for k, v in builds.items() if v[0] is None}
    res["crude_int4_tensors"] = crude_n
    return res


def bench_eval(work: Path, log: Callable[[str], None], episodes: int = 50) -> dict[str, Any]:
    from robopt_compile.zoo import ZOO

    rows = []
    for name in EVAL_MODELS:
        if name not in ZOO:
            continue
        try:
            rows.append(bench_model(name, work, episodes, log))
        except Exception as exc:  # a missing simulator or weights: say so in the report
            log(f"[bench] eval {name} failed: {exc}")
            rows.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
    return {"episodes": episodes, "rows": rows}


def _ci(x: dict[str, Any], fmt: str) -> str:
    lo, hi = x["ci95"]
    return f"{x['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def report_lines(e: dict[str, Any]) -> list[str]:
    lines = [
        "## Closed-loop task success (trained policies)",
        "",
        f"Each engine drives the task for the same {e['episodes']} seeded episodes (seeds "
        "0..N-1) as the original fp32 model (its exported ONNX in ONNX Runtime). Return: mean "
        "[95% t-interval]. Success: rate [95% Wilson interval]. Paired: per-seed difference "
        "against the original [95% t-interval] and its p-value (paired t-test on return; "
        "exact McNemar on success for Reacher); the verdict is `worse`/`better` only when the "
        "interval excludes 0. Latency: the engine call's p50 inside the loop, 1 thread. "
        "int8 = robopt's int8 (`--calibration task --eval task --max-accuracy-drop 0.02`: "
        "calibrated and guarded on seeds of their own); crude int4 = every weight tensor "
        "rounded to 4 bits with one scale per tensor (a baseline the evaluation must catch).",
        "",
    ]
    for r in e["rows"]:
        if "error" in r:
            lines += [f"### {r['model']}", "", f"Not measured: {r['error']}", ""]
            continue
        t = r["task"]
        lines += [
            f"### {r['model']} on {t['name']}",
            "",
            f"Success: {t['success_rule']}. Metric for the paired test: {r['metric']}.",
            "",
            "| engine | precision | return | success | paired difference | p | verdict | "
            "latency p50 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        pairs = {p["candidate"]: p for p in r["paired"]}
        for eng in r["engines"]:
            s = eng["success"]
            p = pairs.get(eng["label"])
            if p is None:
                diff, pv, verdict = "", "", "reference"
            else:
                d = p["return_diff"] if p["metric"] == "return" else p["success_diff"]
                fmt = ".1f" if p["metric"] == "return" else "+.2f"
                diff, pv, verdict = _ci(d, fmt), f"{p['p_value']:.3g}", p["verdict"]
            lat = (eng.get("latency_ms") or {}).get("p50")
            prec = eng.get("precision", "")
            if eng.get("rolled_back"):
                prec += " (rolled back)"
            lines.append(
                f"| {eng['label']} | {prec} | {_ci(eng['return'], '.1f')} | "
                f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}] | {diff} | {pv} | "
                f"{verdict} | {'' if lat is None else f'{lat:.4f}'} |"
            )
        for k, v in r.get("not_built", {}).items():
            lines.append(f"| {k} | not built: {v} | | | | | | |")
        lines.append("")
    return lines
