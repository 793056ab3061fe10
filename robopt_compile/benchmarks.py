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
"""

from __future__ import annotations

import argparse
import json
import platform
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


def _interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, per_round: int, warmup: int = 5
) -> dict[str, float]:
    """Median latency in ms of each callable, timed in interleaved rounds."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter_ns()
                fn()
                samples[k].append((time.perf_counter_ns() - t) / 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def bench_model(name: str, workdir: Path, rounds: int, per_round: int) -> dict[str, Any]:
    import onnxruntime as ort
    import openvino as ov
    import torch

    from robopt_compile.pipeline import CompileOptions, compile_model
    from robopt_compile.targets import Artifact, get_backend
    from robopt_compile.zoo import load_zoo

    torch.set_num_threads(1)
    row: dict[str, Any] = {"model": name}
    bundles = {}
    for backend in ("onnxruntime", "openvino"):
        out = workdir / f"{name}-{backend}"
        t = time.perf_counter()
        res = compile_model(
            f"zoo:{name}", out, CompileOptions(backend=backend, threads=1), force=True
        )
        row[f"compile_s_{backend}"] = time.perf_counter() - t
        bundles[backend] = (out, res.manifest)
    m_ort = bundles["onnxruntime"][1]
    row["export_cosine"] = m_ort["parity"]["export"]["cosine"]
    row["export_max_abs"] = m_ort["parity"]["export"]["max_abs"]
    row["exporter"] = json.loads((bundles["onnxruntime"][0] / "report.json").read_text())[
        "exporter"
    ]
    row["macs"] = json.loads((bundles["onnxruntime"][0] / "analysis.json").read_text())[
        "summary"
    ].get("macs")

    module, _ = load_zoo(name, seed=0)
    ref_in = dict(np.load(bundles["onnxruntime"][0] / "reference" / "inputs.npz"))
    ref_out = dict(np.load(bundles["onnxruntime"][0] / "reference" / "outputs.npz"))
    t_in = {k: torch.from_numpy(v) for k, v in ref_in.items()}

    # Plain exported ONNX (before robopt's passes) for the vendor-default columns.
    plain = workdir / f"{name}-plain.onnx"
    from robopt_compile.frontend import export_torch

    _, ex_inputs = load_zoo(name, seed=0)
    model_ir, _, _ = export_torch(module, ex_inputs, list(ref_out))
    from robopt_compile import ir as rir

    rir.save(model_ir, plain)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess_default = ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
    core = ov.Core()
    ov_default = core.compile_model(str(plain), "CPU", {"INFERENCE_NUM_THREADS": 1})
    ov_req = ov_default.create_infer_request()

    runners = {}
    for backend, (out, manifest) in bundles.items():
        be = get_backend(backend)
        art = Artifact.from_json(manifest["engine"], out / manifest["engine"]["dir"])
        runners[backend] = be.runner(art, threads=1).__enter__()

    def torch_call() -> Any:
        with torch.no_grad():
            return module(**t_in)

    fns = {
        "torch eager": torch_call,
        "ORT default": lambda: sess_default.run(None, ref_in),
        "robopt ORT": runners["onnxruntime"].bind(ref_in),
        "OV default": lambda: ov_req.infer(ref_in),
        "robopt OV f32": runners["openvino"].bind(ref_in),
    }
    row["p50_ms"] = _interleaved(fns, rounds, per_round)
    # Fidelity of each runtime against torch on the reference inputs (not used in export).
    first = next(iter(ref_out))
    outs = {
        "ORT default": sess_default.run(None, ref_in)[0],
        "robopt ORT": runners["onnxruntime"].infer(ref_in)[first],
        "OV default": np.array(ov_req.infer(ref_in)[ov_default.outputs[0]]),
        "robopt OV f32": runners["openvino"].infer(ref_in)[first],
    }
    row["cosine_vs_torch"] = {k: _cos(ref_out[first], v) for k, v in outs.items()}
    row["max_abs_vs_torch"] = {
        k: float(np.max(np.abs(ref_out[first] - v))) for k, v in outs.items()
    }
    for r in runners.values():
        r.__exit__(None, None, None)
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
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from robopt_compile.bundle import tool_versions

    v = tool_versions()
    tools = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino") if k in v)
    return f"{model}, {platform.machine()}, Python {platform.python_version()}; {tools}"


def write_report(
    rows: list[dict[str, Any]],
    overhead: dict[str, Any],
    startup: dict[str, float],
    out: Path,
    rounds: int,
    per_round: int,
) -> None:
    cols = ["torch eager", "ORT default", "robopt ORT", "OV default", "robopt OV f32"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        "Every figure below was measured in that one run; none is copied from elsewhere.",
        "",
        f"Machine: {_machine()}. One thread per runtime, batch 1, medians of "
        f"{rounds} interleaved rounds x {per_round} runs per runtime. This machine is shared "
        "and noisy: compare ratios within a row, not absolute times across runs.",
        "",
        "## Latency p50 (ms) and speed-up vs torch eager",
        "",
        "| model | GMAC | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        eager = r["p50_ms"]["torch eager"]
        cells = [f"{r['p50_ms'][c]:.3f} ({eager / r['p50_ms'][c]:.2f}x)" for c in cols]
        gmac = f"{r['macs'] / 1e9:.3f}" if r.get("macs") else "?"
        lines.append(f"| {r['model']} | {gmac} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`OV default` is OpenVINO with no options: on CPUs with AVX-512 BF16 or AMX it runs in "
        "bf16, so it is not an fp32 engine. Its fidelity is in the next table. robopt's fp32 "
        "engines pin f32 (`INFERENCE_PRECISION_HINT=f32`).",
        "",
        "## Fidelity vs torch on reference inputs not used during export",
        "",
        "| model | exporter | export parity cosine | export max abs err | "
        + " | ".join(f"{c} cosine" for c in cols[1:])
        + " |",
        "|---|---|---|---|" + "---|" * (len(cols) - 1),
    ]
    for r in rows:
        cells = [f"{r['cosine_vs_torch'][c]:.7f}" for c in cols[1:]]
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['export_cosine']:.8f} | "
            f"{r['export_max_abs']:.2e} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Harness overhead (`robopt-bench --overhead`)", ""]
    if "error" in overhead:
        lines.append(f"Not measured: {overhead['error']}")
    else:
        lines.append("```")
        lines.append(json.dumps(overhead.get("overhead", overhead), indent=2))
        lines.append("```")
    lines += [
        "",
        "## Start-up (`--help`, median of 7, includes Python start)",
        "",
        "| command | seconds |",
        "|---|---|",
        *[f"| {k} --help | {v:.3f} |" for k, v in startup.items()],
        "",
        "## Compile time (s, whole `robopt-compile` pipeline incl. export and checks)",
        "",
        "| model | onnxruntime | openvino |",
        "|---|---|---|",
        *[
            f"| {r['model']} | {r['compile_s_onnxruntime']:.1f} | {r['compile_s_openvino']:.1f} |"
            for r in rows
        ],
        "",
        "![latency](bench_latency.png)",
        "",
    ]
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
        ax.bar(range(len(cols)), vals, color=["#888", "#4a90d9", "#1f5fa8", "#e8a33d", "#b5651d"])
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
        ax.set_title(r["model"])
        ax.set_ylabel("p50 latency (ms, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--models", nargs="*", default=list(ZOO_MODELS))
    ap.add_argument("--overhead-runs", type=int, default=2000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="robopt-bench-"))
    rows = []
    for name in args.models:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(name, work, args.rounds, args.per_round))
    print("[bench] harness overhead ...", file=sys.stderr, flush=True)
    overhead = bench_harness_overhead(work / "visuomotor-cnn-onnxruntime", args.overhead_runs)
    startup = bench_startup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(rows, overhead, startup, args.out, args.rounds, args.per_round)
    (args.out.parent / "bench_results.json").write_text(
        json.dumps({"rows": rows, "overhead": overhead, "startup": startup}, indent=2, default=str)
    )
    print(f"[bench] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
