"""The quantization part of ``make bench``: model x precision x backend, against the vendor
recipes a user would otherwise run, measured in one run, 1 thread, on held-out inputs.

Data: the zoo has random weights and no dataset yet (trained policies come with the evaluation
issue), so calibration uses 64 synthetic samples from each model's input distribution (images
uniform in [0, 1], proprioception standard normal), split by robopt into calibration and
held-out parts. Every error figure is on the held-out part, against torch fp32.

Baselines (each tool's documented default recipe):
  nncf+OV default   nncf.quantize(OpenVINO model, calibration) then compile_model with no
                    options (bf16 for the non-quantized parts on AMX/AVX-512-BF16 CPUs)
  ORT QDQ all ops   onnxruntime.quantization.quantize_static(QDQ, per-channel) with no op
                    restriction: what ANCHORS.md says collapses transformers
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CASES: tuple[tuple[str, str, str], ...] = (
    ("visuomotor-cnn", "onnxruntime", "int8"),
    ("visuomotor-cnn", "openvino", "int8"),
    ("act-policy", "onnxruntime", "int8"),
    ("act-policy", "openvino", "int8"),
    ("act-policy", "onnxruntime", "int4-weight"),
    ("act-policy", "openvino", "int4-weight"),
    ("state-mlp", "onnxruntime", "int8-dynamic"),
)
SAMPLES = 64
# Weight-only int4 cannot reach the default 1% bound on this random-weight transformer (its
# held-out error is ~10%); the bench asks for a looser bound so the row shows int4's cost.
MAX_DROP = {"int4-weight": 0.2}


def synthetic_samples(examples: dict[str, Any], n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` samples per input, stacked: images uniform in [0, 1], the rest standard normal."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, v in examples.items():
        shape = (n, *tuple(v.shape))
        if k == "image":
            arrays[k] = rng.random(shape, dtype=np.float32)
        else:
            arrays[k] = rng.standard_normal(shape, dtype=np.float32)
    return arrays


def synthetic_calibration(name: str, path: Path, n: int = SAMPLES, seed: int = 7) -> Path:
    from robopt_compile.zoo import load_zoo

    _, examples = load_zoo(name)
    np.savez(path, **synthetic_samples(examples, n, seed))
    return path


def torch_outputs(module: Any, inputs: list[dict[str, np.ndarray]], names: list[str]) -> list:
    """``module``'s outputs on each sample, by output name (the fp32 reference)."""
    import torch

    outs = []
    with torch.no_grad():
        for s in inputs:
            o = module(**{k: torch.from_numpy(v) for k, v in s.items()})
            o = o if isinstance(o, tuple | list) else [o]
            outs.append({n: t.numpy() for n, t in zip(names, o, strict=True)})
    return outs


