"""Sections of ``report.html`` about how the optimized policy behaves.

Accuracy against latency for every candidate with both figures, closed-loop task evaluation
(episodes, paired tests, criteria) and open-loop fidelity on recorded observations. Each
section is a function ``(BundleData, Plots) -> HTML``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from robopt_compile.report.data import BundleData, bench_results, read_json
from robopt_compile.report.format import (
    Col,
    Raw,
    badge,
    dicts,
    dig,
    esc,
    fnum,
    h3,
    is_pair,
    isnum,
    kv_table,
    missing,
    note,
    pct,
    success_text,
    table,
    x100,
)
from robopt_compile.report.plots import Plots, mpl_text


def _bundle_accuracy(report: dict[str, Any] | None, precision: Any) -> tuple[float, str] | None:
    """(held-out drop vs the fp32 model, metric) of a bundle from its report.json, if it has
    one figure: quantized or compressed (not both: they are measured against different
    models), or the uncompressed fp32 model itself (0)."""
    if not report:
        return None
    q, c = report.get("quantization"), report.get("compression")
    q_on = isinstance(q, dict) and not q.get("rolled_back")
    c_on = isinstance(c, dict) and isinstance(c.get("final"), dict)
    if q_on and c_on:
        return None
    if q_on and isnum(dig(q, "final.drop")):
        return float(q["final"]["drop"]), str(q.get("metric", "relative_l2"))
    if c_on and isnum(dig(c, "final.drop")):
        return float(c["final"]["drop"]), str(c.get("metric", "relative_l2"))
    if precision == "fp32" and not q_on and not c_on:
        return 0.0, str(dig(q, "metric", "relative_l2"))
    return None


@dataclass
class _Point:
    label: str
    latency_ms: float
    value: float
    ci: Sequence[float] | None = None


def _accuracy_points(d: BundleData) -> dict[str, list[_Point]]:
    """Accuracy vs latency points, grouped by accuracy measure (one plot panel each)."""
    groups: dict[str, list[_Point]] = {}

    def add(group: str, label: Any, lat: Any, val: Any, ci: Any = None) -> None:
        pts = groups.setdefault(group, []) if isnum(lat) and isnum(val) else []
        if isnum(lat) and isnum(val) and all(p.label != str(label) for p in pts):
            pts.append(_Point(str(label), float(lat), float(val), ci if is_pair(ci) else None))

    for _, r in d.results_of("closed_loop"):
        ret = r.get("metric") == "return"
        key = "return.mean" if ret else "success.rate"
        group = f"{dig(r, 'task.name', 'task')}: {'mean return' if ret else 'success rate'} "
        for e in dicts(r.get("engines")):
            add(group + "(higher is better)", e.get("label"), dig(e, "latency_ms.p50"),
                dig(e, key), dig(e, key.split(".")[0] + ".ci95"))  # fmt: skip
    for name, r in d.results_of("open_loop"):
        for e in dicts(r.get("engines")):
            add(f"open loop {name}: action L2 error (lower is better)", e.get("label"),
                dig(e, "latency_ms.p50"), dig(e, "l2.mean"))  # fmt: skip
    root = d.root.resolve()
    for name, r in bench_results(d):
        path = Path(str(r.get("bundle") or root))
        path = path if path.is_absolute() else d.root / path
        if path.resolve() in (root, d.where.resolve()):
            acc = _bundle_accuracy(d.report, d.manifest.get("precision"))
        else:
            acc = _bundle_accuracy(read_json(path / "report.json", []), r.get("precision"))
        if acc is not None:
            label = f"{name}: {r.get('precision', '?')} ({r.get('backend', '?')})"
            add(f"held-out {acc[1]} vs fp32 (lower is better)", label,
                dig(r, "latency.p50_ms"), acc[0])  # fmt: skip
    for key in ("quantization", "compression"):  # candidates that carry their own latency
        rep = dig(d.report, key)
        if not isinstance(rep, dict):
            continue
        named = [("full quantization", rep.get("full_quantization")), ("final", rep.get("final"))]
        named += [(str(s.get("pass")), s.get("figures")) for s in dicts(rep.get("steps"))]
        for label, fig in named:
            lat = dig(fig, "latency_ms.p50", dig(fig, "latency_ms"))
            metric = dig(fig, "metric", rep.get("metric", "drop"))
            add(f"held-out {metric} vs fp32 (lower is better)", label, lat, dig(fig, "drop"))
    return groups


def section_accuracy_latency(d: BundleData, plots: Plots) -> str:
    """Each candidate's accuracy against its measured latency."""
    groups = _accuracy_points(d)
    if not groups:
        return missing(
            "Not measured: no candidate has both an accuracy figure and a measured latency. "
            f"Run robopt-compile evaluate {d.where} (closed loop, with latency), or benchmark "
            "the bundle (results/bench-*.json) so its held-out accuracy gets a latency."
        )
    out = []
    cols: list[Col] = [("candidate", "label", ""), ("latency p50 ms", "latency_ms", ".4g"),
                       ("accuracy", "value", ".4g"), ("95% CI", "ci", "ci")]  # fmt: skip
    for g, pts in groups.items():
        out += [h3(g), table([p.__dict__ for p in pts], cols)]
    items = list(groups.items())[:4]

    def draw(fig: Any) -> None:
        axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
        for ax, (g, pts) in zip(axes, items, strict=True):
            for i, p in enumerate(pts):
                yerr = [[p.value - p.ci[0]], [p.ci[1] - p.value]] if p.ci else None
                ax.errorbar([p.latency_ms], [p.value], yerr=yerr, fmt="o", color=f"C{i % 10}",
                            capsize=3, ms=5)  # fmt: skip
                ax.annotate(mpl_text(p.label, 40), (p.latency_ms, p.value),
                            textcoords="offset points", xytext=(6, 3 + 9 * (i % 3)),
                            fontsize=7)  # fmt: skip
            ax.set(xlabel="latency p50 (ms)")
            ax.set_title(mpl_text(g, 90))
            ax.margins(x=0.3, y=0.25)

    out.append(plots.svg(draw, 2.5 * len(items) + 0.3, "accuracy vs latency",
                         "One point per engine or candidate with both figures; error bars are "
                         "95% confidence intervals where measured."))  # fmt: skip
    return "".join(out)


