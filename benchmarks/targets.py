"""The targets part of ``make bench``: OpenVINO cold vs cached start, TVM tuned vs untuned vs
ONNX Runtime (``benchmarks_tvm``), and the roofline ESTIMATE of every zoo model on every board
profile that robopt cannot measure here (Jetson, Raspberry Pi, ...).

Start-up is measured in fresh processes (a model compiled in this process could be served from
memory): each run imports OpenVINO, compiles the bundle's IR for the CPU with the runner's
properties and runs one inference; "cold" starts from an empty ``CACHE_DIR``, "cached" from the
folder the cold run filled.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_START = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from robopt_compile.targets import Artifact, get_backend
m = json.load(open(sys.argv[1] + "/manifest.json"))
art = Artifact.from_json(m["engine"], sys.argv[1] + "/" + m["engine"]["dir"])
feeds = dict(np.load(sys.argv[1] + "/reference/inputs.npz"))
t1 = time.perf_counter()
with get_backend("openvino").runner(art, threads=1) as r:
    t2 = time.perf_counter()
    r.infer(feeds)
    t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "first_infer_s": t3 - t2}))
"""


def _start(bundle: Path, cache: Path) -> dict[str, float]:
    env = dict(os.environ, ROBOPT_CACHE=str(cache))
    out = subprocess.run(
        [sys.executable, "-c", _START, str(bundle)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_openvino_cache(workdir: Path, log: Callable[[str], None], repeats: int = 5) -> dict:
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    rows = []
    for model, precision in (("visuomotor-cnn", "fp32"), ("visuomotor-cnn", "bf16"),
                             ("act-policy", "fp32")):  # fmt: skip
        log(f"[bench] OpenVINO start-up: {model} {precision}")
        bundle = workdir / f"ovcache-{model}-{precision}"
        compile_model(
            f"zoo:{model}",
            bundle,
            CompileOptions(backend="openvino", precision=precision, threads=1),
            force=True,
        )
        cold, warm = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(dir=workdir) as cache:
                cold.append(_start(bundle, Path(cache)))
                warm.append(_start(bundle, Path(cache)))
        med = {
            f"{kind}_{k}": statistics.median(r[k] for r in runs)
            for kind, runs in (("cold", cold), ("cached", warm))
            for k in ("compile_s", "first_infer_s")
        }
        rows.append({"model": model, "precision": precision, "repeats": repeats, **med})
    return {"rows": rows}


def roofline_estimates(log: Callable[[str], None]) -> dict[str, Any]:
    """The roofline latency ESTIMATE of each zoo model per board profile and precision."""
    from robopt_compile.compile import analysis
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.hwprofiles import load_profile, profile_names

    profiles = [load_profile(n) for n in profile_names() if n != "host"]
    rows = []
    for name in ("state-mlp", "visuomotor-cnn", "act-policy"):
        log(f"[bench] roofline estimates: {name}")
        model = load_source(
            f"zoo:{name}", dynamic_batch=False, opset=None, seed=0, check_parity=False,
            reference_inputs=None,
        ).model  # fmt: skip
        for p in profiles:
            for prec in ("fp32", "fp16", "bf16", "int8"):
                if prec not in p.precisions:
                    continue
                facts = analysis.analyze(model, p, precision=prec, threads=p.cpu_cores)
                s = facts["summary"]
                rows.append({
                    "model": name, "profile": p.name, "precision": prec,
                    "backend": p.backends[0], "estimate_ms": s.get("estimated_latency_ms"),
                    "bound": facts.get("roofline", {}).get("bound"),
                })  # fmt: skip
    return {"rows": rows}


def report_lines(t: dict[str, Any]) -> list[str]:
    lines = ["## Targets", ""]
    ov = t.get("openvino_cache")
    if ov:
        lines += [
            "### OpenVINO: first start vs cached start (CPU, 1 thread)",
            "",
            "Fresh process per start; medians of "
            f"{ov['rows'][0]['repeats']} cold/cached pairs. Compile = `compile_model` in the "
            "runner (reads the IR, or the cached blob, for the device).",
            "",
            "| model | precision | compile cold s | compile cached s | speed-up | "
            "first inference cold ms | cached ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in ov["rows"]:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['cold_compile_s']:.3f} | "
                f"{r['cached_compile_s']:.3f} | {r['cold_compile_s'] / r['cached_compile_s']:.1f}x"
                f" | {1e3 * r['cold_first_infer_s']:.1f} | {1e3 * r['cached_first_infer_s']:.1f} |"
            )
        lines.append("")
    tvm = t.get("tvm")
    if tvm:
        from benchmarks.tvm import report_lines as tvm_lines

        lines += tvm_lines(tvm)
    roof = t.get("roofline")
    if roof:
        profiles = sorted({r["profile"] for r in roof["rows"]})
        lines += [
            "### Roofline latency ESTIMATES per board profile (not measured)",
            "",
            "Computed from each model's MACs and bytes and the profile's cited peak compute and "
            "memory bandwidth (`robopt-compile analyze --target BOARD`); an estimate of the "
            "best case, not a measurement: real engines reach a fraction of peak.",
            "",
            "| model | profile | first backend | " + " | ".join(
                ("fp32", "fp16", "bf16", "int8")) + " (ms, estimate) |",
            "|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for model in ("state-mlp", "visuomotor-cnn", "act-policy"):
            for prof in profiles:
                rs = {r["precision"]: r for r in roof["rows"]
                      if r["model"] == model and r["profile"] == prof}  # fmt: skip
                if not rs:
                    continue
                backend = next(iter(rs.values()))["backend"]
                cells = [
                    f"{rs[p]['estimate_ms']:.3f}" if p in rs and rs[p]["estimate_ms"] else "-"
                    for p in ("fp32", "fp16", "bf16", "int8")
                ]
                lines.append(f"| {model} | {prof} | {backend} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
