"""Run every analysis pass on a model and summarise the facts for people and the planner.

``analyze`` runs the six analysis passes through ``PassRunner`` (so each is timed like any
other pass) and adds a ``summary``; ``analyze_source`` loads a source and runs the transform
passes first (``robopt-compile analyze``); ``format_table`` renders the facts as plain text
with the standard library only, so it works in any terminal and in CI logs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

    from robopt_compile.compile.frontend import SourceModel
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.stages import Progress
    from robopt_compile.hwprofiles import HardwareProfile

MB = 1e6  # reports use decimal megabytes
_NUMERIC = re.compile(r"^-?[\d.,]+ ?[kMG%]?(?: ?[a-zA-Z]+)?$")


def analyze(
    model: ir.Model,
    profile: HardwareProfile,
    precision: str = "fp32",
    threads: int = 1,
    batch: int = 1,
    backends: Sequence[str] = ("onnxruntime", "openvino"),
) -> dict[str, Any]:
    """Facts from every analysis pass, keyed by pass name, plus ``summary`` and ``timing``."""
    from robopt_compile.passes.analysis.backend_support import BackendSupportPass
    from robopt_compile.passes.analysis.flops import FlopsPass
    from robopt_compile.passes.analysis.memory import ActivationMemoryPass
    from robopt_compile.passes.analysis.op_histogram import OpHistogramPass
    from robopt_compile.passes.analysis.params import ParamsPass
    from robopt_compile.passes.analysis.roofline import RooflinePass
    from robopt_compile.passes.base import PassRunner, TimingInstrument

    timing = TimingInstrument()
    runner = PassRunner([timing])
    runner.run(
        [
            OpHistogramPass(),
            ParamsPass(),
            FlopsPass(batch=batch),
            ActivationMemoryPass(batch=batch),
            RooflinePass(profile, precision=precision, threads=threads, batch=batch),
            BackendSupportPass(backends=tuple(backends)),
        ],
        model,
    )
    facts = dict(runner.facts)
    facts["summary"] = summarize(facts)
    facts["timing"] = [r.to_json() for r in timing.records]
    return facts


def analyze_source(
    source: str, opts: CompileOptions, progress: Progress | None = None
) -> tuple[HardwareProfile, SourceModel, dict[str, Any]]:
    """``robopt-compile analyze``: export and check ``source`` as a compile does, run the
    transform passes (``--simplify``, ``--dump-ir``), then every analysis pass on the result for
    ``opts.target`` at ``opts.precision``. Returns (profile, the loaded source, the facts)."""
    import time

    from robopt_compile.compile.frontend import load_source
    from robopt_compile.compile.resolve import build_passes, check_options, resolve_profile
    from robopt_compile.passes.base import DumpIRInstrument, PassRunner

    progress = progress or (lambda stage, event, seconds: None)
    profile = resolve_profile(opts)
    check_options(opts)
    progress("export", "start", 0)
    started = time.perf_counter()
    src = load_source(
        source,
        dynamic_batch=opts.dynamic_batch,
        opset=opts.opset,
        seed=opts.seed,
        check_parity=opts.check_parity,
        reference_inputs=opts.reference_inputs,
    )
    progress("export", "done", time.perf_counter() - started)
    instruments = [DumpIRInstrument(opts.dump_ir)] if opts.dump_ir else []
    model = PassRunner(instruments).run(build_passes(opts), src.model)
    facts = analyze(
        model, profile, precision=opts.precision, threads=opts.threads or profile.cpu_cores
    )
    return profile, src, facts


def summarize(facts: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers; the estimated ones say so and name their method."""
    flops, params = facts["flops"], facts["params"]
    memory, roofline = facts["memory"], facts["roofline"]
    backends = facts.get("backend-support", {})
    return {
        "nodes": facts["op-histogram"]["total_nodes"],
        "macs": flops["totals"]["macs"],
        "flops": flops["totals"]["flops"],
        "unknown_cost_nodes": flops["totals"]["unknown_nodes"],
        "params": params["param_count"],
        "weight_mb": params["weight_bytes"] / MB,
        "peak_activation_mb": memory["peak_live_bytes"] / MB,
        "estimated_latency_ms": roofline["latency_ms"],
        "profile": roofline["profile"],
        "precision": roofline["precision"],
        "threads": roofline["threads"],
        "batch": roofline["batch"],
        "estimates": {
            "peak_activation_mb": memory["method"],
            "estimated_latency_ms": roofline["method"],
        },
        "unsupported_ops": {
            name: (len(b["unsupported"]) if b.get("checked") else None)
            for name, b in backends.items()
        },
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        out = []
        for i, c in enumerate(row):
            numeric = _NUMERIC.match(c) is not None
            out.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def _num(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:g}"


def format_table(facts: dict[str, Any], top: int = 10) -> str:
    """Summary, the ``top`` nodes by estimated time, and the op histogram, as plain text."""
    s = facts.get("summary") or summarize(facts)
    lines = [
        f"Model analysis (profile {s['profile']}, {s['precision']}, {s['threads']} thread(s), "
        f"batch {s['batch']})",
        "",
    ]
    summary_rows = [
        ("nodes", s["nodes"]),
        ("MACs", _num(s["macs"])),
        ("FLOPs", _num(s["flops"])),
        ("parameters", _num(s["params"])),
        ("weights", f"{s['weight_mb']:.3f} MB"),
        ("peak activations (estimate)", f"{s['peak_activation_mb']:.3f} MB"),
        ("latency (roofline estimate)", f"{s['estimated_latency_ms']:.4f} ms"),
    ]
    if s["unknown_cost_nodes"]:
        summary_rows.append(("nodes with unknown cost", s["unknown_cost_nodes"]))
    for backend, n in s["unsupported_ops"].items():
        summary_rows.append((f"unsupported on {backend}", "not checked" if n is None else n))
    lines += _table(("summary", "value"), summary_rows)

    nodes = [r for r in facts["roofline"]["nodes"] if r.get("time_ms") is not None]
    nodes.sort(key=lambda r: -r["time_ms"])
    total = sum(r["time_ms"] for r in nodes) or 1.0
    rows = [
        (
            r["name"],
            r["op_type"],
            _num(r["flops"]),
            _num(r["bytes_moved"]),
            f"{r['time_ms'] * 1e3:.2f}",
            f"{100 * r['time_ms'] / total:.1f}%",
            r["bound"],
        )
        for r in nodes[:top]
    ]
    lines += ["", f"Top {len(rows)} nodes by estimated time"]
    lines += _table(("node", "op", "FLOPs", "bytes", "time_us", "share", "bound"), rows)

    ops = facts["op-histogram"]["ops"]
    lines += ["", "Operators"]
    lines += _table(
        ("op", "count", "opset"),
        [(o["key"], o["count"], "" if o["opset"] is None else o["opset"]) for o in ops],
    )
    return "\n".join(lines) + "\n"
