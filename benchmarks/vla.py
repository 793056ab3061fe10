"""Bench section ``vla``: openvla-mini and the diffusion policy, torch eager against robopt's
multi-graph bundles.

One process, one thread everywhere (``torch.set_num_threads(1)``, ``--threads 1`` for the
runtimes). Eager: ``OpenVlaStyle.predict_action`` (vision, prefill and six decode steps with the
transformers cache). Bundles: ``robopt-compile zoo:openvla-mini -b B --precision P`` for
ONNX Runtime and OpenVINO at fp32, int8-weight and int4-weight (OpenVINO also with
``--activations bf16`` and at bf16), timed by ``robopt-bench``'s
multi-graph harness on the same observation. Token agreement and action error are measured on
the bundle's 8 held-out observations against the fp32 torch model. The 7B rows are ESTIMATES
(robopt_compile/compile/multigraph/estimates.py), not measurements.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MODEL = "openvla-mini"
# (backend, precision, --activations, --decode-backend): OpenVINO also with bf16 arithmetic
# (AMX here), and with the decode steps on ONNX Runtime's MatMulNBits.
BUILDS = [
    *((b, p, None, None) for b in ("onnxruntime", "openvino")
      for p in ("fp32", "int8-weight", "int4-weight")),
    ("openvino", "bf16", None, None),
    ("openvino", "int8-weight", "bf16", None),
    ("openvino", "int4-weight", "bf16", None),
    ("openvino", "int8-weight", "bf16", "onnxruntime"),
    ("openvino", "int4-weight", "bf16", "onnxruntime"),
]  # fmt: skip


def _compile_or_row(source: str, out: Path, opts: Any, rows: list[dict[str, Any]]) -> Any:
    """``compile_model``'s result, or None after appending a row saying why the build failed."""
    from robopt_compile.compile.pipeline import compile_model

    try:
        return compile_model(source, out, opts, force=True)
    except Exception as exc:  # a build that fails is a row saying why
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append({"backend": opts.backend, "precision": opts.precision, "error": error})
        return None


class _OvDefaultRunner:
    """An OpenVINO compiled model behind the ``infer(feeds) -> {name: array}`` interface the
    drivers use (outputs copied: OpenVINO reuses its buffers)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.names = [o.get_any_name() for o in compiled.outputs]

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        res = self.request.infer(feeds)
        return {n: np.array(res[self.compiled.output(n)]) for n in self.names}


VENDOR = {
    "openvino-defaults": "the fp32 ONNX graphs -> ov.Core().compile_model(graph, 'CPU', "
    "{INFERENCE_NUM_THREADS: 1}), nothing else (OpenVINO then computes in bf16 on this CPU)",
    "nncf-int4-defaults": "as openvino-defaults, after nncf.compress_weights(ov_model, "
    "mode=INT4_SYM) of the language model at NNCF's defaults (group 128, INT8 backup)",
}


def vendor_drivers(fp32: Any, llm_graph: str | None) -> dict[str, tuple[Any, Any]]:
    """What a user gets from the vendor's defaults with robopt's own fp32 graphs and driver:
    OpenVINO with no properties but one thread, and (with ``llm_graph``) NNCF's default INT4
    weight compression of that graph. key -> (driver, the reference observations' results)."""
    import openvino as ov

    from robopt_compile.bench.driver import make_driver
    from robopt_compile.bench.multigraph import driver_fidelity, load_arrays

    core = ov.Core()
    m = fp32.manifest
    obs = load_arrays(fp32.out / m["reference"]["inputs"])
    want = load_arrays(fp32.out / m["reference"]["outputs"])
    out = {}
    for key in VENDOR:
        if key.startswith("nncf") and llm_graph is None:
            continue
        runners = {}
        try:
            for g in m["graphs"]:
                model = core.read_model(str(fp32.out / g["model_files"][0]))
                if key.startswith("nncf") and g["name"] == llm_graph:
                    import nncf

                    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM)
                compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})
                runners[g["name"]] = _OvDefaultRunner(compiled)
        except Exception as exc:  # the vendor's defaults fail on this graph: a row says so
            out[key] = (None, None, {"error": " ".join(str(exc).split())[:160]})
            continue
        drv = make_driver(m["driver"]["kind"], runners, m["driver"]["config"])
        out[key] = (drv, {k: v[0] for k, v in obs.items()}, driver_fidelity(drv, obs, want))
    return out


