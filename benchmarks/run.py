"""``make bench``: side-by-side latency and parity of every zoo model, written to
docs/BENCHMARKS.md with a plot.

Everything is measured in one run on this machine with 1 thread per runtime. Runtimes are
timed in interleaved rounds (A B C A B C ...) so that a noisy neighbour slows all of them alike,
and each figure is the median over all rounds.

Columns:
  torch eager      the source model in PyTorch (what a user starts from)
  ORT default      onnxruntime.InferenceSession on the plain exported ONNX, default options
  robopt ORT       the bundle robopt built for target ``host`` with backend onnxruntime
  OV default       OpenVINO compile_model(onnx, "CPU") with no options: bf16 on AVX-512-BF16/AMX
                   CPUs, so it is faster but *not* fp32 (its cosine vs torch is reported)
  robopt OV f32    the bundle robopt built with backend openvino, fp32 (f32 precision hint)
  robopt OV bf16   the bundle robopt built with ``--backend openvino --precision bf16``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ZOO_MODELS = ("state-mlp", "visuomotor-cnn", "act-policy")
COLUMNS = ("torch eager", "ORT default", "robopt ORT", "OV default", "robopt OV f32",
           "robopt OV bf16")  # fmt: skip
BUILDS = {  # column -> (backend, precision)
    "robopt ORT": ("onnxruntime", "fp32"),
    "robopt OV f32": ("openvino", "fp32"),
    "robopt OV bf16": ("openvino", "bf16"),
}
# What issue 2 asks the numbers to show; the report marks each as met or not.
EXPORT_COSINE_MIN = 0.99999
OVERHEAD_MAX_PCT = 2.0
HELP_MAX_S = 1.0


def interleaved_median_ms(
    fns: dict[str, Callable[[], Any]], rounds: int, per_round: int, warmup: int = 5,
    on_result: Callable[[str, Any], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Median latency in ms of each callable, timed in interleaved rounds (``on_result``
    sees each timed call's return value)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter_ns()
                out = fn()
                samples[k].append((time.perf_counter_ns() - t) / 1e6)
                if on_result is not None:
                    on_result(k, out)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(name: str, workdir: Path, rounds: int, per_round: int) -> dict[str, Any]:
    import onnxruntime as ort
    import openvino as ov
    import torch

    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import export_torch
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.numerics import compare, worst
    from robopt_compile.targets import Artifact, get_backend
    from robopt_compile.zoo import load_zoo

    torch.set_num_threads(1)
    row: dict[str, Any] = {"model": name, "compile_s": {}}
    bundles = {}
    for col, (backend, precision) in BUILDS.items():
        out = workdir / f"{name}-{backend}-{precision}"
        t = time.perf_counter()
        res = compile_model(
            f"zoo:{name}",
            out,
            CompileOptions(backend=backend, precision=precision, threads=1),
            force=True,
        )
        row["compile_s"][col] = time.perf_counter() - t
        bundles[col] = (out, res)
    first_out, first = bundles["robopt ORT"]
    row["export_cosine"] = first.manifest["parity"]["export"]["cosine"]
    row["export_max_abs"] = first.manifest["parity"]["export"]["max_abs"]
    row["exporter"] = first.report["exporter"]
    row["macs"] = first.facts["summary"].get("macs")
    row["roofline_ms"] = first.facts["summary"].get("estimated_latency_ms")

    module, examples = load_zoo(name, seed=0)
    ref_in = dict(np.load(first_out / "reference" / "inputs.npz"))
    ref_out = dict(np.load(first_out / "reference" / "outputs.npz"))
    t_in = {k: torch.from_numpy(v) for k, v in ref_in.items()}

    # The plain export (no robopt passes) is what a user hands the vendor runtimes by default.
    plain = workdir / f"{name}-plain.onnx"
    model_ir, _, _ = export_torch(module, examples, list(ref_out))
    rir.save(model_ir, plain)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess_default = ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
    ov_default = ov.Core().compile_model(str(plain), "CPU", {"INFERENCE_NUM_THREADS": 1})
    ov_req = ov_default.create_infer_request()
    ov_names = [o.get_any_name() for o in ov_default.outputs]
    # Preset the input tensors once, as robopt's runner does, so the two OpenVINO columns
    # differ only in compile settings, not in per-call numpy -> tensor conversion.
    for i, inp in enumerate(ov_default.inputs):
        ov_req.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(ref_in[inp.get_any_name()])))

    def torch_call() -> Any:
        with torch.no_grad():
            return module(**t_in)

    with contextlib.ExitStack() as stack:
        runners = {}
        for col, (out, res) in bundles.items():
            m = res.manifest
            art = Artifact.from_json(m["engine"], out / m["engine"]["dir"])
            runners[col] = stack.enter_context(get_backend(m["backend"]).runner(art, threads=1))
        fns: dict[str, Callable[[], Any]] = {
            "torch eager": torch_call,
            "ORT default": lambda: sess_default.run(None, ref_in),
            "OV default": ov_req.infer,
        }
        fns.update({col: r.bind(ref_in) for col, r in runners.items()})
        row["p50_ms"] = interleaved_median_ms({c: fns[c] for c in COLUMNS}, rounds, per_round)
        # Fidelity against torch on the reference inputs (never used in export), all outputs.
        outs = {
            "ORT default": dict(zip(ref_out, sess_default.run(None, ref_in), strict=True)),
            "OV default": {
                n: np.array(v) for n, v in zip(ov_names, ov_req.infer(ref_in).values(), strict=True)
            },
        }
        outs.update({col: r.infer(ref_in) for col, r in runners.items()})
    row["vs_torch"] = {c: worst(compare(ref_out, o)) for c, o in outs.items()}
    return row


def bench_harness_overhead(bundle: Path, runs: int) -> dict[str, Any]:
    """robopt-bench --overhead on a bundle, in a subprocess as a user would run it."""
    exe = Path(sys.executable).parent / "robopt-bench"
    proc = subprocess.run(
        [str(exe), str(bundle), "--overhead", "--runs", str(runs), "--threads", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout)


def bench_startup(repeats: int = 7) -> dict[str, float]:
    res = {}
    for cmd in ("robopt-compile", "robopt-bench"):
        exe = Path(sys.executable).parent / cmd
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([str(exe), "--help"], capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        res[cmd] = statistics.median(times)
    return res


def _machine() -> str:
    from robopt_compile.bench.machine import machine_summary
    from robopt_compile.compile.bundle import tool_versions

    m = machine_summary("onnxruntime")
    v = tool_versions()
    tools = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino") if k in v)
    return (
        f"{m['cpu_model']}, {m['cores_available']} cores, {m['arch']}, Python {m['python']}; "
        f"{tools}"
    )


def _check(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def write_report(
    rows: list[dict[str, Any]],
    overhead: dict[str, Any],
    startup: dict[str, float],
    out: Path,
    rounds: int,
    per_round: int,
    quant: dict[str, Any] | None = None,
    prune: dict[str, Any] | None = None,
    reused: dict[str, str] | None = None,
    targets: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    remote: dict[str, Any] | None = None,
    planner: dict[str, Any] | None = None,
    crash: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    vla: dict[str, Any] | None = None,
    faults: dict[str, Any] | None = None,
    metaworld: dict[str, Any] | None = None,
    metaworld_vla: dict[str, Any] | None = None,
    platform: dict[str, Any] | None = None,
    scale: dict[str, Any] | None = None,
    archsearch: dict[str, Any] | None = None,
) -> None:
    cols = list(COLUMNS)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        + (
            "Every figure below was measured in that one run; none is copied from elsewhere."
            if not reused
            else "Sections re-rendered from earlier `make bench` runs (`--sections`): "
            + ", ".join(f"{k} (measured {v})" for k, v in reused.items())
            + ". Each section was measured in one run of its own and none is copied from "
            "elsewhere; compare ratios only within a section."
        ),
        "",
        f"Machine: {_machine()}. One thread per runtime, batch 1, medians of "
        f"{rounds} interleaved rounds x {per_round} runs per runtime. This machine is shared "
        "and noisy: compare ratios within a row, not absolute times across runs.",
        "",
    ]
    if metaworld:  # the headline: the claim on a trained policy of real size
        from benchmarks.metaworld import report_lines as metaworld_lines

        lines += metaworld_lines(metaworld)
    if metaworld_vla:  # the trained VLA's bundles
        from benchmarks.metaworld_vla import report_lines as vla_lines

        lines += vla_lines(metaworld_vla)
    if archsearch:  # the architecture search against uniform pruning and FastNAS
        from benchmarks.archsearch import report_lines as arch_lines

        lines += arch_lines(archsearch)
    lines += [
        "## Latency p50 (ms) and speed-up vs torch eager",
        "",
        "| model | MMAC | roofline est. ms | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        eager = r["p50_ms"]["torch eager"]
        cells = [f"{r['p50_ms'][c]:.3f} ({eager / r['p50_ms'][c]:.2f}x)" for c in cols]
        mmac = f"{r['macs'] / 1e6:,.1f}" if r.get("macs") else "?"
        est = f"{r['roofline_ms']:.3f}" if r.get("roofline_ms") else "?"
        lines.append(f"| {r['model']} | {mmac} | {est} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The roofline column is robopt's *estimate* for this machine's detected profile at 1 "
        "thread (analysis pass), printed next to the measurements to show how far it is off.",
        "",
        "`OV default` is OpenVINO with no options. On CPUs with AVX-512 BF16 or AMX, like "
        "this one, it silently runs in bf16. So it is not an fp32 engine, and it is faster "
        "than any fp32 engine here. robopt's fp32 engines pin f32 "
        "(`INFERENCE_PRECISION_HINT=f32`). `robopt OV bf16` is the same bf16 speed, asked for "
        "explicitly and checked. At fp32 robopt matches ONNX Runtime's defaults: it applies "
        "the same graph optimisations, saved ahead of time. The speed-ups over vendor defaults "
        "come from the quantization and pruning passes (later issues), not from this table.",
        "",
        "## Fidelity vs torch on reference inputs not used during export (worst output)",
        "",
        "| model | exporter | export parity cosine | export max abs err | "
        + " | ".join(f"{c} cosine / max abs" for c in cols[1:])
        + " |",
        "|---|---|---|---|" + "---|" * (len(cols) - 1),
    ]
    for r in rows:
        cells = [
            f"{r['vs_torch'][c]['cosine']:.7f} / {r['vs_torch'][c]['max_abs']:.1e}"
            for c in cols[1:]
        ]
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['export_cosine']:.8f} | "
            f"{r['export_max_abs']:.2e} | " + " | ".join(cells) + " |"
        )
    cnn = next((r for r in rows if r["model"] == "visuomotor-cnn"), None)
    worst_export = min(r["export_cosine"] for r in rows)
    lines += [
        "",
        "## What issue 2 asked these numbers to show",
        "",
        "| requirement | measured | |",
        "|---|---|---|",
        f"| export parity cosine >= {EXPORT_COSINE_MIN} for every zoo model | worst "
        f"{worst_export:.8f} | {_check(worst_export >= EXPORT_COSINE_MIN)} |",
    ]
    if cnn:
        ratio = cnn["p50_ms"]["torch eager"] / cnn["p50_ms"]["robopt ORT"]
        lines.append(
            f"| ONNX Runtime ~1.7x faster than eager on the CNN | robopt ORT {ratio:.2f}x "
            f"| {_check(ratio >= 1.5)} |"
        )
    if "overhead_pct" in overhead:
        pct = overhead["overhead_pct"]
        lines.append(
            f"| robopt-bench p50 within {OVERHEAD_MAX_PCT:.0f}% of a bare runtime loop | "
            f"{pct:+.2f}% ({overhead['harness_p50_ms']:.3f} vs {overhead['bare_p50_ms']:.3f} "
            f"ms, {overhead['runs_each']} runs each, {overhead['backend']}, visuomotor-cnn) | "
            f"{_check(pct < OVERHEAD_MAX_PCT)} |"
        )
    else:
        lines.append(f"| robopt-bench overhead < 2% | not measured: {overhead.get('error')} | |")
    for k, v in startup.items():
        lines.append(f"| `{k} --help` under {HELP_MAX_S:.0f} s | {v:.3f} s | "
                     f"{_check(v < HELP_MAX_S)} |")  # fmt: skip
    lines += [
        "",
        "Start-up is the median of 7 runs of the console script, Python start included.",
        "",
        "## Compile time (s, whole `robopt-compile` pipeline: export, checks, build, verify)",
        "",
        "| model | " + " | ".join(BUILDS) + " |",
        "|---|" + "---|" * len(BUILDS),
        *[
            f"| {r['model']} | " + " | ".join(f"{r['compile_s'][c]:.1f}" for c in BUILDS) + " |"
            for r in rows
        ],
        "",
        "![latency](bench_latency.png)",
        "",
    ]
    if quant:
        from benchmarks.quant import report_lines

        lines += report_lines(quant)
    if prune:
        from benchmarks.prune import report_lines as prune_lines

        lines += prune_lines(prune)
    if targets:
        from benchmarks.targets import report_lines as target_lines

        lines += target_lines(targets)
    if evaluation:
        from benchmarks.eval import report_lines as eval_lines

        lines += eval_lines(evaluation)
    if remote:
        from benchmarks.remote import markdown as remote_markdown

        lines += ["", remote_markdown(remote), ""]
    if planner:
        from benchmarks.planner import report_lines as planner_lines

        lines += planner_lines(planner)
    if crash:
        from benchmarks.crash import report_lines as crash_lines

        lines += crash_lines(crash)
    if cache:
        from benchmarks.cache import report_lines as cache_lines

        lines += cache_lines(cache)
    if vla:
        from benchmarks.vla import report_lines as vla_lines

        lines += vla_lines(vla)
    if faults:
        from benchmarks.faults import report_lines as fault_lines

        lines += fault_lines(faults)
    if platform:
        from benchmarks.platform import report_lines as platform_lines

        lines += platform_lines(platform)
    if scale:
        from benchmarks.scale import report_lines as scale_lines

        lines += scale_lines(scale)
    out.write_text("\n".join(lines))
    _plot(rows, cols, out.parent / "bench_latency.png")


def _plot(rows: list[dict[str, Any]], cols: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6))
    axes = np.atleast_1d(axes)
    for ax, r in zip(axes, rows, strict=True):
        vals = [r["p50_ms"][c] for c in cols]
        colors = ["#888", "#4a90d9", "#1f5fa8", "#e8a33d", "#b5651d", "#7a3e0e"]
        ax.bar(range(len(cols)), vals, color=colors[: len(cols)])
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
        ax.set_title(r["model"])
        ax.set_ylabel("p50 latency (ms, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECTIONS = (
    "base", "quant", "prune", "targets", "eval", "remote", "planner", "crash", "cache", "vla",
    "faults", "metaworld", "metaworld-vla", "platform", "scale", "archsearch",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--models", nargs="*", default=list(ZOO_MODELS))
    ap.add_argument("--overhead-runs", type=int, default=2000)
    ap.add_argument(
        "--sections",
        nargs="*",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="Sections to measure; the others are re-used from bench_results.json (labelled).",
    )
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--tvm-trials", type=int, default=512, help="MetaSchedule trials per model.")
    ap.add_argument("--episodes", type=int, default=50, help="Closed-loop episodes per engine.")
    ap.add_argument("--metaworld-episodes", type=int, default=100,
                    help="Paired Meta-World episodes per engine (the claim).")  # fmt: skip
    ap.add_argument("--metaworld-vla-episodes", type=int, default=100,
                    help="Paired Meta-World episodes per engine for the trained VLA.")  # fmt: skip
    ap.add_argument("--archsearch-prebuilt", type=Path, default=None,
                    help="A folder with nas-search / nas-uniform bundles built by the section's "
                    "own options (docs/ARCHSEARCH.md); missing ones are built.")  # fmt: skip
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    # The compiles here run their own episodes on this machine's cores as robopt-compile does
    # (evaluate/pooled.py starts workers unasked only under robopt's commands; this module
    # keeps its work under __main__, so it opts in).
    os.environ.setdefault("ROBOPT_EPISODE_WORKERS", str(os.cpu_count() or 1))
    results_path = args.out.parent / "bench_results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stamps = dict(previous.get("measured", {}))
    # Each section keeps its results under its own name, but for base ("rows").
    for key, field in (("base", "rows"), *((s, s) for s in SECTIONS[1:])):
        if previous.get(field) is not None and key not in stamps:
            stamps[key] = "in an earlier run"
    missing = [s for s in SECTIONS if s not in args.sections and s not in stamps]
    if missing and previous:
        log(f"[bench] no earlier measurement of {missing}: they are left out")
    work = Path(tempfile.mkdtemp(prefix="robopt-bench-"))
    res = {k: previous.get(k) for k in ("rows", "overhead", "startup", *SECTIONS[1:])}
    try:
        if "base" in args.sections:
            rows = []
            for name in args.models:
                log(f"[bench] {name} ...")
                rows.append(bench_model(name, work, args.rounds, args.per_round))
            log("[bench] harness overhead ...")
            cnn = work / "visuomotor-cnn-onnxruntime-fp32"
            res["overhead"] = (
                bench_harness_overhead(cnn, args.overhead_runs)
                if cnn.exists()
                else {"error": "visuomotor-cnn not in --models"}
            )
            res["rows"], res["startup"] = rows, bench_startup()
            stamps["base"] = now
        if "quant" in args.sections:
            from benchmarks.quant import bench_quant

            res["quant"] = bench_quant(work, args.rounds, args.per_round, log)
            stamps["quant"] = now
        if "prune" in args.sections:
            from benchmarks.prune import bench_prune

            res["prune"] = bench_prune(work, args.rounds, args.per_round, log, args.distill_steps)
            stamps["prune"] = now
        if "targets" in args.sections:
            from benchmarks import targets as bt
            from benchmarks.tvm import bench_tvm

            res["targets"] = {
                "openvino_cache": bt.bench_openvino_cache(work, log),
                "tvm": bench_tvm(work, args.rounds, args.per_round, log, args.tvm_trials),
                "roofline": bt.roofline_estimates(log),
            }
            stamps["targets"] = now
        if "eval" in args.sections:
            from benchmarks.eval import bench_eval

            res["eval"] = bench_eval(work, log, args.episodes)
            stamps["eval"] = now
        if "remote" in args.sections:
            from benchmarks.remote import run_remote_section

            res["remote"] = run_remote_section(work, log)
            stamps["remote"] = now
        if "planner" in args.sections:
            from benchmarks.planner import bench_planner

            res["planner"] = bench_planner(work, log)
            stamps["planner"] = now
        if "crash" in args.sections:
            from benchmarks.crash import bench_crash

            res["crash"] = bench_crash(work, log)
            stamps["crash"] = now
        if "cache" in args.sections:
            from benchmarks.cache import bench_rebuild

            res["cache"] = bench_rebuild(work, log)
            stamps["cache"] = now
        if "vla" in args.sections:
            from benchmarks.vla import bench_vla

            res["vla"] = bench_vla(work, log)
            stamps["vla"] = now
        if "faults" in args.sections:
            from benchmarks.faults import bench_faults

            res["faults"] = bench_faults(work, log)
            stamps["faults"] = now
        if "metaworld" in args.sections:
            from benchmarks.metaworld import bench_metaworld

            res["metaworld"] = bench_metaworld(
                work, log, args.metaworld_episodes, args.rounds, args.per_round
            )
            stamps["metaworld"] = now
        if "metaworld-vla" in args.sections:
            from benchmarks.metaworld_vla import bench_metaworld_vla

            res["metaworld-vla"] = bench_metaworld_vla(
                work, log, args.metaworld_vla_episodes, args.rounds, args.per_round
            )
            stamps["metaworld-vla"] = now
        if "platform" in args.sections:
            from benchmarks.platform import bench_platform

            res["platform"] = bench_platform(work, log)
            stamps["platform"] = now
        if "scale" in args.sections:
            from benchmarks.scale import bench_scale

            res["scale"] = bench_scale(work, log)
            stamps["scale"] = now
        if "archsearch" in args.sections:
            from benchmarks.archsearch import bench_archsearch

            res["archsearch"] = bench_archsearch(
                work, log, args.metaworld_episodes, args.rounds, args.per_round,
                args.archsearch_prebuilt,
            )  # fmt: skip
            stamps["archsearch"] = now
    finally:
        # Sections measured before a failure are kept (a rerun with --sections reuses them).
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps({**res, "measured": stamps}, indent=2, default=str))
        shutil.rmtree(work, ignore_errors=True)
    if res["rows"] is None:
        raise SystemExit("bench: the base section was never measured; run with --sections base")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reused = {k: v for k, v in stamps.items() if k not in args.sections}
    write_report(
        res["rows"], res["overhead"], res["startup"], args.out, args.rounds, args.per_round,
        res["quant"], res["prune"], reused, res["targets"], res["eval"], res["remote"],
        res["planner"], res["crash"], res["cache"], res["vla"], res["faults"], res["metaworld"],
        res["metaworld-vla"], res["platform"], res["scale"], res["archsearch"],
    )  # fmt: skip
    results_path.write_text(json.dumps({**res, "measured": stamps}, indent=2, default=str))
    log(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
