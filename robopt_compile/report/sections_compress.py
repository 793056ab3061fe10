"""Sections of ``report.html`` about what quantization and compression cost.

Quantization (scheme, data, mixed precision, held-out figures), compression (pruning and
low-rank steps) and per-layer quantization sensitivity. Each section is a function
``(BundleData, Plots) -> HTML``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robopt_compile.report.data import BundleData
from robopt_compile.report.format import (
    Col,
    Raw,
    badge,
    big,
    dicts,
    dig,
    esc,
    fnum,
    h3,
    isnum,
    kv_table,
    mb,
    missing,
    note,
    short,
    table,
)
from robopt_compile.report.plots import Plots, barh, mpl_text

_FIGURE_COLS: list[Col] = [
    ("figures", lambda x: x[0], ""),
    ("drop", lambda x: dig(x[1], "drop"), ".4g"),
    ("metric", lambda x: dig(x[1], "metric"), ""),
    ("cosine", lambda x: dig(x[1], "cosine"), ".6f"),
    ("centred cosine", lambda x: dig(x[1], "centred_cosine"), ".4f"),
    ("max abs", lambda x: dig(x[1], "max_abs"), ".3g"),
    ("samples", lambda x: dig(x[1], "samples"), "n"),
]


_TASK_COLS: list[Col] = [
    ("task return", lambda x: dig(x[1], "closed_loop.return"), ".4g"),
    ("task success", lambda x: dig(x[1], "closed_loop.success"), "%0"),
]


def _figure_table(figs: list[tuple[str, Any]]) -> str:
    task = any(isinstance(dig(f, "closed_loop"), dict) for _, f in figs)
    return table(figs, _FIGURE_COLS + (_TASK_COLS if task else []))


def section_quantization(d: BundleData, plots: Plots) -> str:
    """How the bundle was quantized and what it cost on held-out data."""
    q = dig(d.report, "quantization")
    if not isinstance(q, dict):
        return missing(
            f"Not present: the bundle was compiled at {d.manifest.get('precision', 'fp32')} "
            "without quantization (robopt-compile ... --precision int8 --calibration DATA "
            "quantizes)."
        )
    pr, data, mp = q.get("pass_report") or {}, q.get("data") or {}, q.get("mixed_precision") or {}
    keys = ("format", "method", "activations", "weights", "per_channel")
    fp32 = mp.get("fp32_nodes") or []
    rows: list[tuple[str, Any]] = [
        ("requested precision", q.get("requested_precision")),
        ("quantizer", f"{q.get('pass', '?')}: {pr.get('tool', '')} {pr.get('tool_version', '')}"),
        ("scheme", ", ".join(f"{k} {pr[k]}" for k in keys if k in pr)),
        ("data", f"{data.get('source', '?')}: {data.get('calibration_count', '?')} calibration, "
                 f"{data.get('holdout_count', '?')} held-out samples"
                 + (" (RANDOM: figures meaningless)" if data.get("random") else "")),
        ("evaluated in", q.get("evaluated_in")),
        ("accuracy bound", f"{q.get('metric', '?')} <= {q.get('max_accuracy_drop', '?')}"),
        ("weights", f"{fnum(mb(pr.get('weight_bytes_before')))} MB -> "
                    f"{fnum(mb(pr.get('weight_bytes_after')))} MB"
                    if "weight_bytes_before" in pr else None),
        ("mixed precision", f"{'met' if mp.get('met') else 'not met'} with {len(fp32)} layer(s) "
                            f"in fp32 after {mp.get('evaluations', '?')} evaluations: "
                            f"{', '.join(fp32) or '-'}" if mp else None),
        ("result", Raw(badge(False, no="rolled back to fp32") + ": "
                       + esc(q.get("rollback_reason", ""))) if q.get("rolled_back")
         else badge(True, "kept")),
    ]  # fmt: skip
    out = [kv_table(rows)]
    out += [note(str(q[k])) for k in ("data_note", "evaluation_note", "mixed_precision_note")
            if q.get(k)]  # fmt: skip
    figs = [("full quantization", q.get("full_quantization"))]
    if isinstance(q.get("surgery_requantization"), dict):
        figs.append(("requantized for surgery", dig(q, "surgery_requantization.figures")))
    out.append(_figure_table([*figs, ("final (the bundle)", q.get("final"))]))
    if mp.get("steps"):
        out.append(h3("Mixed-precision search"))
        out.append(table(mp["steps"], [("layers in fp32", "fp32_nodes", "n"),
                                       ("held-out drop", "drop", ".4g")]))  # fmt: skip
    return "".join(out)


def section_compression(d: BundleData, plots: Plots) -> str:
    """Pruning and low-rank steps: what each saved and what it cost."""
    c = dig(d.report, "compression")
    if not isinstance(c, dict):
        return missing(
            "Not present: no pruning or low-rank factorization (robopt-compile ... --prune "
            "channels:0.5 or --low-rank energy=0.95 compresses)."
        )
    bound = c.get("max_accuracy_drop")
    out = [kv_table([
        ("metric", c.get("metric")),
        ("bound", bound if bound is not None else "none (steps are kept whatever they cost)"),
        ("data", f"{dig(c, 'data.source', '?')}: {dig(c, 'data.holdout_count', '?')} held-out "
                 "samples"),
    ])]  # fmt: skip
    if c.get("data_note"):
        out.append(note(str(c["data_note"])))

    def change(key: str) -> Callable[[Any], str]:
        def get(s: Any) -> str:
            t = dig(s, "report.totals", {})
            return f"{big(t[key + '_before'])} -> {big(t.get(key + '_after'))}" if t.get(
                key + "_before") else "–"  # fmt: skip

        return get

    def distilled(s: Any) -> str:
        steps = dig(s, "distillation.steps")
        before = fnum(dig(s, "figures_before_distillation.drop"))
        rounds = dig(s, "distillation.onpolicy.rounds", [])
        on = ""
        if rounds:  # on-policy rounds: the student's own success in each
            on = ", on-policy " + " / ".join(f"{r['student_success']:.0%}" for r in rounds)
        return f"{steps} steps (from {before}{on})" if steps is not None else "–"

    steps = dicts(c.get("steps"))
    out.append(table(steps, [
        ("step", "pass", ""), ("MACs", change("macs"), ""), ("params", change("params"), ""),
        ("drop before", "figures_before.drop", ".4g"), ("drop after", "figures.drop", ".4g"),
        ("centred cosine", "figures.centred_cosine", ".4f"), ("distilled", distilled, ""),
        ("result", lambda s: not s.get("rolled_back"), "ok")]))  # fmt: skip
    for s in steps:
        if s.get("rollback_reason"):
            out.append(note(str(s["rollback_reason"])))
        if dig(s, "report.note"):
            out.append(note(f"{s.get('pass')}: {s['report']['note']}"))
    if isinstance(c.get("final"), dict):
        out.append(_figure_table([("final (the bundle)", c["final"])]))
    for s in steps:
        if s.get("pass") == "arch-search" and isinstance(s.get("report"), dict):
            out.append(_arch_search(s["report"], plots))
    return "".join(out)


def _arch_search(r: dict[str, Any], plots: Plots) -> str:
    """The architecture search: its greedy steps and finalists, and the latency/error plot."""
    t = r.get("table") or {}
    out = [h3("Architecture search (--search-arch)"), kv_table([
        ("budget", f"{fnum(r.get('budget_ms'))} ms (full network {fnum(t.get('full_ms'))} ms, "
                   f"ONNX Runtime, {t.get('threads')} thread(s))"),
        ("latency table", f"{t.get('entries')} entries, {t.get('measured')} timed, "
                          f"{t.get('reused')} from the store"),
        ("candidates", f"{dig(r, 'candidates.scored')} scored, "
                       f"{dig(r, 'candidates.from_store')} from the store"),
        ("score", r.get("score")), ("finalists by", r.get("finalists_by")),
        ("time", f"{fnum(r.get('seconds'))} s"),
    ] + [("retarget", f"every finalist timed over the budget after step {a.get('after_step')}:"
                      f" the table aimed at {fnum(a.get('aim_ms'))} ms"
                      + (f" ({a['stopped']})" if a.get("stopped") else ""))
         for a in dicts(r.get("retargets"))])]  # fmt: skip
    steps, fins = dicts(r.get("steps")), dicts(r.get("finalists"))
    out.append(table(steps, [("change", "change", ""), ("what", "what", ""),
                             ("predicted ms", "predicted_ms", ".3g"), ("error", "error", ".4g"),
                             ("distilled", "refined", "ok")]))  # fmt: skip
    cols: list[Col] = [("predicted ms", "predicted_ms", ".3g"),
                       ("measured ms", "measured_ms", ".3g"), ("error", "error", ".4g"),
                       ("success", "success", ".2f"), ("on the front", "pareto", "ok")]  # fmt: skip
    out.append(table(fins, cols))
    if steps:

        def draw(fig: Any) -> None:
            ax = fig.subplots()
            ax.plot([x["predicted_ms"] for x in steps], [x["error"] for x in steps], "o-",
                    color="#4c72b0", label="greedy steps (predicted ms)")  # fmt: skip
            ax.plot([f["measured_ms"] for f in fins], [f["error"] for f in fins], "s",
                    color="#c44e52", label="finalists (measured ms, distilled)")  # fmt: skip
            ax.axvline(r.get("budget_ms", 0), color="#333", lw=0.8, ls="--")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel(mpl_text("relative L2 on the search's validation share"))
            ax.invert_xaxis()
            ax.legend(fontsize=8)

        out.append(plots.svg(draw, 3.2, "architecture search: latency vs error"))
    return "".join(out)


def section_sensitivity(d: BundleData, plots: Plots) -> str:
    """How much each layer's quantization costs alone (the sensitivity sweep)."""
    q = dig(d.report, "quantization")
    if not isinstance(q, dict):
        return missing("Not measured: the bundle is not quantized, so no layer has a sensitivity.")
    rows = [r for r in dicts(q.get("layers")) if isnum(r.get("sensitivity"))]
    if not rows:
        return missing(
            "Not measured: the bound was met with every layer quantized, so no sweep ran; "
            "recompile with --measure-sensitivity to measure each layer."
        )
    rows.sort(key=lambda r: (-r["sensitivity"], str(r.get("node"))))
    metric = q.get("metric", "drop")
    top = rows[:20]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        colors = ["#c44e52" if r.get("precision") == "fp32" else "#4c72b0" for r in top]
        barh(ax, [short(f"{r.get('node')} ({r.get('op_type')})", 48) for r in top],
             [r["sensitivity"] for r in top], color=colors, fmt=".2g")  # fmt: skip
        ax.axvline(0, color="#333", lw=0.8)
        ax.set_xlabel(mpl_text(f"fall in held-out {metric} when the layer alone is fp32"))
        ax.set_title("Per-layer quantization sensitivity (red: kept in fp32)")

    return "".join([
        note(f"Sensitivity = full-quantization drop minus the drop with only that layer back in "
             f"fp32 ({metric}, held-out data); {len(rows)} layers measured, the top "
             f"{len(top)} plotted."),
        plots.svg(draw, 0.22 * len(top) + 1.1, "per-layer sensitivity"),
        table(rows, [("layer", "node", ""), ("op", "op_type", ""), ("precision", "precision", ""),
                     ("sensitivity", "sensitivity", ".4g"),
                     ("drop if only this fp32", "drop_with_only_this_fp32", ".4g")]),
    ])  # fmt: skip