def _vendor_rows(
    vendor: dict[str, tuple[Any, Any, Any]], timed: dict[str, Any], eager_ms: float,
    figures: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
) -> list[dict[str, Any]]:  # fmt: skip
    """A row per vendor-default build: its timing and ``figures(fidelity, timing)``, or why
    the vendor's defaults could not build it."""
    rows = []
    for key, (_, _, fid) in vendor.items():
        row: dict[str, Any] = {"backend": "openvino", "precision": key, "vendor": VENDOR[key]}
        if "error" in fid:
            rows.append({**row, "error": fid["error"]})
            continue
        p50 = timed[key]["p50_ms"]
        rows.append({**row, "activations": "bf16 (default)", "p50_ms": p50,
                     "speedup_vs_eager": eager_ms / p50, "weight_bytes": None,
                     **figures(fid, timed[key])})  # fmt: skip
    return rows


def _time_bundles(
    built: dict[str, Any], eager: Callable[[], Any], runs: int,
    vendor: dict[str, tuple[Any, Any, Any]] | None = None,
) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """Eager and every bundle's driver step on the bundle's first held-out observation, in
    interleaved rounds (1 thread): the machine's noise (shared, busy) falls on all alike."""
    import contextlib

    from benchmarks.run import interleaved_median_ms
    from robopt_compile.bench.multigraph import load_arrays, open_driver

    graph_ms: dict[str, dict[str, list[float]]] = {}

    def collect(key: str, step: Any) -> None:  # the driver's per-graph times of each step
        for g, ms in (getattr(step, "graph_ms", None) or {}).items():
            graph_ms.setdefault(key, {}).setdefault(g, []).append(ms)

    with contextlib.ExitStack() as stack:
        steps: dict[str, Callable[[], Any]] = {"eager": eager}
        for key, res in built.items():
            drv = open_driver(res.out, res.manifest, 1, stack)
            obs = load_arrays(res.out / res.manifest["reference"]["inputs"])
            steps[key] = partial(drv.step, {k: v[0] for k, v in obs.items()})
        for key, (drv, first, _) in (vendor or {}).items():
            if drv is not None:
                steps[key] = partial(drv.step, first)
        p50 = interleaved_median_ms(steps, runs, 1, warmup=2, on_result=collect)
    t = {k: {"p50_ms": v, "graph_ms_p50": {g: statistics.median(x)
                                            for g, x in graph_ms.get(k, {}).items()}}
         for k, v in p50.items()}  # fmt: skip
    return t.pop("eager")["p50_ms"], t