def section_closed_loop(d: BundleData, plots: Plots) -> str:
    """Closed-loop task evaluation: episodes, paired tests and criteria."""
    res = d.results_of("closed_loop")
    if not res:
        return missing(
            f"Not measured: run robopt-compile evaluate {d.where} (seeded episodes of the "
            "model's task, original vs optimized)."
        )
    out = []
    for name, r in res:
        task = r["task"] if isinstance(r.get("task"), dict) else {"name": r.get("task")}
        out.append(h3(f"{name}: {task.get('name', '?')}"))
        out.append(kv_table([
            ("task", task.get("description")), ("success rule", task.get("success_rule")),
            ("max steps", task.get("max_steps")),
            ("episodes", f"{r.get('episodes', '?')} per engine, same seeds"),
            ("paired-test metric", r.get("metric"))]))  # fmt: skip
        engines = dicts(r.get("engines"))
        out.append(table(engines, [
            ("engine", "label", ""), ("role", "role", ""),
            ("precision / backend", lambda e: f"{e.get('precision')} / {e.get('backend')}", ""),
            ("p50 ms", "latency_ms.p50", ".4g"), ("p99 ms", "latency_ms.p99", ".4g"),
            ("return mean", "return.mean", ".4g"), ("return 95% CI", "return.ci95", "ci"),
            ("success", partial(success_text, episodes=r.get("episodes")), ""),
            ("success 95% CI", "success.ci95", "ci2")]))  # fmt: skip
        pairs = dicts(r.get("paired"))
        if pairs:
            out.append(table(pairs, [
                ("candidate", "candidate", ""), ("vs", "reference", ""),
                ("return diff", "return_diff.mean", ".4g"), ("95% CI", "return_diff.ci95", "ci"),
                ("success diff", "success_diff.mean", ".3g"),
                ("95% CI", "success_diff.ci95", "ci2"), ("p-value", "p_value", ".3g"),
                ("verdict", lambda p: _verdict_span(p.get("verdict")), "")]))  # fmt: skip
        crit = r.get("criteria")
        if isinstance(crit, dict):
            fails = "; ".join(str(f) for f in crit.get("failures") or [])
            out.append("<p>Criteria: " + badge(crit.get("passed"), "met", "NOT met") + esc(
                f" (max return drop {pct(crit.get('max_return_drop'))}, max success drop "
                f"{fnum(x100(crit.get('max_success_drop')), '.1f')} points; measured "
                f"{pct(crit.get('return_drop'))} and {fnum(x100(crit.get('success_drop')), '.1f')}"
                " points)" + (f": {fails}" if fails else "")) + "</p>")  # fmt: skip
        else:
            out.append(note("No criteria were set (--max-return-drop / --max-success-drop)."))
        if engines:
            out.append(_closed_loop_plot(plots, name, engines))
    return "".join(out)


