"""The planner's search in report.html (``results/plan.json``, written when the planner built
the bundle): every plan measured against its prediction, the Pareto front as a plot, and the
plans rejected before or after building, each with its reason."""

from __future__ import annotations

from typing import Any

from robopt_compile.report.data import BundleData
from robopt_compile.report.format import Col, dicts, dig, h3, isnum, missing, note, table
from robopt_compile.report.plots import Plots


def section_planner(d: BundleData, plots: Plots) -> str:
    res = d.results_of("plan")
    if not res:
        return missing("Not measured: this bundle was not chosen by the planner (robopt-compile "
                       "with --max-latency-ms, --objective ... builds plans and keeps "
                       "results/plan.json).")  # fmt: skip
    name, r = res[-1]
    decisions = {x.get("plan"): x for x in dicts(r.get("decisions"))}
    front = set(r.get("pareto") or [])
    best = dig(r, "best.candidate")
    rows = []
    for m in dicts(r.get("measured")):
        label = m.get("candidate")
        pred = dig(decisions.get(label, {}), "prediction.latency_ms")
        rows.append({
            "plan": label + (" (chosen)" if label == best else ""),
            "built as": m.get("applied") or label,
            "predicted": pred, "p50": dig(m, "latency_ms.p50"), "drop": m.get("accuracy_drop"),
            "size": m.get("size_mb"), "front": "yes" if label in front else "",
        })  # fmt: skip
    out = [note(f"From results/{name}.json: {r.get('stopped') or ''} "
                f"({r.get('seconds', 0):.0f} s); accuracy drop measured as "
                f"{r.get('accuracy_measure') or 'n/a'} for every plan.")]  # fmt: skip
    cols: list[Col] = [("plan", "plan", ""), ("built as", "built as", ""),
                       ("predicted p50 ms", "predicted", ".4g"), ("measured p50 ms", "p50", ".4g"),
                       ("accuracy drop", "drop", ".4g"), ("size MB", "size", ".3g"),
                       ("Pareto front", "front", "")]  # fmt: skip
    if rows:
        out += [h3("Measured plans"), table(rows, cols)]
        pts = [x for x in rows if isnum(x["p50"]) and isnum(x["drop"])]

        def draw(fig: Any) -> None:
            ax = fig.subplots()
            for x in pts:
                on = x["front"] == "yes"
                ax.scatter([x["p50"]], [x["drop"]], color="C0" if on else "C7", s=30 if on else 18)
                ax.annotate(x["plan"][:40], (x["p50"], x["drop"]), textcoords="offset points",
                            xytext=(5, 3), fontsize=7)  # fmt: skip
            line = sorted((x["p50"], x["drop"]) for x in pts if x["front"] == "yes")
            if len(line) > 1:
                ax.plot(*zip(*line, strict=True), color="C0", lw=1)
            ax.set(xlabel="measured latency p50 (ms)", ylabel="accuracy drop")
            ax.margins(x=0.25, y=0.25)

        if pts:
            out.append(plots.svg(draw, 3.0, "planner pareto front",
                                 "Each measured plan; the Pareto front (no plan both faster and "
                                 "more accurate) in blue."))  # fmt: skip
    rejected = [x for x in decisions.values() if x.get("verdict") == "reject"]
    failed = dicts(r.get("failed"))
    if rejected or failed:
        out.append(h3("Rejected plans"))
        out.append(table([{"plan": x.get("plan"), "reason": x.get("reason")} for x in rejected]
                         + [{"plan": f.get("plan"), "reason": f"failed: {f.get('error')}"}
                            for f in failed],
                         [("plan", "plan", ""), ("reason", "reason", "")]))  # fmt: skip
    return "".join(out)
