"""torch-pruning (DepGraph) against robopt's ONNX channel pruning, on ``visuomotor-cnn`` at 50%.

The task allows torch-pruning for torch sources "where it does better"; this measures both
on equal terms and says which wins on what, from the numbers of the run:

- torch-pruning 1.6: ``MetaPruner`` with ``MagnitudeImportance(p=1)`` (group L1: producer rows,
  BatchNorm gammas and consumer input columns, averaged over the group), ratio 0.5 per group,
  ``round_to=8``, no global ranking, on a copy of the zoo module; the same layers protected as
  robopt's defaults (the stem conv, the first proprio Linear, the output Linear); then exported
  with robopt's ``export_torch``.
- robopt: ``export_torch`` of the unpruned module (BatchNorm folded by the exporter's
  optimizer), then ``ChannelPrunePass(0.5)`` with its defaults (L1 of the folded producer
  weights, kept counts rounded up to multiples of 8, first layers protected).

Both end as plain ONNX files of the same topology; MACs/params come from robopt's analysis
passes, latency from ONNX Runtime fp32 at 1 thread (interleaved rounds, default graph
optimizations) and fidelity from 16 synthetic inputs that neither method saw (both criteria
are data-free), against torch fp32 of the unpruned module.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

CNN = "visuomotor-cnn"
RATIO = 0.5
ROUND_TO = 8
SAMPLES = 16
SEED = 7
KEYS = ("unpruned", "torch-pruning", "robopt")
LATENCY_TIE = 0.03  # latencies within 3% are "on par" (2 shared cores, interleaved rounds)
ERROR_TIE = 0.02  # relative L2 within 2% of each other counts as equal fidelity
CENTRED_MEANINGFUL = 0.5  # below this, neither model keeps the input-dependent signal
TITLE = "### torch-pruning (DepGraph) vs robopt ONNX channel pruning, visuomotor-cnn 50%"


def bench_torch_pruning(
    workdir: Path, rounds: int, per_round: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Prune ``visuomotor-cnn`` 50% with both tools; time and score the three ONNX models."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"error": "torch-pruning not installed"}
    import torch

    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import export_torch
    from robopt_compile.passes.prune.channels import ChannelPrunePass
    from robopt_compile.zoo import load_zoo

    torch.set_num_threads(1)
    workdir.mkdir(parents=True, exist_ok=True)
    module, examples = load_zoo(CNN)
    names = list(module.output_names)
    paths = {k: workdir / f"{CNN}-tp-bench-{k}.onnx" for k in KEYS}
    secs: dict[str, dict[str, float | None]] = {}

    log("[bench] torch-pruning vs robopt: unpruned export + robopt ChannelPrunePass(0.5)")
    # The first dynamo export in a process pays ~2 s of one-time set-up; pay it on a tiny
    # module so the export times below compare the two models, not the order they ran in.
    warm = torch.nn.Sequential(torch.nn.Linear(4, 4)).eval()
    export_torch(warm, {"x": torch.zeros(1, 4)}, ["y"])
    t = time.perf_counter()
    base, _, _ = export_torch(module, examples, names)
    export_s = time.perf_counter() - t
    rir.save(base, paths["unpruned"])
    secs["unpruned"] = {"prune_s": None, "export_s": export_s}
    robopt_model = rir.clone(base)
    t = time.perf_counter()
    rpass = ChannelPrunePass(RATIO)
    rpass(robopt_model)
    secs["robopt"] = {"prune_s": time.perf_counter() - t, "export_s": export_s}
    rir.save(robopt_model, paths["robopt"])

    log("[bench] torch-pruning MetaPruner(L1, 0.5, round_to=8) + export")
    pruned = copy.deepcopy(module).eval()
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        pruned,
        examples,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=[pruned.trunk.conv1, pruned.proprio_mlp[0], pruned.head[-1]],
        round_to=ROUND_TO,
        global_pruning=False,
    )
    pruner.step()
    tp_s = time.perf_counter() - t
    t = time.perf_counter()
    tp_model, _, _ = export_torch(pruned, examples, names)
    secs["torch-pruning"] = {"prune_s": tp_s, "export_s": time.perf_counter() - t}
    rir.save(tp_model, paths["torch-pruning"])

    models = {"unpruned": base, "torch-pruning": tp_model, "robopt": robopt_model}
    from benchmarks.quant import torch_outputs

    inputs = _inputs(examples)
    ref = torch_outputs(module, inputs, names)
    tp_eager = torch_outputs(pruned, inputs, names)
    log("[bench] timing ORT fp32, 1 thread")
    lat, outs = _time_onnx(paths, inputs, rounds, per_round)
    from robopt_compile.compile.accuracy import accuracy_figures

    rows = []
    for key in KEYS:
        macs, params = _macs_params(models[key])
        fig = accuracy_figures(ref, outs[key])
        rows.append({
            "key": key, "macs": macs, "params": params, "p50_ms": lat[key],
            "speedup": lat["unpruned"] / lat[key], "relative_l2": fig["relative_l2"],
            "cosine": fig["cosine"], "centred_cosine": fig["centred_cosine"], **secs[key],
        })  # fmt: skip
    layers = {k: _out_channels(m) for k, m in models.items()}
    return {
        "model": CNN,
        "ratio": RATIO,
        "round_to": ROUND_TO,
        "threads": 1,
        "rounds": rounds,
        "per_round": per_round,
        "samples": len(inputs),
        "versions": {"torch_pruning": getattr(tp, "__version__", "?"), "torch": torch.__version__},
        "rows": rows,
        "layers": layers,
        "stages": stage_rows(layers),
        "robopt_totals": rpass.report.get("totals", {}),
        "tp_export_vs_eager": accuracy_figures(tp_eager, outs["torch-pruning"])["relative_l2"],
    }


def _inputs(examples: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """16 synthetic samples: images uniform [0, 1], everything else standard normal, seed 7."""
    from benchmarks.quant import synthetic_samples

    arrays = synthetic_samples(examples, SAMPLES, SEED)
    return [{k: a[i] for k, a in arrays.items()} for i in range(SAMPLES)]


def _time_onnx(
    paths: dict[str, Path], inputs: list[dict[str, np.ndarray]], rounds: int, per_round: int
) -> tuple[dict[str, float], dict[str, list[dict[str, np.ndarray]]]]:
    import onnxruntime as ort

    from benchmarks.run import interleaved_median_ms

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    fns, outs = {}, {}
    for key, path in paths.items():
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        onames = [o.name for o in sess.get_outputs()]
        outs[key] = [dict(zip(onames, sess.run(None, s), strict=True)) for s in inputs]
        fns[key] = partial(sess.run, None, inputs[0])
    return interleaved_median_ms(fns, rounds, per_round), outs


def _macs_params(model: Any) -> tuple[int, int]:
    from robopt_compile.passes.analysis.flops import FlopsPass
    from robopt_compile.passes.analysis.params import ParamsPass

    flops, params = FlopsPass(batch=1), ParamsPass()
    flops(model)
    params(model)
    return int(flops.facts["totals"]["macs"]), int(params.facts["param_count"])


def _out_channels(model: Any) -> dict[str, int]:
    """Output channels of every Conv/Gemm, keyed by its torch layer (the weight's name)."""
    out = {}
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None:
            continue
        name = w.name.removesuffix(".weight")
        trans_b = any(a.name == "transB" and a.value for a in node.attributes.values())
        shape = list(w.const_value.shape)
        out[name] = int(shape[1] if node.op_type == "Gemm" and not trans_b else shape[0])
    return out


def stage_rows(layers: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Channel counts per conv stage / MLP part, for each variant ("a/b" for two blocks)."""
    spec: list[tuple[str, list[str]]] = [
        ("stem + stage-1 residual stream", ["trunk.conv1"]),
        ("stage-1 block inner (conv1 of block 0/1)",
         ["trunk.layer1.0.conv1", "trunk.layer1.1.conv1"]),
    ]  # fmt: skip
    for s in (2, 3, 4):
        extra = " = trunk features" if s == 4 else ""
        spec.append((f"stage-{s} residual stream{extra}", [f"trunk.layer{s}.0.conv2"]))
        spec.append((
            f"stage-{s} block inner (conv1 of block 0/1)",
            [f"trunk.layer{s}.0.conv1", f"trunk.layer{s}.1.conv1"],
        ))  # fmt: skip
    spec += [
        ("proprio MLP (Linear 0/2)", ["proprio_mlp.0", "proprio_mlp.2"]),
        ("head hidden (Linear 0/2)", ["head.0", "head.2"]),
    ]
    rows = []
    for label, names in spec:
        row: dict[str, Any] = {"stage": label}
        for key, chans in layers.items():
            row[key] = "/".join(str(chans.get(n, "?")) for n in names)
        rows.append(row)
    return rows


# ---- verdict and report ------------------------------------------------------------------


def _pct(a: float, b: float) -> float:
    """How much larger ``b`` is than ``a``, in percent of ``a``."""
    return (b / a - 1.0) * 100.0 if a else float("inf")


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Which method is faster and which is closer to the unpruned model, from the rows."""
    rows = {r["key"]: r for r in result["rows"]}
    t, r = rows["torch-pruning"], rows["robopt"]
    if abs(t["p50_ms"] / r["p50_ms"] - 1.0) <= LATENCY_TIE:
        faster = None
    else:
        faster = "torch-pruning" if t["p50_ms"] < r["p50_ms"] else "robopt"
    lo, hi = sorted((t["relative_l2"], r["relative_l2"]))
    if hi <= lo * (1.0 + ERROR_TIE):
        accurate = None
    else:
        accurate = "torch-pruning" if t["relative_l2"] < r["relative_l2"] else "robopt"
    tp_better = []
    if faster == "torch-pruning":
        tp_better.append(f"latency by {_pct(t['p50_ms'], r['p50_ms']):.0f}%")
    if accurate == "torch-pruning":
        tp_better.append(
            f"fidelity (relative L2 {t['relative_l2']:.3f} vs {r['relative_l2']:.3f}, "
            f"{_pct(t['relative_l2'], r['relative_l2']):.0f}% more error with robopt)"
        )
    return {"faster": faster, "more_accurate": accurate, "torch_pruning_better_on": tp_better}


def verdict_text(result: dict[str, Any]) -> str:
    rows = {r["key"]: r for r in result["rows"]}
    t, r = rows["torch-pruning"], rows["robopt"]
    v = verdict(result)
    if v["faster"] is None:
        speed = (
            f"At equal ratio the two pruned models run on par in ONNX Runtime fp32 "
            f"({t['p50_ms']:.2f} vs {r['p50_ms']:.2f} ms, within {LATENCY_TIE:.0%})"
        )
    else:
        slow, fast = (r, t) if v["faster"] == "torch-pruning" else (t, r)
        speed = (
            f"At equal ratio {v['faster']} gives the faster model: {fast['p50_ms']:.2f} vs "
            f"{slow['p50_ms']:.2f} ms in ONNX Runtime fp32 "
            f"(the other is {_pct(fast['p50_ms'], slow['p50_ms']):.0f}% slower)"
        )
    if result.get("stages") and all(
        s.get("torch-pruning") == s.get("robopt") for s in result["stages"]
    ):
        speed += (
            f"; both reach the same architecture ({t['macs'] / 1e9:.3f} GMAC, the same "
            "channel count in every layer)."
        )
    else:
        speed += (
            f", at {t['macs'] / 1e9:.3f} vs {r['macs'] / 1e9:.3f} GMAC (torch-pruning vs robopt)."
        )
    if v["more_accurate"] is None:
        acc = (
            f"Both stay about as close to the unpruned model on {result['samples']} unseen "
            f"inputs (relative L2 {t['relative_l2']:.3f} vs {r['relative_l2']:.3f})."
        )
    else:
        good, bad = (t, r) if v["more_accurate"] == "torch-pruning" else (r, t)
        acc = (
            f"{v['more_accurate']} stays closer to the unpruned model on {result['samples']} "
            f"unseen inputs: relative L2 {good['relative_l2']:.3f} vs {bad['relative_l2']:.3f}, "
            f"centred cosine {_f(good['centred_cosine'])} vs {_f(bad['centred_cosine'])}."
        )
    tc, rc = t["centred_cosine"], r["centred_cosine"]
    if tc is not None and rc is not None:
        if max(tc, rc) < CENTRED_MEANINGFUL:
            acc += (
                f" Both centred cosines are near zero (torch-pruning {tc:.3f}, robopt {rc:.3f}): "
                "untrained 50% "
                "pruning of this random-weight network loses the input-dependent part of the "
                "action with either tool, so the gap is in its constant part."
            )
        elif v["more_accurate"] and (tc > rc) != (v["more_accurate"] == "torch-pruning"):
            acc += (
                f" Centred cosine orders them the other way (torch-pruning {tc:.3f}, robopt "
                f"{rc:.3f})."
            )
    rec = (
        "robopt keeps its ONNX channel pruning as the default, because it works for every "
        "source, ONNX files included"
    )
    if v["torch_pruning_better_on"]:
        rec += (
            "; torch-pruning is better here on "
            + " and ".join(v["torch_pruning_better_on"])
            + ", which matters only for torch sources"
        )
    else:
        rec += "; torch-pruning is not better on any measured axis here"
    return f"{speed} {acc} {rec}."


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report_lines(result: dict[str, Any]) -> list[str]:
    """Markdown section for docs/BENCHMARKS.md."""
    if "error" in result:
        return [TITLE, "", f"Not measured: {result['error']}.", ""]
    ver = result.get("versions", {})
    lines = [
        TITLE,
        "",
        f"torch-pruning {ver.get('torch_pruning', '?')} `MetaPruner` with "
        "`MagnitudeImportance(p=1)` (group L1 over producer rows, BatchNorm gammas and consumer "
        f"input columns), ratio {result['ratio']} per group, `round_to={result['round_to']}`, "
        "local ranking, stem conv / first proprio Linear / output Linear ignored, then "
        "`export_torch`; robopt: `export_torch` (BatchNorm folded) then "
        f"`ChannelPrunePass({result['ratio']})` defaults (L1 of folded producer weights, kept "
        "counts rounded up to multiples of 8, first layers protected). Both run in ONNX Runtime "
        f"fp32, {result['threads']} thread, {result['rounds']}x{result['per_round']} "
        f"interleaved runs; fidelity on {result['samples']} synthetic inputs (seed 7) neither "
        "method saw, against torch fp32 of the unpruned module. Prune s: torch-pruning's "
        "DepGraph build + step, robopt's pass; robopt's export s is the unpruned export it "
        "prunes (the first export's one-time set-up is paid beforehand on a tiny module).",
        "",
        "| model | GMAC | params M | p50 ms | speedup | rel L2 | centred cosine | cosine | "
        "prune s | export s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['key']} | {r['macs'] / 1e9:.3f} | {r['params'] / 1e6:.2f} | "
            f"{r['p50_ms']:.2f} | {r['speedup']:.2f}x | {_f(r['relative_l2'])} | "
            f"{_f(r['centred_cosine'])} | {_f(r['cosine'], '.5f')} | {_secs(r['prune_s'])} | "
            f"{_secs(r['export_s'])} |"
        )
    stages = result.get("stages") or []
    if stages:
        lines += [
            "",
            "Output channels kept (torch-pruning prunes BatchNorm'd convs in torch, robopt the "
            "BN-folded ONNX convs; same topology either way):",
            "",
            "| layers | unpruned | torch-pruning | robopt |",
            "|---|---|---|---|",
        ]
        for s in stages:
            mark = "" if s.get("torch-pruning") == s.get("robopt") else " *"
            lines.append(
                f"| {s['stage']}{mark} | {s.get('unpruned')} | {s.get('torch-pruning')} | "
                f"{s.get('robopt')} |"
            )
        lines += ["", _channel_note(result)]
    if result.get("tp_export_vs_eager") is not None:
        lines += [
            "",
            "The torch-pruning ONNX matches its pruned torch module to relative L2 "
            f"{result['tp_export_vs_eager']:.1e}, so the comparison is of the pruning, not "
            "of the export.",
        ]
    lines += ["", "**Verdict:** " + verdict_text(result), ""]
    return lines


def _channel_note(result: dict[str, Any]) -> str:
    stages = result["stages"]
    differ = [s["stage"] for s in stages if s.get("torch-pruning") != s.get("robopt")]
    stem = next(s for s in stages if s["stage"].startswith("stem"))
    if stem.get("torch-pruning") != stem.get("unpruned"):
        stem_note = (
            "torch-pruning pruned the stem's stage-1 residual stream although the stem conv "
            "is ignored (ignored only as an output layer)"
        )
    elif stem.get("robopt") != stem.get("unpruned"):
        stem_note = "robopt pruned the stem's stage-1 residual stream"
    else:
        stem_note = (
            "both keep the stem and the stage-1 residual stream coupled to it (torch-pruning "
            "skips any group that contains an ignored layer's output channels)"
        )
    if not differ:
        return f"Both prune the same channel counts everywhere; {stem_note}."
    return (
        f"Channel counts differ (*) in: {', '.join(differ)}; {stem_note}. Where counts are "
        "equal the kept channels can still differ, because the two L1 criteria differ."
    )