def _verdict_span(v: Any) -> Raw:
    cls = {"worse": "fail", "better": "pass"}.get(str(v))
    return Raw(f'<span class="{cls}">{esc(v)}</span>' if cls else esc(v or "–"))


def _closed_loop_plot(plots: Plots, name: str, engines: list[dict[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        for ax, key, val, title in zip(
            fig.subplots(1, 2), ("return", "success"), ("mean", "rate"),
            ("Mean return (95% CI)", "Success rate (95% CI)"), strict=True,
        ):  # fmt: skip
            ys, lo, hi = [], [], []
            for e in engines:
                y, ci = dig(e, f"{key}.{val}"), dig(e, f"{key}.ci95")
                y = float(y) if isnum(y) else math.nan
                ys.append(y)
                lo.append(max(y - ci[0], 0.0) if is_pair(ci) else 0.0)
                hi.append(max(ci[1] - y, 0.0) if is_pair(ci) else 0.0)
            x = list(range(len(engines)))
            colors = ["#8c8c8c" if e.get("role") == "reference" else "#4c72b0" for e in engines]
            ax.bar(x, ys, color=colors, yerr=[lo, hi], capsize=4, width=0.6)
            ax.set_xticks(x, [mpl_text(e.get("label", "?"), 30) for e in engines], rotation=12,
                          ha="right")  # fmt: skip
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
            if key == "success":
                ax.set_ylim(0, 1.05)

    return plots.svg(draw, 3.0, f"closed loop {name}", "Grey: the reference (original) engine.")


def section_open_loop(d: BundleData, plots: Plots) -> str:
    """Open-loop fidelity: action error on recorded observations."""
    res = d.results_of("open_loop")
    if not res:
        return missing(
            f"Not measured: run robopt-compile evaluate {d.where} --dataset OBSERVATIONS.npz "
            "(recorded observations through the original and the optimized engine)."
        )

    def chunk(e: dict[str, Any]) -> str:
        cd = e.get("chunk_divergence")
        if not isinstance(cd, dict):
            return "–"
        first, last = fnum(cd.get("first"), ".3g"), fnum(cd.get("last"), ".3g")
        return f"{first} -> {last} (x{fnum(cd.get('growth'), '.3g')})"

    out = []
    for name, r in res:
        out.append(h3(f"{name}: {r.get('samples', '?')} samples"))
        if r.get("dataset"):
            out.append(note(f"Dataset: {r['dataset']}"))
        engines = dicts(r.get("engines"))
        out.append(table(engines, [
            ("engine", "label", ""), ("role", "role", ""), ("L2 mean", "l2.mean", ".4g"),
            ("L2 p95", "l2.p95", ".4g"), ("L2 max", "l2.max", ".4g"),
            ("relative L2", "l2.relative_mean", "%2"), ("max deviation", "max_deviation", ".4g"),
            ("gripper flips", "gripper_flips", "n"), ("chunk divergence", chunk, "")]))  # fmt: skip
        dims = [
            e for e in engines if isinstance(dig(e, "per_dim.mae"), list) and e["per_dim"]["mae"]
        ]
        if dims:
            out.append(_open_loop_plot(plots, name, dims))
    return "".join(out)


def _open_loop_plot(plots: Plots, name: str, engines: list[dict[str, Any]]) -> str:
    def num(v: Any) -> float:
        return float(v) if isnum(v) else math.nan

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        n = max(len(e["per_dim"]["mae"]) for e in engines)
        width = 0.8 / len(engines)
        for i, e in enumerate(engines):
            mae = [num(v) for v in e["per_dim"]["mae"]]
            mx = dig(e, "per_dim.max_abs", [])
            x = [k + (i - (len(engines) - 1) / 2) * width for k in range(len(mae))]
            ax.bar(
                x,
                mae,
                width=width * 0.95,
                color=f"C{i}",
                label=mpl_text(e.get("label", "?"), 40) + " MAE",
            )
            if isinstance(mx, list) and len(mx) == len(mae):
                ax.plot(x, [num(v) for v in mx], "v", color=f"C{i}", ms=5, label="max abs")
        ax.set_xticks(list(range(n)), [str(k) for k in range(n)])
        ax.set(xlabel="action dimension", ylabel="absolute error")
        ax.set_title("Open-loop action error per dimension (bars: mean, triangles: max)")
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=7.5)

    return plots.svg(draw, 3.0, f"open loop {name}")
