"""The pruning / compression part of ``make bench``: one run, 1 thread, held-out inputs.

Everything is built by ``compile_model`` exactly as ``robopt-compile`` would, and timed side by
side in interleaved rounds with the unpruned engines of the same backend. Fidelity is measured
on the held-out part of the synthetic calibration set (never pruned, distilled or calibrated
on) against torch fp32 of the original model.

The zoo has random weights (trained policies come with the evaluation issue), so what pruning
costs here is an upper bound: a random network has no redundant channels to find, which is why
untrained 50% pruning loses most of the input-dependent signal (centred cosine) and why the
distillation row matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quant import holdout_samples

CNN = "visuomotor-cnn"
ACT = "act-policy"
PRUNE = "channels:0.5"
LOW_RANK = ("energy=0.95", "rank=0.125", "rank=0.25", "rank=0.5")


def bench_prune(
    workdir: Path, rounds: int, per_round: int, log: Callable[[str], None], distill_steps: int
) -> dict[str, Any]:
    import torch

    from benchmarks.quant import synthetic_calibration

    torch.set_num_threads(1)
    out: dict[str, Any] = {"distill_steps": distill_steps}
    log("[bench] pruning: visuomotor-cnn")
    calib = synthetic_calibration(CNN, workdir / f"{CNN}-prune-calib.npz")
    out["cnn"] = _bench_cnn(workdir, calib, rounds, per_round, log, distill_steps)
    log("[bench] low-rank: act-policy")
    calib_act = synthetic_calibration(ACT, workdir / f"{ACT}-prune-calib.npz")
    out["act"] = _bench_act(workdir, calib_act, rounds, per_round, log)
    log("[bench] torch-pruning vs robopt")
    from benchmarks.tp import bench_torch_pruning

    out["torch_pruning"] = bench_torch_pruning(workdir, rounds, per_round, log)
    return out


def _compile(source: str, out: Path, **kw: Any) -> tuple[Path, Any, float]:
    from robopt_compile.compile.options import CompileOptions, CompressOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model

    quant = QuantOptions(calibration=kw.pop("calibration"))
    comp = CompressOptions(
        prune=tuple(kw.pop("prune", ())),
        low_rank=kw.pop("low_rank", None),
        distill=kw.pop("distill", None),
    )
    t = time.perf_counter()
    res = compile_model(
        source, out, CompileOptions(threads=1, quant=quant, compress=comp, **kw), force=True
    )
    return out, res, time.perf_counter() - t


def _reference(name: str, holdout: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from benchmarks.quant import torch_outputs
    from robopt_compile.zoo import load_zoo

    module, _ = load_zoo(name)
    return torch_outputs(module, holdout, list(getattr(module, "output_names", ["output"])))


def _time_bundles(
    bundles: dict[str, tuple[Path, Any, float]],
    holdout: list[dict[str, np.ndarray]],
    rounds: int,
    per_round: int,
) -> tuple[dict[str, float], dict[str, list[dict[str, np.ndarray]]]]:
    from benchmarks.run import interleaved_median_ms
    from robopt_compile.targets import Artifact, get_backend

    fns, outs, runners = {}, {}, []
    try:
        for key, (path, res, _) in bundles.items():
            m = res.manifest
            art = Artifact.from_json(m["engine"], path / m["engine"]["dir"])
            r = get_backend(m["backend"]).runner(art, threads=1).__enter__()
            runners.append(r)
            fns[key] = r.bind(holdout[0])
            outs[key] = [r.infer(s) for s in holdout]
        lat = interleaved_median_ms(fns, rounds, per_round)
    finally:
        for r in runners:
            r.__exit__(None, None, None)
    return lat, outs


def _macs_params(res: Any) -> tuple[float, float]:
    s = res.facts.get("summary", {})
    return float(s.get("macs", 0)), float(s.get("params", 0))


def _bench_cnn(workdir, calib, rounds, per_round, log, distill_steps) -> dict[str, Any]:
    from robopt_compile.compile.accuracy import accuracy_figures

    src = f"zoo:{CNN}"
    c = str(calib)
    b: dict[str, tuple[Path, Any, float]] = {}
    log("  fp32 and bf16 engines, unpruned and pruned")
    b["ORT fp32"] = _compile(src, workdir / "p-ort", calibration=c, backend="onnxruntime")
    b["ORT fp32 pruned 50% (L1)"] = _compile(
        src, workdir / "p-ort-pl1", calibration=c, backend="onnxruntime",
        prune=[PRUNE + ",criterion=l1"],
    )  # fmt: skip
    b["ORT fp32 pruned 50%"] = _compile(
        src, workdir / "p-ort-p", calibration=c, backend="onnxruntime", prune=[PRUNE]
    )
    log(f"  distillation ({distill_steps} steps)")
    b["ORT fp32 pruned 50% + distill"] = _compile(
        src, workdir / "p-ort-pd", calibration=c, backend="onnxruntime", prune=[PRUNE],
        distill=f"steps={distill_steps}",
    )  # fmt: skip
    pruned_onnx = str(b["ORT fp32 pruned 50%"][0] / "model.onnx")
    distilled_onnx = str(b["ORT fp32 pruned 50% + distill"][0] / "model.onnx")
    for prec, label in (("fp32", "OV f32"), ("bf16", "OV bf16")):
        b[label] = _compile(src, workdir / f"p-ov-{prec}", calibration=c, backend="openvino",
                            precision=prec)  # fmt: skip
        b[f"{label} pruned 50%"] = _compile(
            pruned_onnx, workdir / f"p-ov-{prec}-p", calibration=c, backend="openvino",
            precision=prec,
        )  # fmt: skip
    log("  int8, unpruned and pruned + distilled")
    for backend, label in (("onnxruntime", "ORT"), ("openvino", "OV")):
        b[f"{label} int8"] = _compile(src, workdir / f"p-{backend}-i8", calibration=c,
                                      backend=backend, precision="int8")  # fmt: skip
        b[f"{label} int8 pruned 50% + distill"] = _compile(
            distilled_onnx, workdir / f"p-{backend}-i8-pd", calibration=c, backend=backend,
            precision="int8",
        )  # fmt: skip
    log("  2:4 sparsity and unstructured 80%")
    b["ORT fp32 2:4"] = _compile(src, workdir / "p-ort-24", calibration=c, backend="onnxruntime",
                                 prune=["2:4"])  # fmt: skip
    unstructured = _compile(src, workdir / "p-ort-u80", calibration=c, backend="onnxruntime",
                            prune=["unstructured:0.8"])  # fmt: skip
    first = b["ORT fp32 pruned 50%"][1].report["compression"]
    assert first["steps"][0]["report"]["criterion"] == "activation"  # the default with data
    holdout = holdout_samples(calib, first)
    ref = _reference(CNN, holdout)
    log("  timing")
    lat, outs = _time_bundles(b, holdout, rounds, per_round)
    rows = []
    for key, (_path, res, secs) in b.items():
        macs, params = _macs_params(res)
        fig = accuracy_figures(ref, outs[key])
        base = "ORT fp32" if key.startswith("ORT") else ("OV bf16" if "bf16" in key else "OV f32")
        if "int8" in key:
            base = key.split(" int8")[0] + " int8"
        rows.append({
            "key": key, "p50_ms": lat[key], "speedup_vs_unpruned": lat[base] / lat[key],
            "baseline": base, "macs": macs, "params": params, "compile_s": secs,
            "precision": res.manifest["precision"], "relative_l2": fig["relative_l2"],
            "cosine": fig["cosine"], "centred_cosine": fig["centred_cosine"],
        })  # fmt: skip
    comp = b["ORT fp32 pruned 50%"][1].report["compression"]["steps"][0]
    dist = b["ORT fp32 pruned 50% + distill"][1].report["compression"]["steps"][0]
    sparse = b["ORT fp32 2:4"][1].report["compression"]["steps"][0]["report"]
    urep = unstructured[1]
    engine_dir = unstructured[0] / "engine"
    dense_dir = b["ORT fp32"][0] / "engine"
    return {
        "rows": rows,
        "prune_totals": comp["report"]["totals"],
        "prune_groups": comp["report"]["groups"],
        "distillation": dist.get("distillation"),
        "before_distillation": dist.get("figures_before_distillation"),
        "after_distillation": dist.get("figures"),
        "sparse_2of4": {k: v for k, v in sparse.items() if k != "rows"}
        | {
            "eligible": sum(1 for r in sparse.get("rows", []) if r.get("eligible")),
            "verified": sum(1 for r in sparse.get("rows", []) if r.get("pattern_verified")),
            "layers": len(sparse.get("rows", [])),
        },
        "unstructured": {
            "engine_bytes_stored": _dir_bytes(engine_dir),
            "dense_engine_bytes": _dir_bytes(dense_dir),
            "compressed": urep.manifest["engine"].get("compressed"),
            "figures": urep.report["compression"]["steps"][0]["figures"],
        },
        "holdout_samples": len(holdout),
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bench_act(workdir, calib, rounds, per_round, log) -> dict[str, Any]:
    from robopt_compile.compile.accuracy import accuracy_figures
    from robopt_compile.errors import RoboptError
    from robopt_compile.passes.prune.lowrank import rank_table

    src = f"zoo:{ACT}"
    c = str(calib)
    b = {"ORT fp32": _compile(src, workdir / "lr-ort", calibration=c, backend="onnxruntime")}
    refused: dict[str, str] = {}
    for spec in LOW_RANK:
        log(f"  low-rank {spec}")
        try:
            b[f"low-rank {spec}"] = _compile(
                src, workdir / f"lr-{spec}", calibration=c, backend="onnxruntime", low_rank=spec
            )
        except RoboptError as exc:  # the random-weight model's spectrum is flat: shown as is
            refused[f"low-rank {spec}"] = str(exc)
    b["channels 50% (backbone + FFN)"] = _compile(
        src, workdir / "lr-ffn", calibration=c, backend="onnxruntime", prune=[PRUNE]
    )
    first = b["channels 50% (backbone + FFN)"][1].report["compression"]
    holdout = holdout_samples(calib, first)
    ref = _reference(ACT, holdout)
    lat, outs = _time_bundles(b, holdout, rounds, per_round)
    rows = []
    for key, (_, res, secs) in b.items():
        macs, params = _macs_params(res)
        fig = accuracy_figures(ref, outs[key])
        comp = (res.report.get("compression") or {}).get("steps", [{}])
        tot = (comp[0].get("report") or {}).get("totals", {}) if comp else {}
        rows.append({
            "key": key, "p50_ms": lat[key], "speedup": lat["ORT fp32"] / lat[key],
            "macs": macs, "params": params, "relative_l2": fig["relative_l2"],
            "centred_cosine": fig["centred_cosine"], "factorized": tot.get("factorized"),
            "compile_s": secs,
        })  # fmt: skip
    # The spectrum of one FFN weight: energy and error per rank (why energy targets fail here).
    from robopt_compile import ir as rir

    model = rir.load(b["ORT fp32"][0] / "model.onnx")
    ffn = max(
        (v for v in model.graph.initializers.values()
         if v.const_value is not None and len(v.const_value.shape) == 2),
        key=lambda v: v.const_value.size,
    )  # fmt: skip
    w = ffn.const_value.numpy()
    ranks = [r for r in (16, 32, 64, 128, 192) if r < min(w.shape)]
    return {
        "rows": rows,
        "refused": refused,
        "rank_table": {"weight": ffn.name, "shape": list(w.shape), "rows": rank_table(w, ranks)},
        "holdout_samples": len(holdout),
    }


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def report_lines(p: dict[str, Any]) -> list[str]:
    cnn, act = p["cnn"], p["act"]
    rows = {r["key"]: r for r in cnn["rows"]}
    t = cnn["prune_totals"]
    lines = [
        "## Pruning and compression",
        "",
        "Measured in one run, 1 thread, interleaved rounds; fidelity on "
        f"{cnn['holdout_samples']} held-out synthetic inputs against torch fp32 of the original "
        "model. The zoo has random weights: untrained pruning of a random network loses most of "
        "its input-dependent signal, which distillation then recovers in part.",
        "",
        f"### visuomotor-cnn, `--prune {PRUNE} --calibration` (first layer protected)",
        "",
        "With `--calibration` the channel importance is the activation criterion (channel RMS "
        "on calibration data times the consumer's weight norm); the `(L1)` row is the "
        "data-free weight-magnitude criterion at the same ratio.",
        "",
        f"MACs {t['macs_before'] / 1e9:.3f} G -> {t['macs_after'] / 1e9:.3f} G, "
        f"params of weighted layers {t['params_before'] / 1e6:.2f} M -> "
        f"{t['params_after'] / 1e6:.2f} M, {t['channels_removed']} channels removed in "
        f"{t['groups_pruned']} groups.",
        "",
        "| engine | p50 ms | speedup vs unpruned, same backend+precision | GMAC | rel L2 | "
        "centred cosine |",
        "|---|---|---|---|---|---|",
    ]
    for r in cnn["rows"]:
        lines.append(
            f"| {r['key']} ({r['precision']}) | {r['p50_ms']:.2f} | "
            f"{r['speedup_vs_unpruned']:.2f}x vs {r['baseline']} | {r['macs'] / 1e9:.3f} | "
            f"{_f(r['relative_l2'])} | {_f(r['centred_cosine'])} |"
        )
    d = cnn.get("distillation") or {}
    bd, ad = cnn.get("before_distillation") or {}, cnn.get("after_distillation") or {}
    sp = cnn["sparse_2of4"]
    un = cnn["unstructured"]
    checks = [
        ("ORT fp32 pruned 50% >= 1.6x", rows["ORT fp32 pruned 50%"]["speedup_vs_unpruned"] >= 1.6),
        ("OV f32 pruned 50% >= 1.6x", rows["OV f32 pruned 50%"]["speedup_vs_unpruned"] >= 1.6),
        ("OV bf16 pruned 50% >= 1.6x", rows["OV bf16 pruned 50%"]["speedup_vs_unpruned"] >= 1.6),
        (
            "distillation raises held-out centred cosine",
            (ad.get("centred_cosine") or 0) > (bd.get("centred_cosine") or 0),
        ),
        ("every eligible 2:4 tensor verified", sp["eligible"] == sp["verified"] > 0),
    ]
    lines += [
        "",
        f"Distillation: {d.get('steps')} steps in {_f(d.get('seconds'), '.0f')} s on 1 thread "
        f"(loss {_f(d.get('initial_loss'))} -> {_f(d.get('final_loss'))}); held-out relative "
        f"L2 {_f(bd.get('relative_l2'))} -> {_f(ad.get('relative_l2'))}, centred cosine "
        f"{_f(bd.get('centred_cosine'))} -> {_f(ad.get('centred_cosine'))}, cosine "
        f"{_f(bd.get('cosine'), '.6f')} -> {_f(ad.get('cosine'), '.6f')}.",
        "",
        f"2:4 sparsity: {sp['eligible']} of {sp['layers']} Conv/Gemm layers eligible, "
        f"{sp['verified']} verified to hold the 2:4 pattern after the rewrite. Dense CPU "
        "kernels gain nothing (the ORT fp32 2:4 row); the speedup exists only on TensorRT with "
        "sparse tensor cores (Ampere+), not measurable here.",
        "",
        f"Unstructured 80% (size only): engine folder {un['engine_bytes_stored'] / 1e6:.1f} MB "
        f"stored vs {un['dense_engine_bytes'] / 1e6:.1f} MB dense; held-out relative L2 "
        f"{_f(un['figures'].get('relative_l2'))}.",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in checks],
        "",
        "### act-policy, low-rank factorization and channel pruning (ONNX Runtime fp32)",
        "",
        "`channels 50%` prunes the ResNet-18 backbone's channels and the transformer FFN hidden "
        "units; attention projections and the residual stream stay whole (blocked by the head "
        "Reshape and LayerNorm, see the report's groups).",
        "",
        "| variant | p50 ms | speedup | GMAC | layers factorized | rel L2 | centred cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in act["rows"]:
        lines.append(
            f"| {r['key']} | {r['p50_ms']:.2f} | {r['speedup']:.2f}x | {r['macs'] / 1e9:.3f} | "
            f"{r['factorized'] if r['factorized'] is not None else '-'} | "
            f"{_f(r['relative_l2'])} | {_f(r['centred_cosine'])} |"
        )
    for key, msg in act.get("refused", {}).items():
        lines.append(f"| {key} | refused: {msg} | | | | | |")
    rt = act.get("rank_table")
    if rt:
        lines += [
            "",
            f"Spectrum of the largest weight, `{rt['weight']}` {rt['shape']}: a random matrix "
            "has a flat spectrum, so energy targets need nearly full rank; a trained policy's "
            "weights are usually far more compressible.",
            "",
            "| rank | MACs vs dense | energy kept | weight relative error |",
            "|---|---|---|---|",
            *[
                f"| {r['rank']} | {r['macs_ratio']:.3f} | {r['energy_kept']:.3f} | "
                f"{r['relative_error']:.3f} |"
                for r in rt["rows"]
            ],
        ]
    lines.append("")
    if p.get("torch_pruning"):
        from benchmarks.tp import report_lines as tp_lines

        lines += tp_lines(p["torch_pruning"])
    return lines
