"""Bench section ``vla``: openvla-mini and the diffusion policy, torch eager against robopt's
multi-graph bundles.

One process, one thread everywhere (``torch.set_num_threads(1)``, ``--threads 1`` for the
runtimes). Eager: ``OpenVlaStyle.predict_action`` (vision, prefill and six decode steps with the
transformers cache). Bundles: ``robopt-compile zoo:openvla-mini -b B --precision P`` for
ONNX Runtime and OpenVINO at fp32, int8-weight and int4-weight, timed by ``robopt-bench``'s
multi-graph harness on the same observation. Token agreement and action error are measured on
the bundle's 8 held-out observations against the fp32 torch model. The 7B rows are ESTIMATES
(robopt_compile/vla_estimates.py), not measurements.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MODEL = "openvla-mini"
BUILDS = [(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8-weight",
                                                                 "int4-weight")]  # fmt: skip


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """Median wall time of ``fn`` in ms over ``runs`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _compile_or_row(source: str, out: Path, opts: Any, rows: list[dict[str, Any]]) -> Any:
    """``compile_model``'s result, or None after appending a row saying why the build failed."""
    from robopt_compile.pipeline import compile_model

    try:
        return compile_model(source, out, opts, force=True)
    except Exception as exc:  # a build that fails is a row saying why
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append({"backend": opts.backend, "precision": opts.precision, "error": error})
        return None


def bench_vla(work: Path, log: Callable[[str], None], runs: int = 10) -> dict[str, Any]:
    """Eager vs every build; the 7B estimates per Jetson profile."""
    import torch

    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.pipeline import CompileOptions
    from robopt_compile.quantize import QuantOptions
    from robopt_compile.vla_compile import HELDOUT_SEED
    from robopt_compile.vla_estimates import jetson_table
    from robopt_compile.zoo.vla import OPENVLA_7B, describe, make_vla

    torch.set_num_threads(1)
    model = make_vla(MODEL)
    obs = model.example_inputs(HELDOUT_SEED)  # the bundles time this same observation
    log(f"[bench] vla: torch eager {MODEL}, {runs} actions")
    eager_ms = median_ms(partial(model.predict_action, **obs), runs)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    del model
    rows = []
    for backend, precision in BUILDS:
        out = Path(work) / "vla" / f"{backend}-{precision}"
        log(f"[bench] vla: compile {backend} {precision}")
        t = time.perf_counter()
        opts = CompileOptions(
            target="host",
            backend=backend,
            precision=precision,
            threads=1,
            quant=QuantOptions(max_drop=1.0),
        )  # measure, never refuse
        res = _compile_or_row(f"zoo:{MODEL}", out, opts, rows)
        if res is None:
            continue
        compile_s = time.perf_counter() - t
        r = run_benchmark(out, runs=runs, warmup=2, threads=1, verify=False)
        weights = sum(g["weight_bytes"] for g in res.manifest["graphs"])
        fid = res.report["fidelity"]
        rows.append({
            "backend": backend, "precision": precision, "compile_s": compile_s,
            "p50_ms": r["latency"]["p50_ms"], "actions_per_s": r["actions_per_s"],
            "speedup_vs_eager": eager_ms / r["latency"]["p50_ms"],
            "graph_ms_p50": r["graph_ms_p50"], "weight_bytes": weights,
            "weights_vs_fp32": weights / fp32_bytes,
            "token_agreement": fid["token_agreement"], "action_l2_mean": fid["action_l2"]["mean"],
            "gripper_flips": fid["gripper_flips"],
        })  # fmt: skip
        log(f"[bench] vla: {backend} {precision}: {r['latency']['p50_ms']:.1f} ms/action, "
            f"tokens {fid['token_agreement']:.0%}")  # fmt: skip
    diffusion = bench_diffusion(work, log, runs)
    return {
        "diffusion": diffusion,
        "model": describe(make_config(MODEL)),
        "runs": runs,
        "eager_ms": eager_ms,
        "eager_fp32_bytes": fp32_bytes,
        "rows": rows,
        "estimates_7b": jetson_table(OPENVLA_7B),
        "config_7b": describe(OPENVLA_7B),
    }


def bench_diffusion(work: Path, log: Callable[[str], None], runs: int) -> dict[str, Any]:
    """diffusion-policy: eager control step (10 DDIM steps) vs fp32 and int8 bundles."""
    import torch

    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.diffusion_compile import HELDOUT_SEED
    from robopt_compile.pipeline import CompileOptions
    from robopt_compile.zoo.diffusion import DIFFUSION, describe, make_diffusion

    torch.set_num_threads(1)
    model = make_diffusion()
    drv = model.eager_driver()
    obs = model.example_inputs(HELDOUT_SEED)
    eager_ms = median_ms(lambda: drv.step(obs), runs)
    rows = []
    for backend in ("onnxruntime", "openvino"):
        for precision in ("fp32", "int8"):
            out = Path(work) / "ddim" / f"{backend}-{precision}"
            log(f"[bench] diffusion: compile {backend} {precision}")
            opts = CompileOptions(target="host", backend=backend, precision=precision, threads=1)
            res = _compile_or_row("zoo:diffusion-policy", out, opts, rows)
            if res is None:
                continue
            r = run_benchmark(out, runs=runs, warmup=2, threads=1, verify=False)
            fid = res.report["fidelity"]
            rows.append({
                "backend": backend, "precision": res.manifest["precision"],
                "p50_ms": r["latency"]["p50_ms"], "speedup_vs_eager": eager_ms /
                r["latency"]["p50_ms"], "weight_bytes": sum(g["weight_bytes"] for g in
                                                            res.manifest["graphs"]),
                "relative_l2": fid["relative_l2"], "action_max_abs": fid["action_max_abs"],
            })  # fmt: skip
    return {"model": describe(DIFFUSION), "eager_ms": eager_ms, "rows": rows, "runs": runs}


def diffusion_lines(d: dict[str, Any]) -> list[str]:
    p = d["model"]["parameters"]
    lines = [
        "### Diffusion policy: one control step = 10 DDIM denoiser runs",
        "",
        f"CNN Diffusion Policy (1-D conv U-Net, {p['denoiser'] / 1e6:.1f}M parameters, random "
        f"weights), 16 x 7 action chunk per step; median of {d['runs']} steps, 1 thread. Action "
        "error at fixed initial noise on 8 held-out observations against the fp32 torch policy.",
        "",
        f"torch eager fp32: **{d['eager_ms']:.1f} ms/step**.",
        "",
        "| backend | precision | ms/step | vs eager | weights MiB | action relative L2 | max abs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['p50_ms']:.1f} | "
            f"{r['speedup_vs_eager']:.2f}x | {r['weight_bytes'] / 2**20:.1f} | "
            f"{r['relative_l2']:.3g} | {r['action_max_abs']:.3g} |"
        )
    return [*lines, ""]


def make_config(name: str) -> Any:
    from robopt_compile.zoo.vla import CONFIGS

    return CONFIGS[name]


def report_lines(d: dict[str, Any]) -> list[str]:
    """Markdown for docs/BENCHMARKS.md."""
    p = d["model"]["parameters"]
    lines = [
        "## Vision-language-action model: openvla-mini (issue 8)",
        "",
        f"OpenVLA-style model with random weights: DINOv2 + SigLIP ViT-S at 224 px (256 patches), "
        f"a 12-layer Llama (768 wide, 32k vocabulary); {p['total'] / 1e6:.0f}M parameters. One "
        "control step = one 7-dimensional action: vision, prefill, six decode steps. Time per "
        f"action is the median of {d['runs']} steps, 1 thread, same process, same observation; "
        "token agreement and action error on 8 held-out observations against the fp32 torch "
        "model.",
        "",
        f"torch eager fp32: **{d['eager_ms']:.0f} ms/action** "
        f"({1e3 / d['eager_ms']:.2f} actions/s), weights {d['eager_fp32_bytes'] / 2**20:.0f} MiB.",
        "",
        "| backend | precision | ms/action | actions/s | vs eager | vision / embed / llm ms | "
        "weights MiB (x fp32) | token agreement | action L2 | gripper flips |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | failed: {r['error']} |"
                         " | | | | | | |")  # fmt: skip
            continue
        g = r["graph_ms_p50"]
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['p50_ms']:.0f} | "
            f"{r['actions_per_s']:.2f} | {r['speedup_vs_eager']:.2f}x | "
            f"{g.get('vision', 0):.0f} / {g.get('embed', 0):.1f} / {g.get('llm', 0):.0f} | "
            f"{r['weight_bytes'] / 2**20:.0f} ({r['weights_vs_fp32']:.2f}x) | "
            f"{r['token_agreement']:.1%} | {r['action_l2_mean']:.3g} | {r['gripper_flips']} |"
        )
    best = [r for r in d["rows"] if r.get("precision") == "int4-weight" and "error" not in r]
    if best:
        b = max(best, key=lambda r: r["speedup_vs_eager"])
        goal = b["speedup_vs_eager"] >= 3 and b["token_agreement"] >= 0.95 and (
            b["weights_vs_fp32"] <= 0.3)  # fmt: skip
        lines += [
            "",
            f"Goal (int4-weight: >= 3x actions/s over eager, >= 95% token agreement, weights "
            f"<= 0.3x): {b['backend']} int4-weight gives {b['speedup_vs_eager']:.2f}x, "
            f"{b['token_agreement']:.1%}, {b['weights_vs_fp32']:.2f}x: "
            f"**{'met' if goal else 'NOT met'}**. With random weights the greedy action "
            "token is decided by small logit margins, so weight noise flips tokens far more "
            "often than on a trained checkpoint (none can be downloaded here).",
        ]
    lines += [
        "",
        "### OpenVLA-7B on the Jetson boards: ESTIMATES (not measured)",
        "",
        "Roofline lower bounds from the board profiles (robopt_compile/vla_estimates.py): "
        "decode reads every language-model weight once per token (bandwidth bound), prefill "
        "and vision at the dense peak for 16-bit compute; one action = vision + prefill + 6 "
        "decode steps. Weights: the language model at the row's precision (with group "
        "scales), vision in 16 bits. OpenVLA publishes about 16.8 GB (bf16) and 7.0 GB "
        "(4-bit) of GPU memory in use, activations and runtime included.",
        "",
        "| board | precision | weights GB (est.) | fits (80% of memory) | decode ms/token (min) "
        "| ms/action (min) | actions/s (max) |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for e in d["estimates_7b"]:
        lines.append(
            f"| {e['profile']} | {e['precision']} | {e['weights_gb']:.2f} | "
            f"{'yes' if e['fits_in_memory'] else 'no'} ({e['board_memory_gb']:.0f} GB) | "
            f"{e['decode_ms_min']:.1f} | {e['action_ms_min']:.0f} | "
            f"{e['actions_per_s_max']:.2f} |"
        )
    lines.append("")
    if d.get("diffusion"):
        lines += diffusion_lines(d["diffusion"])
    return lines