def holdout_samples(calib: Path, report: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    data = np.load(calib)
    idx = [int(re.search(r"\[(\d+)\]$", i).group(1)) for i in report["data"]["holdout_ids"]]
    return [{k: data[k][i] for k in data.files} for i in idx]


def _weight_bytes(onnx_path: Path, skip_conv: bool = False) -> int:
    """Initializer bytes; with ``skip_conv`` only those no Conv consumes (the transformer)."""
    from robopt_compile import ir as rir

    model = rir.load(onnx_path)
    if not skip_conv:
        return rir.weight_bytes(model)
    total = 0
    for v in model.graph.initializers.values():
        if v.const_value is None:
            continue
        if not any(u.op_type == "Conv" for u, _ in v.uses()):
            total += v.const_value.nbytes
    return total


def bench_quant(workdir: Path, rounds: int, per_round: int, log: Callable[[str], None]) -> dict:
    import onnxruntime as ort
    import openvino as ov
    import torch

    from benchmarks.run import interleaved_median_ms
    from robopt_compile import ir as rir
    from robopt_compile.compile.accuracy import accuracy_figures
    from robopt_compile.compile.frontend import export_torch
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.targets import Artifact, get_backend
    from robopt_compile.zoo import load_zoo

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    models = sorted({c[0] for c in CASES})
    for name in models:
        log(f"[bench] quantization: {name}")
        calib = synthetic_calibration(name, workdir / f"{name}-calib.npz")
        module, examples = load_zoo(name)
        plain = workdir / f"{name}-plain.onnx"
        out_names = list(getattr(module, "output_names", ["output"]))
        rir.save(export_torch(module, examples, out_names)[0], plain)
        fp32_bytes = _weight_bytes(plain)
        fp32_nonconv = _weight_bytes(plain, skip_conv=True)
        built = {}
        for _, backend, precision in (c for c in CASES if c[0] == name):
            out = workdir / f"{name}-{backend}-{precision}"
            t = time.perf_counter()
            res = compile_model(
                f"zoo:{name}",
                out,
                CompileOptions(
                    backend=backend,
                    precision=precision,
                    threads=1,
                    quant=QuantOptions(calibration=str(calib), max_drop=MAX_DROP.get(precision)),
                ),
                force=True,
            )
            built[(backend, precision)] = (out, res, time.perf_counter() - t)
        first_report = next(iter(built.values()))[1].report["quantization"]
        holdout = holdout_samples(calib, first_report)
        ref = torch_outputs(module, holdout, out_names)
        feeds = holdout[0]

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        fns: dict[str, Callable[[], Any]] = {}
        outs: dict[str, list[dict[str, np.ndarray]]] = {}
        t_in = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def eager(t_in: dict = t_in, module: Any = module) -> Any:
            with torch.no_grad():
                return module(**t_in)

        fns["torch eager fp32"] = eager
        runners = []
        for (backend, precision), (out, res, secs) in built.items():
            m = res.manifest
            art = Artifact.from_json(m["engine"], out / m["engine"]["dir"])
            r = get_backend(backend).runner(art, threads=1).__enter__()
            runners.append(r)
            key = f"robopt {backend} {precision}" + (
                " (rolled back to fp32)" if m["precision"] != precision else ""
            )
            fns[key] = r.bind(feeds)
            outs[key] = [r.infer(s) for s in holdout]
            q = res.report["quantization"]
            rows.append(
                {
                    "model": name,
                    "backend": backend,
                    "requested": precision,
                    "precision": m["precision"],
                    "key": key,
                    "weight_bytes": _weight_bytes(out / "model.onnx"),
                    "fp32_weight_bytes": fp32_bytes,
                    "nonconv_weight_bytes": _weight_bytes(out / "model.onnx", skip_conv=True),
                    "fp32_nonconv_weight_bytes": fp32_nonconv,
                    "compile_s": secs,
                    "rolled_back": q["rolled_back"],
                    "fp32_layers": len((q.get("mixed_precision") or {}).get("fp32_nodes", [])),
                    "quantized_layers": len(q.get("layers", [])),
                    "pass": q["pass"],
                }
            )
        if name == "visuomotor-cnn":
            import nncf

            data = list(_holdout_free(calib, first_report))
            ov_model = ov.Core().read_model(str(plain))
            qov = nncf.quantize(ov_model, nncf.Dataset(data))
            compiled = ov.Core().compile_model(qov, "CPU", {"INFERENCE_NUM_THREADS": 1})
            req = compiled.create_infer_request()
            for i, inp in enumerate(compiled.inputs):
                req.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(feeds[inp.get_any_name()])))
            fns["nncf+OV default"] = req.infer
            names = [o.get_any_name() for o in compiled.outputs]
            outs["nncf+OV default"] = [
                {n: np.array(v) for n, v in zip(names, compiled(s).values(), strict=True)}
                for s in holdout
            ]
            baselines.append({"model": name, "key": "nncf+OV default"})
        if name == "act-policy":
            from onnxruntime.quantization import (
                CalibrationDataReader,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            data = list(_holdout_free(calib, first_report))

            class Reader(CalibrationDataReader):
                def __init__(self, data: list = data) -> None:
                    self.it = iter(data)

                def get_next(self) -> Any:
                    return next(self.it, None)

            qpath = workdir / f"{name}-ort-all-ops.onnx"
            quantize_static(str(plain), str(qpath), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8)  # fmt: skip
            sess = ort.InferenceSession(str(qpath), so, providers=["CPUExecutionProvider"])
            fns["ORT QDQ all ops"] = lambda s=sess, f=feeds: s.run(None, f)
            outs["ORT QDQ all ops"] = [
                dict(zip(out_names, sess.run(None, s), strict=True)) for s in holdout
            ]
            baselines.append({"model": name, "key": "ORT QDQ all ops"})
        lat = interleaved_median_ms(fns, rounds, per_round)
        for r in runners:
            r.__exit__(None, None, None)
        eager_ms = lat["torch eager fp32"]
        for row in [*rows, *baselines]:
            if row["model"] != name:
                continue
            row["p50_ms"] = lat[row["key"]]
            row["speedup_vs_eager"] = eager_ms / lat[row["key"]]
            fig = accuracy_figures(ref, outs[row["key"]])
            row["cosine"] = fig["cosine"]
            row["centred_cosine"] = fig["centred_cosine"]
            row["relative_l2"] = fig["relative_l2"]
            row["eager_ms"] = eager_ms
    return {"rows": rows, "baselines": baselines, "samples": SAMPLES}


def _holdout_free(calib: Path, report: dict[str, Any]):
    """The calibration part of robopt's split, so baselines calibrate on the same samples."""
    data = np.load(calib)
    idx = [int(re.search(r"\[(\d+)\]$", i).group(1)) for i in report["data"]["calibration_ids"]]
    for i in idx:
        yield {k: data[k][i] for k in data.files}


def _requirements(q: dict[str, Any]) -> list[str]:
    """Issue 3's numbers to show, each marked met or not from this run's rows."""

    def row(model: str, key: str) -> dict[str, Any] | None:
        return next((r for r in [*q["rows"], *q["baselines"]]
                     if r["model"] == model and r["key"] == key), None)  # fmt: skip

    def mark(ok: bool) -> str:
        return "met" if ok else "**NOT met**"

    out = ["| issue 3 asks | measured | |", "|---|---|---|"]
    vendor = row("visuomotor-cnn", "nncf+OV default")
    for key in ("robopt openvino int8", "robopt onnxruntime int8"):
        r = row("visuomotor-cnn", key)
        if r and vendor:
            ok = r["speedup_vs_eager"] >= 3 and r["p50_ms"] <= vendor["p50_ms"] * 1.05
            ok = ok and r["cosine"] >= 0.999
            out.append(
                f"| CNN int8 >= 3x eager, as fast as nncf+OV default, cosine >= 0.999 | {key}: "
                f"{r['speedup_vs_eager']:.1f}x, {r['p50_ms']:.2f} vs {vendor['p50_ms']:.2f} ms "
                f"(within 5% counts as equal), cosine {r['cosine']:.5f} | {mark(ok)} |"
            )
    allops = row("act-policy", "ORT QDQ all ops")
    for key in ("robopt onnxruntime int8", "robopt openvino int8"):
        r = row("act-policy", key)
        if r and allops:
            out.append(
                f"| ACT int8 mixed precision cosine >= 0.999 where ORT QDQ of all ops collapses "
                f"| {key}: {r['cosine']:.5f}; ORT QDQ all ops: {allops['cosine']:.5f} | "
                f"{mark(r['cosine'] >= 0.999)} |"
            )
    for key in ("robopt onnxruntime int4-weight", "robopt openvino int4-weight"):
        r = row("act-policy", key)
        if r:
            ratio = r["weight_bytes"] / r["fp32_weight_bytes"]
            tr = r["nonconv_weight_bytes"] / r["fp32_nonconv_weight_bytes"]
            out.append(
                f"| ACT weight-only int4: weights <= 0.3x fp32, error reported | {key}: "
                f"transformer (all weights not feeding a Conv) {tr:.2f}x; whole model "
                f"{ratio:.2f}x because the ResNet backbone stays fp32; held-out rel. L2 "
                f"{r['relative_l2']:.4f}, cosine {r['cosine']:.5f} | "
                f"{mark(tr <= 0.3)} for the transformer |"
            )
    return out


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def report_lines(q: dict[str, Any]) -> list[str]:
    lines = [
        "## Quantization (issue 3): model x precision x backend",
        "",
        f"Calibration: {q['samples']} synthetic samples per model from its input distribution "
        "(no dataset for the random-weight zoo yet), split by robopt into calibration and "
        "held-out parts; baselines calibrate on the same calibration part. Errors are on the "
        "held-out part vs torch fp32 (all outputs): relative L2 and cosine. Weights: bytes of "
        "the ONNX initializers vs the fp32 export. With random weights the policies' outputs "
        "are dominated by a constant part (fp32 outputs for different inputs already agree at "
        "cosine ~0.9997), so plain cosine flatters every engine; *centred cosine* subtracts the "
        "fp32 mean output over the held-out set and measures the input-dependent part.",
        "",
        "| model | engine | p50 ms | vs eager | weights vs fp32 | held-out rel. L2 | cosine | "
        "centred cosine | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in q["rows"]:
        notes = []
        if r.get("rolled_back"):
            notes.append("rolled back to fp32 (bound broken)")
        if r.get("fp32_layers"):
            notes.append(f"mixed precision: {r['fp32_layers']}/{r['quantized_layers']} layers fp32")
        notes.append(f"pass {r['pass']}, compile {r['compile_s']:.0f} s")
        lines.append(
            f"| {r['model']} | {r['key']} | {r['p50_ms']:.3f} | {r['speedup_vs_eager']:.2f}x | "
            f"{r['weight_bytes'] / r['fp32_weight_bytes']:.2f}x | {r['relative_l2']:.4f} | "
            f"{r['cosine']:.5f} | {_fmt(r.get('centred_cosine'))} | {'; '.join(notes)} |"
        )
    for b in q["baselines"]:
        lines.append(
            f"| {b['model']} | {b['key']} (baseline) | {b['p50_ms']:.3f} | "
            f"{b['speedup_vs_eager']:.2f}x | | {b['relative_l2']:.4f} | {b['cosine']:.5f} | "
            f"{_fmt(b.get('centred_cosine'))} | vendor recipe |"
        )
    lines += ["", *_requirements(q)]
    lines += ["", "torch eager fp32 p50 per model: " + ", ".join(
        sorted({f"{r['model']} {r['eager_ms']:.2f} ms" for r in q["rows"]})) + "."]  # fmt: skip
    return [*lines, ""]
