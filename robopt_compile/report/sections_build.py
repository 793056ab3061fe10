"""Sections of ``report.html`` about what the compile built.

The summary (verdict, key figures, criteria), the graphs of a multi-graph bundle, the compile
passes and stages, the model analysis with its roofline estimate, and the tool versions.
Each section is a function ``(BundleData, Plots) -> HTML``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from robopt_compile.report.checks import pending_engine_check, verdict
from robopt_compile.report.data import BundleData, bench_results
from robopt_compile.report.format import (
    Col,
    Raw,
    badge,
    big,
    dicts,
    dig,
    esc,
    estimate,
    fnum,
    h3,
    isnum,
    kv_table,
    mb,
    missing,
    note,
    pct,
    table,
    warn_badge,
)
from robopt_compile.report.plots import Plots, barh, mpl_text


def section_summary(d: BundleData, plots: Plots) -> str:
    """The verdict, the bundle's key figures and the criteria it was judged by."""
    m = d.manifest
    status, line, checks = verdict(d)
    cls = {"PASS": "ok", "PENDING": "pending"}.get(status, "bad")
    out = [f'<div class="verdict {cls}">{esc(line)}</div>']
    if not plots.enabled:
        out.append(
            note("Plots are left out: matplotlib is not installed (pip install matplotlib).")
        )
    eng = dig(m, "parity.engine", {})
    exp = dig(m, "parity.export", {})
    s = dig(d.analysis, "summary") or dig(d.report, "summary", {})
    cfg = dig(m, "engine.config", {})
    precision = str(m.get("precision", "?"))
    if m.get("requested_precision") not in (None, m.get("precision")):
        precision += f" (requested {m['requested_precision']})"
    engine = f"{m.get('backend', '?')}: {', '.join(dig(m, 'engine.files', []))}"
    engine += " (deferred build, completed on the device)" if cfg.get("deferred") else ""
    engine += " (cross-compiled for the board)" if cfg.get("cross_compiled") else ""
    ins = ", ".join(
        f"{i.get('name')}{i.get('shape')} {i.get('dtype')}" for i in m.get("inputs", [])
    )
    outs = ", ".join(f"{o.get('name')}{o.get('shape')}" for o in m.get("outputs", []))
    rows: list[tuple[str, Any]] = [
        ("model", f"{dig(m, 'model.name', '?')} (source {dig(m, 'model.source', '?')})"),
        ("target", f"{dig(m, 'target.profile', '?')}: {dig(m, 'target.description', '')}"),
        ("engine", engine),
        ("precision", precision),
        ("inputs", ins),
        ("outputs", outs),
    ]
    if exp:
        rows.append(("export parity", f"cosine {fnum(exp.get('cosine'), '.7f')}, max abs "
                     f"{fnum(exp.get('max_abs'), '.2e')} "
                     f"({dig(d.report, 'exporter', '?')} exporter)"))  # fmt: skip
    if eng:
        checked = eng.get("engine_checked", True)
        where = "" if checked else f" ({pending_engine_check(d) or 'ONNX checked here'})"
        text = (
            f" cosine {fnum(eng.get('cosine'), '.7f')}, max abs {fnum(eng.get('max_abs'), '.2e')}"
        )
        rows.append(
            (
                "engine fidelity" if checked else "ONNX fidelity",
                Raw(badge(eng.get("passed")) + esc(text + where)),
            )
        )
    if s:
        rows.append(("compute", f"{big(s.get('macs'))}MAC, {big(s.get('params'))} params, "
                     f"{fnum(s.get('weight_mb'), '.3g')} MB weights"))  # fmt: skip
        rows.append(("latency (roofline)", estimate(
            f"{fnum(s.get('estimated_latency_ms'), '.3g')} ms",
            "estimate from datasheet peaks, not a measurement")))  # fmt: skip
    for name, r in bench_results(d):
        rows.append((f"latency ({name})", f"p50 {fnum(dig(r, 'latency.p50_ms'))} ms, p99 "
                     f"{fnum(dig(r, 'latency.p99_ms'))} ms over {dig(r, 'latency.n', '?')} runs, "
                     f"{dig(r, 'settings.threads', 'default')} thread(s), "
                     f"{dig(r, 'machine.cpu_model', '?')}"))  # fmt: skip
    for name, r in d.results_of("layers"):
        rows.append((f"per-layer total ({name})", f"{fnum(r.get('total_ms'))} ms in "
                     f"{len(dicts(r.get('layers')))} nodes "
                     f"({r.get('backend', '?')} profiler)"))  # fmt: skip
    q = dig(d.report, "quantization")
    if isinstance(q, dict):
        rows.append(("quantization", f"{q.get('pass', '?')}: held-out {q.get('metric', '?')} "
                     f"{fnum(dig(q, 'final.drop'))} (bound {q.get('max_accuracy_drop')})"
                     + ("; ROLLED BACK to fp32" if q.get("rolled_back") else "")))  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        rows.append((f"closed loop ({name})", "; ".join(
            f"{e.get('label')}: success {pct(dig(e, 'success.rate'), 0)}, return "
            f"{fnum(dig(e, 'return.mean'))}" for e in dicts(r.get("engines")))))  # fmt: skip
    # No folder name: a bundle restored from the build cache keeps its report.
    rows.append(("bundle", f"written {m.get('created_utc', '?')} by robopt "
                 f"{m.get('robopt_version', '?')}"))  # fmt: skip
    out.append(kv_table(rows))
    if checks:
        out.append(h3("Criteria"))
        result: Col = (
            "result",
            lambda c: badge(c.ok) if c.ok is not None else warn_badge("warning"),
            "",
        )
        out.append(table(checks, [("check", lambda c: c.name, ""), result,
                                  ("detail", lambda c: c.detail, "")]))  # fmt: skip
    if d.problems:
        out.append(h3("Unreadable files"))
        out.append("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in d.problems) + "</ul>")
    return "".join(out)


def section_graphs(d: BundleData, plots: Plots) -> str:
    """A multi-graph bundle (a VLA): each graph's precision, weights and check against torch;
    fidelity in action terms; the action error per dimension."""
    graphs = dicts(d.manifest.get("graphs"))
    if not graphs:
        return note("A single-graph bundle (no driver loop).")
    checks = dig(d.report, "graph_checks", {}) or {}
    rows = [(g.get("name"), g.get("precision"), (g.get("weight_bytes") or 0) / 2**20,
             dig(checks, f"{g.get('name')}.cosine"),
             "pass" if dig(checks, f"{g.get('name')}.passed") else "differs")
            for g in graphs]  # fmt: skip
    cols: list[Col] = [
        ("graph", lambda r: r[0], ""),
        ("precision", lambda r: r[1], ""),
        ("weights MiB", lambda r: r[2], ".1f"),
        ("cosine vs torch", lambda r: r[3], ".6f"),
        ("check", lambda r: r[4], ""),
    ]
    kind = dig(d.manifest, "driver.kind", "?")
    out = [
        note(f"Driver {kind}: one control step runs the graphs below in a loop."),
        table(rows, cols),
    ]
    f = dig(d.manifest, "parity.actions", {}) or {}
    if f:
        out.append(kv_table([
            ("action tokens", f"{pct(f.get('token_agreement'))} agree with the fp32 torch model "
                              f"({f.get('observations')} held-out observations; first token "
                              f"{pct(f.get('first_token_agreement'))})"),
            ("action L2", f"mean {fnum(dig(f, 'action_l2.mean'))}, "
                          f"max {fnum(dig(f, 'action_l2.max'))}"),
            ("gripper flips", f.get("gripper_flips")),
        ]))  # fmt: skip
        mae = f.get("action_mae_per_dim") or []
        if mae and plots.enabled:

            def draw(fig: Any) -> None:
                ax = fig.subplots()
                barh(ax, [f"dim {i}" for i in range(len(mae))], mae)
                ax.set_xlabel("mean absolute action error vs fp32 torch")

            out.append(plots.svg(draw, 0.22 * len(mae) + 1.1, "action error per dimension"))
    return "".join(out)


def section_passes(d: BundleData, plots: Plots) -> str:
    """What the compile ran: exporter, passes, simplification, stage and analysis times."""
    r = d.report
    if not r:
        return missing("Not present: report.json is missing; recompile the bundle.")
    out = [note(f"Exported with the {r['exporter']} exporter from {r.get('source', '?')}.")
           if r.get("exporter") else ""]  # fmt: skip
    out += [note(str(n)) for n in r.get("notes") or []]
    if r.get("passes"):
        runs = [p for p in r["passes"] if isinstance(p, dict)]
        total = Counter(p.get("name") for p in runs)
        seen: Counter[Any] = Counter()
        rows = []
        for p in runs:  # a pass that ran twice says which run each row is (report unchanged)
            name = p.get("name")
            seen[name] += 1
            label = f"{name} (run {seen[name]} of {total[name]})" if total[name] > 1 else name
            rows.append({**p, "name": label})
        if dig(r, "quantization.surgery_requantization") and any(v > 1 for v in total.values()):
            out.append(note("The quantizer ran twice: the second run requantized with the "
                            "options the per-layer (mixed-precision) search needs; the "
                            "Quantization section says which one the engine kept."))  # fmt: skip
        out.append(table(rows, [("pass", "name", ""), ("seconds", "seconds", ".3f"),
                                       ("modified", "modified", ""),
                                       ("nodes before", "nodes_before", "n"),
                                       ("nodes after", "nodes_after", "n")]))  # fmt: skip
    simp = r.get("simplify")
    if isinstance(simp, dict):
        delta = simp.get("op_delta") or {}
        out.append(note(f"simplify: {simp.get('tool', '?')} {simp.get('tool_version', '')}, "
                        f"nodes {simp.get('nodes_before', '?')} -> {simp.get('nodes_after', '?')}"
                        + (f", op changes {json.dumps(delta, sort_keys=True)}"
                           if delta else "")))  # fmt: skip
    stages = [(k, v) for k, v in (r.get("stage_seconds") or {}).items() if isnum(v)]
    if stages:
        out.append(h3("Stages"))
        out.append(
            table(stages, [("stage", lambda s: s[0], ""), ("seconds", lambda s: s[1], ".3f")])
        )

        def draw(fig: Any) -> None:
            ax = fig.subplots()
            barh(ax, [k for k, _ in stages], [v for _, v in stages], fmt=".2f")
            ax.set_xlabel("seconds")
            ax.set_title("Compile stages (wall time)")

        out.append(plots.svg(draw, 0.3 * len(stages) + 1.0, "compile stage times"))
    if dig(d.analysis, "timing"):
        out.append(h3("Analysis passes"))
        out.append(
            table(d.analysis["timing"], [("pass", "name", ""), ("seconds", "seconds", ".4f")])
        )
    return "".join(out)


def section_analysis(d: BundleData, plots: Plots) -> str:
    """The static analysis: size, compute, memory, roofline estimate, operators."""
    a = d.analysis
    if not a:
        return missing("Not present: analysis.json is missing; recompile the bundle.")
    s, roof = a.get("summary") or {}, a.get("roofline") or {}
    unsupported = ", ".join(f"{b}: {'not checked' if n is None else n}"
                            for b, n in (s.get("unsupported_ops") or {}).items())  # fmt: skip
    out = [
        kv_table([
            ("nodes", s.get("nodes")),
            ("MACs / FLOPs", f"{big(s.get('macs'))} / {big(s.get('flops'))}"),
            ("parameters", big(s.get("params"))),
            ("weights", f"{fnum(s.get('weight_mb'))} MB"),
            ("peak activations", estimate(f"{fnum(s.get('peak_activation_mb'))} MB", "estimate")),
            ("memory footprint", estimate(f"{fnum(mb(dig(a, 'memory.footprint_bytes')))} MB")),
            ("latency (roofline)", estimate(
                f"{fnum(roof.get('latency_ms'))} ms on {roof.get('profile', '?')} at "
                f"{roof.get('precision', '?')}, {roof.get('threads', '?')} thread(s): "
                f"{roof.get('compute_bound_nodes', '?')} compute-bound, "
                f"{roof.get('memory_bound_nodes', '?')} memory-bound nodes", "estimate")),
            ("unsupported ops", unsupported),
        ])
    ]  # fmt: skip
    if roof.get("method"):
        out.append(note(f"Roofline method: {roof['method']}"))
    nodes = [n for n in dicts(roof.get("nodes")) if isnum(n.get("time_ms"))]
    nodes.sort(key=lambda n: (-n["time_ms"], str(n.get("name"))))
    total = sum(n["time_ms"] for n in nodes) or 1.0
    if nodes:
        out.append(h3(f"Top {min(10, len(nodes))} nodes by estimated time"))
        out.append(table(nodes[:10], [
            ("node", "name", ""), ("op", "op_type", ""), ("FLOPs", "flops", "big"),
            ("bytes moved", "bytes_moved", "big"),
            ("estimate µs", lambda n: n["time_ms"] * 1e3, ".3g"),
            ("share", lambda n: n["time_ms"] / total, "%"), ("bound", "bound", "")]))  # fmt: skip
        out.append(_roofline_plot(plots, roof, nodes))
    by_op = dig(a, "flops.by_op", {})
    if dig(a, "op-histogram.ops"):
        out.append(h3("Operators"))
        out.append(table(a["op-histogram"]["ops"], [
            ("op", "key", ""), ("count", "count", "n"),
            ("MACs", lambda o: dig(by_op, f"{o.get('key')}.macs"), "big")]))  # fmt: skip
    return "".join(out)


def _roofline_plot(plots: Plots, roof: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    peak, bw = roof.get("peak_gops"), roof.get("bandwidth_gbs")
    pts = [
        (n["intensity_flops_per_byte"], n["flops"] / (n["time_ms"] * 1e6), n.get("bound"))
        for n in nodes
        if isnum(n.get("intensity_flops_per_byte")) and n["intensity_flops_per_byte"] > 0
        and isnum(n.get("flops")) and n["flops"] > 0 and n["time_ms"] > 0
    ]  # fmt: skip
    if not pts or not (isnum(peak) and isnum(bw) and peak > 0 and bw > 0):
        return ""

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        xs = [p[0] for p in pts] + [peak / bw]
        lo, hi = min(xs) / 2, max(xs) * 2
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(peak, bw * x) for x in grid], color="#333", lw=1.2, label="roof")
        for bound, color in (("compute", "#c44e52"), ("memory", "#4c72b0")):
            sel = [p for p in pts if p[2] == bound]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=12, color=color,
                           alpha=0.7, label=f"{bound}-bound nodes")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
               ylabel="attainable GFLOP/s")  # fmt: skip
        ax.set_title(mpl_text(f"Roofline estimate: {roof.get('profile')} "
                              f"({roof.get('precision')}), "
                              f"peak {peak:.4g} GOP/s, {bw:.4g} GB/s"))  # fmt: skip
        ax.legend(loc="lower right", fontsize=7.5)

    return plots.svg(draw, 3.4, "roofline estimate", "Each node at its estimated attainable rate: "
                     "estimates from the board profile, not measurements.")  # fmt: skip


def section_versions(d: BundleData, plots: Plots) -> str:
    """The tools the engine was built with and the runtimes it was measured in."""
    tv = d.manifest.get("tool_versions") or {}
    out = [table(sorted(tv.items()), [("tool (at build)", lambda x: x[0], ""),
                                      ("version", lambda x: x[1], "")])
           if tv else missing("Not present: the manifest lists no tool versions.")]  # fmt: skip
    built = {
        k: v for k, v in dig(d.manifest, "engine.config", {}).items() if k.endswith("_version")
    }
    if built:
        out.append(note("Engine built with " + ", ".join(f"{k} {v}" for k, v in built.items())))
    bench = bench_results(d)
    if bench:
        out.append(table(bench, [("measured in", lambda x: x[0], "")] + [
            (h, lambda x, k=k: dig(x[1], f"machine.{k}"), "")
            for h, k in (("runtime", "runtime"), ("version", "runtime_version"),
                         ("python", "python"), ("numpy", "numpy"),
                         ("platform", "platform"))]))  # fmt: skip
    return "".join(out)