def bench_vla(work: Path, log: Callable[[str], None], runs: int = 15) -> dict[str, Any]:
    """Eager vs every build, timed interleaved; the 7B estimates per Jetson profile."""
    import torch

    from robopt_compile.compile.multigraph.estimates import jetson_table
    from robopt_compile.compile.multigraph.vla import HELDOUT_SEED
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.zoo.vla import OPENVLA_7B, describe, make_vla

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    built: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for backend, precision, activations, decode in BUILDS:
        key = f"{backend}-{precision}-{activations or 'default'}" + (
            f"-decode-{decode}" if decode else "")  # fmt: skip
        log(f"[bench] vla: compile {key}")
        t = time.perf_counter()
        opts = CompileOptions(
            target="host",
            backend=backend,
            precision=precision,
            threads=1,
            quant=QuantOptions(max_drop=1.0),
            activations=activations,
            decode_backend=decode,
        )  # measure, never refuse
        res = _compile_or_row(f"zoo:{MODEL}", Path(work) / "vla" / key, opts, rows)
        if res is not None:
            compile_s[key] = time.perf_counter() - t
            built[key] = res
    model = make_vla(MODEL)
    obs = model.example_inputs(HELDOUT_SEED)  # the bundles time this same observation
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    fp32 = built.get("openvino-fp32-default")
    vendor = vendor_drivers(fp32, "llm") if fp32 is not None else {}
    log(f"[bench] vla: timing eager, {len(built)} bundles and {len(vendor)} vendor-default "
        f"builds interleaved, {runs} rounds")  # fmt: skip
    eager_ms, timed = _time_bundles(built, partial(model.predict_action, **obs), runs, vendor)
    del model
    rows += _vendor_rows(vendor, timed, eager_ms, lambda fid, t: {
        "actions_per_s": 1e3 / t["p50_ms"], "graph_ms_p50": t["graph_ms_p50"],
        "token_agreement": fid["token_agreement"], "action_l2_mean": fid["action_l2"]["mean"],
        "gripper_flips": fid["gripper_flips"],
    })  # fmt: skip
    for key, res in built.items():
        weights = sum(g["weight_bytes"] for g in res.manifest["graphs"])
        fid = res.report["fidelity"]
        p50 = timed[key]["p50_ms"]
        rows.append({
            "backend": res.manifest["backend"], "precision": res.manifest["precision"],
            "decode_backend": next((g["backend"] for g in res.manifest["graphs"]
                                    if g["name"] == "llm-decode"), None),
            "compile_s": compile_s[key], "activations": res.manifest["build"]["activations"],
            "p50_ms": p50, "actions_per_s": 1e3 / p50, "speedup_vs_eager": eager_ms / p50,
            "graph_ms_p50": timed[key]["graph_ms_p50"], "weight_bytes": weights,
            "weights_vs_fp32": weights / fp32_bytes,
            "token_agreement": fid["token_agreement"], "action_l2_mean": fid["action_l2"]["mean"],
            "gripper_flips": fid["gripper_flips"],
        })  # fmt: skip
        log(f"[bench] vla: {key}: {p50:.1f} ms/action ({eager_ms / p50:.2f}x eager), "
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
    """diffusion-policy: eager control step (10 DDIM steps) vs the bundles, interleaved."""
    import torch

    from robopt_compile.compile.multigraph.diffusion import HELDOUT_SEED
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.zoo.diffusion import DIFFUSION, describe, make_diffusion

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    built: dict[str, Any] = {}
    builds = [(b, p, None) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8")]
    for backend, precision, activations in [*builds, ("openvino", "bf16", None),
                                            ("openvino", "int8", "bf16")]:  # fmt: skip
        key = f"{backend}-{precision}-{activations or 'default'}"
        log(f"[bench] diffusion: compile {key}")
        opts = CompileOptions(target="host", backend=backend, precision=precision, threads=1,
                              activations=activations)  # fmt: skip
        res = _compile_or_row("zoo:diffusion-policy", Path(work) / "ddim" / key, opts, rows)
        if res is not None:
            built[key] = res
    model = make_diffusion()
    drv = model.eager_driver()
    obs = model.example_inputs(HELDOUT_SEED)
    fp32 = built.get("openvino-fp32-default")
    vendor = vendor_drivers(fp32, None) if fp32 is not None else {}
    eager_ms, timed = _time_bundles(built, lambda: drv.step(obs), runs * 2, vendor)
    rows += _vendor_rows(vendor, timed, eager_ms, lambda fid, t: {
        "relative_l2": fid["relative_l2"], "action_max_abs": fid["action_max_abs"],
    })  # fmt: skip
    for key, res in built.items():
        fid = res.report["fidelity"]
        p50 = timed[key]["p50_ms"]
        rows.append({
            "backend": res.manifest["backend"], "precision": res.manifest["precision"],
            "activations": res.manifest["build"]["activations"],
            "p50_ms": p50, "speedup_vs_eager": eager_ms / p50,
            "weight_bytes": sum(g["weight_bytes"] for g in res.manifest["graphs"]),
            "relative_l2": fid["relative_l2"], "action_max_abs": fid["action_max_abs"],
        })  # fmt: skip
    return {"model": describe(DIFFUSION), "eager_ms": eager_ms, "rows": rows, "runs": runs * 2}


def _failed_row(r: dict[str, Any], columns: int) -> str:
    """A table row for a build that failed: backend, precision, why; the rest empty."""
    return f"| {r['backend']} | {r['precision']} | | failed: {r['error']} |" + " |" * (columns - 4)


def _mib(n: int | None, digits: int) -> str:
    return "-" if n is None else f"{n / 2**20:.{digits}f}"


def vendor_note(rows: list[dict[str, Any]]) -> list[str]:
    """What the vendor-default rows are."""
    seen = {r["precision"]: r["vendor"] for r in rows if r.get("vendor")}
    return [f"- `{k}`: {v}." for k, v in seen.items()] + ([""] if seen else [])


def diffusion_lines(d: dict[str, Any]) -> list[str]:
    p = d["model"]["parameters"]
    lines = [
        "### Diffusion policy: one control step = 10 DDIM denoiser runs",
        "",
        f"CNN Diffusion Policy (1-D conv U-Net, {p['denoiser'] / 1e6:.1f}M parameters, random "
        f"weights), 16 x 7 action chunk per step; median of {d['runs']} interleaved rounds "
        "(eager and every bundle one step each), 1 thread. Action "
        "error at fixed initial noise on 8 held-out observations against the fp32 torch policy."
        + (f" Measured {d['measured']}, in a run of its own." if d.get("measured") else ""),
        "",
        f"torch eager fp32: **{d['eager_ms']:.1f} ms/step**.",
        "",
        "| backend | precision | activations | ms/step | vs eager | weights MiB | "
        "action relative L2 | max abs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        if "error" in r:
            lines.append(_failed_row(r, 8))
            continue
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['activations']} | {r['p50_ms']:.1f} | "
            f"{r['speedup_vs_eager']:.2f}x | {_mib(r['weight_bytes'], 1)} | "
            f"{r['relative_l2']:.3g} | {r['action_max_abs']:.3g} |"
        )
    return [*lines, "", *vendor_note(d["rows"])]


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
        f"action is the median of {d['runs']} rounds in which eager and every bundle run one "
        "step each in turn (interleaved: the shared machine's noise falls on all alike), "
        "1 thread, same process, same observation; "
        "token agreement and action error on 8 held-out observations against the fp32 torch "
        "model.",
        "",
        f"torch eager fp32: **{d['eager_ms']:.0f} ms/action** "
        f"({1e3 / d['eager_ms']:.2f} actions/s), weights {d['eager_fp32_bytes'] / 2**20:.0f} MiB.",
        "",
        "| backend | precision | activations | ms/action | actions/s | vs eager | "
        "vision / embed / llm (prefill + decode) ms | weights MiB (x fp32) | token agreement | "
        "action L2 | gripper flips |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        if "error" in r:
            lines.append(_failed_row(r, 11))
            continue
        g = r["graph_ms_p50"]
        ratio = "" if r["weight_bytes"] is None else f" ({r['weights_vs_fp32']:.2f}x)"
        dec = r.get("decode_backend")
        backend = r["backend"] + (f", decode on {dec}" if dec else "")
        llm = (f"{g.get('llm', 0):.0f} + {g['llm-decode']:.0f}" if "llm-decode" in g
               else f"{g.get('llm', 0):.0f}")  # fmt: skip
        lines.append(
            f"| {backend} | {r['precision']} | {r['activations']} | {r['p50_ms']:.0f} | "
            f"{r['actions_per_s']:.2f} | {r['speedup_vs_eager']:.2f}x | "
            f"{g.get('vision', 0):.0f} / {g.get('embed', 0):.1f} / {llm} | "
            f"{_mib(r['weight_bytes'], 0)}{ratio} | "
            f"{r['token_agreement']:.1%} | {r['action_l2_mean']:.3g} | {r['gripper_flips']} |"
        )
    lines += ["", *vendor_note(d["rows"])]
    best = [r for r in d["rows"] if r.get("precision") == "int4-weight" and "error" not in r]
    if best:
        b = max(best, key=lambda r: r["speedup_vs_eager"])
        goal = b["speedup_vs_eager"] >= 3 and b["token_agreement"] >= 0.95 and (
            b["weights_vs_fp32"] <= 0.3)  # fmt: skip
        how = b["backend"] + (f" with the decode on {b['decode_backend']}"
                              if b.get("decode_backend") else "")  # fmt: skip
        lines += [
            "",
            f"Goal (int4-weight: >= 3x actions/s over eager, >= 95% token agreement, weights "
            f"<= 0.3x): {how}, int4-weight ({b['activations']} activations) gives "
            f"{b['speedup_vs_eager']:.2f}x, "
            f"{b['token_agreement']:.1%}, {b['weights_vs_fp32']:.2f}x: "
            f"**{'met' if goal else 'NOT met'}**. With random weights the greedy action "
            "token is decided by small logit margins, so weight noise flips tokens far more "
            "often than on a trained checkpoint (none can be downloaded here): a random 0.1% "
            "perturbation of every language-model weight already flips 7% of them, 1% flips "
            "24% (docs/VLA.md). Speed: bf16 arithmetic (AMX) takes the prefill and the vision "
            "encoders down; the six decode steps (M = 1) are faster on ONNX Runtime's "
            "MatMulNBits (accuracy level 4) than on OpenVINO's compressed FullyConnected, so "
            "`--decode-backend onnxruntime` runs them there (the `llm-decode` graph: the "
            "language model's weights twice, hence the larger weight figure).",
        ]
    lines += [
        "",
        "### OpenVLA-7B on the Jetson boards: ESTIMATES (not measured)",
        "",
        "Roofline lower bounds from the board profiles "
        "(robopt_compile/compile/multigraph/estimates.py): "
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
