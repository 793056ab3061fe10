"""What the commands print for people: a bundle's summary, the accuracy guard's and the
compression steps' lines, closed- and open-loop evaluations, and the planner's plans.

Plain text from the library's results (dicts and dataclasses); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _robot_threads(m: dict) -> str:
    """TVM kernels are built for the robot's thread count: say it beside the engine."""
    cores = (m.get("engine", {}).get("config", {}).get("target") or {}).get("num-cores")
    return f" (kernels for {cores} robot thread{'s' if cores != 1 else ''})" if cores else ""


def bundle_rows(result: Any) -> list[tuple[str, str]]:
    """The human summary of a single-graph bundle."""
    m, report = result.manifest, result.report
    s = result.facts.get("summary", {})
    exp = m["parity"].get("export")
    eng = m["parity"]["engine"]
    fell = "".join(f" (after {f['backend']}: it could not build this model)"
                   for f in (m.get("backend_choice") or {}).get("failed", []))  # fmt: skip
    rows = [
        ("bundle", str(result.bundle)),
        ("target", f"{m['target']['profile']} ({m['target']['description']})"),
        ("engine", f"{m['backend']} {m['precision']}{_robot_threads(m)}{fell}"),
        ("inputs", ", ".join(f"{i['name']}{list(i['shape'])}:{i['dtype']}" for i in m["inputs"])),
        ("outputs", ", ".join(f"{o['name']}{list(o['shape'])}" for o in m["outputs"])),
    ]
    if exp:
        rows.append(
            (
                "export parity",
                f"cosine {exp['cosine']:.7f}, max abs err {exp['max_abs']:.2e} "
                f"({report['exporter']})",
            )
        )
    mod = m["parity"].get("modernize")
    if mod:
        ch = mod["modernized"]
        rows.append(("old ONNX upgraded", f"IR {ch['ir_version'][0]} -> {ch['ir_version'][1]}, "
                     f"opset {ch['opset'][0]} -> {ch['opset'][1]}, "
                     f"{len(ch['constant_inputs'])} inputs made constants; vs the original "
                     f"file: max abs err {mod['max_abs']:.2e}"))  # fmt: skip
    rows.append(
        (
            "engine fidelity" if result.engine_checked else "ONNX fidelity",
            f"cosine {eng['cosine']:.7f}, max abs err {eng['max_abs']:.2e} "
            f"({'pass' if eng['passed'] else 'FAIL'})",
        )
    )
    rows.append(("verdict", f"{result.verdict['status'].upper()}: {result.verdict['checked']}"))
    if s:
        rows.append(("model", summary_line(s)))
    c = report.get("compression")
    if c:
        rows.extend(compress_lines(c))
    q = report.get("quantization")
    if q:
        rows.append(("quantization", quant_line(q)))
    return rows


def graph_bundle_rows(
    out: Path, m: dict[str, Any], report: dict[str, Any]
) -> list[tuple[str, str]]:
    """The human summary of a multi-graph bundle: graphs, then fidelity in action terms."""
    f = report.get("fidelity", {})
    rows = [
        ("bundle", str(out)),
        ("target", f"{m['target']['profile']} ({m['target']['description']})"),
        ("engine", f"{m['backend']} {m['precision']}, driver {m['driver']['kind']}"),
    ]
    checks = report.get("graph_checks") or {}
    for g in m["graphs"]:
        chk = checks.get(g["name"])
        how = ("checked through the actions" if chk is None
               else f"cosine vs torch {chk.get('cosine', float('nan')):.6f}")  # fmt: skip
        on = g.get("backend", m["backend"])
        rows.append((f"graph {g['name']}", f"{g['precision']}"
                     f"{'' if on == m['backend'] else ' on ' + on}, weights "
                     f"{g['weight_bytes'] / 2**20:.1f} MiB, {how}"))  # fmt: skip
    if "token_agreement" in f:
        rows.append(("action tokens", f"{f['token_agreement']:.1%} agree with torch fp32 on "
                     f"{f.get('observations')} held-out observations (bound "
                     f"{1 - f.get('max_token_disagreement', 0):.0%})"))  # fmt: skip
    else:
        rows.append(("action chunks", f"relative L2 {f.get('relative_l2', 0):.3g}, max abs "
                     f"{f.get('action_max_abs', 0):.3g} vs torch fp32 at fixed noise on "
                     f"{f.get('observations')} held-out observations"))  # fmt: skip
    l2 = f.get("action_l2", {})
    flips = f"; gripper flips {f['gripper_flips']}" if "gripper_flips" in f else ""
    rows.append(("action error", f"L2 mean {l2.get('mean', 0):.3g}, max {l2.get('max', 0):.3g}"
                 + flips))  # fmt: skip
    return rows


def quant_line(q: dict[str, Any]) -> str:
    """The accuracy guard's verdict on one line (compile summary and quant-report)."""
    f = q["final"]
    data = q["data"]
    cl = f.get("closed_loop")
    if cl:  # the guard ran the task itself
        line = (
            f"{q['pass']}: closed-loop {cl['metric'].removeprefix('task:')} drop "
            f"{f['drop']:.4g} (bound {q['max_accuracy_drop']}) on {cl['episodes']} guard "
            f"episodes of {cl['task']}; output cosine {f['cosine']:.5f} on {f['samples']} "
            "held-out samples"
        )
    else:
        line = (
            f"{q['pass']}: held-out {q['metric']} {f['drop']:.4g} (bound "
            f"{q['max_accuracy_drop']}), cosine {f['cosine']:.5f} on {f['samples']} held-out "
            "samples"
        )
    outs = f.get("per_output") or {}
    if len(outs) > 1 and not cl:  # say how the one figure combines several outputs
        worst = max(outs, key=lambda n: outs[n].get("relative_l2") or 0.0)
        alone = outs[worst].get("relative_l2") or 0.0
        line += (f" ({len(outs)} outputs: relative L2 pooled over all of them, so the larger "
                 f"output weighs more; worst alone {worst} {alone:.3g}; cosine: the lowest "
                 "output's)")  # fmt: skip
    mp = q.get("mixed_precision")
    if mp:
        n = len(mp["fp32_nodes"])
        line += f"; mixed precision kept {n} layer{'s' if n != 1 else ''} fp32"
    if q.get("rolled_back"):
        line += "; ROLLED BACK to fp32"
    if data.get("random"):
        line += " [random data]"
    return line


def compress_lines(c: dict[str, Any]) -> list[tuple[str, str]]:
    """One row per compression step: what it cut and what it cost on held-out data."""
    rows = []
    for step in c["steps"]:
        f = step["figures"]
        rep = step.get("report") or {}
        tot = rep.get("totals", {})
        what = []
        if tot.get("macs_before"):
            what.append(f"MACs {tot['macs_before'] / 1e9:.3f} -> {tot['macs_after'] / 1e9:.3f} G")
        if tot.get("params_before"):
            what.append(
                f"params {tot['params_before'] / 1e6:.2f} -> {tot['params_after'] / 1e6:.2f} M"
            )
        line = ", ".join([*what, f"held-out {c['metric']} {f['drop']:.4g}"])
        if f.get("centred_cosine") is not None:
            line += f", centred cosine {f['centred_cosine']:.4f}"
        d = step.get("distillation")
        if d:
            b = step["figures_before_distillation"]
            rounds = (d.get("onpolicy") or {}).get("rounds") or []
            on = f", {len(rounds)} on-policy rounds" if rounds else ""
            line += f" (distilled {d['steps']} steps{on}, from {b['drop']:.4g})"
        if step.get("rolled_back"):
            line += "; ROLLED BACK"
        if rep.get("note"):
            line += f" [{rep['note'].split('.')[0]}]"
        rows.append((step["pass"], line))
    return rows


def summary_line(s: dict[str, Any]) -> str:
    parts = []
    if "macs" in s:
        parts.append(f"{s['macs'] / 1e9:.3f} GMAC")
    if "params" in s:
        parts.append(f"{s['params'] / 1e6:.2f} M params")
    if "estimated_latency_ms" in s:
        parts.append(f"roofline estimate {s['estimated_latency_ms']:.2f} ms")
    return ", ".join(parts)


def evaluation_lines(ev: dict[str, Any]) -> list[tuple[str, str]]:
    """Closed-loop figures as table rows: one per engine, then the paired verdicts."""
    rows = [
        (
            "task",
            f"{ev['task']['name']}: {ev['episodes']} episodes, seeds "
            f"{ev['seeds'][0]}..{ev['seeds'][-1]}; success = {ev['task']['success_rule']}",
        )
    ]
    for e in ev["engines"]:
        r, s = e["return"], e["success"]
        lat = e.get("latency_ms") or {}
        rows.append(
            (
                e["label"],
                f"return {r['mean']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}], success "
                f"{s['rate']:.0%} [{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]"
                + (f", {lat['p50']:.3f} ms/step" if lat.get("p50") is not None else ""),
            )
        )
    for p in ev["paired"]:
        d = p["return_diff"] if p["metric"] == "return" else p["success_diff"]
        unit = "" if p["metric"] == "return" else " (success fraction)"
        rows.append(
            (
                "paired difference",
                f"{p['metric']} {d['mean']:+.3f}{unit} [{d['ci95'][0]:+.3f}, "
                f"{d['ci95'][1]:+.3f}], p={p['p_value']:.3g}: {p['verdict']}",
            )
        )
    crit = ev.get("criteria")
    if crit:
        rows.append(
            ("criteria", "PASS" if crit["passed"] else "FAIL: " + "; ".join(crit["failures"]))
        )
    return rows


def format_open_loop(r: dict[str, Any]) -> str:
    """An open-loop evaluation: the action error of each engine on the recorded steps."""
    lines = [f"open loop on {r['dataset']}: {r['samples']} steps"]
    for e in r["engines"]:
        mae = ", ".join(f"{v:.3g}" for v in e["per_dim"]["mae"])
        lines.append(
            f"  {e['label']}: L2 mean {e['l2']['mean']:.4g} "
            f"(relative {e['l2']['relative_mean']:.3%}), "
            f"p95 {e['l2']['p95']:.4g}, max deviation {e['max_deviation']:.4g}; MAE per dim [{mae}]"
            + (
                f"; gripper flips {e['gripper_flips']}"
                if e.get("gripper_flips") is not None
                else ""
            )
        )
    return "\n".join(lines)


def format_plan(r: Any, criteria: Any) -> str:
    """The plans, what was measured, the choice and the Pareto front, for people."""
    lines = ["plans (best predicted first):"]
    for d in r.decisions:
        lines.append(
            f"  {'+' if d.verdict == 'propose' else '-'} {d.candidate.label:<32} {d.reason}"
        )
    if r.estimate_only:
        lines.append(f"  (estimates only, cannot run here: {', '.join(r.estimate_only)})")
    if r.measured or r.failed:
        pct = criteria.latency_percentile
        lines += ["", f"measured here ({pct} latency, accuracy drop against fp32):"]
        notes = {n["plan"]: n for n in r.choice_notes}
        for m in r.measured:
            n = notes.get(m.candidate.label, {})
            drop = "-" if m.accuracy_drop is None else f"{m.accuracy_drop:.4g}"
            verdict = "meets the bounds" if n.get("meets_bounds") else "; ".join(
                n.get("violations", []))  # fmt: skip
            lines.append(
                f"  {m.candidate.label:<32} {m.latency_ms[pct]:9.4f} ms  drop {drop:<8} "
                f"{m.size_mb:8.3f} MB  {verdict}"
            )
            if m.applied:
                lines.append(f"  {'':<32} built as {m.applied}")
        for f in r.failed:
            lines.append(f"  {f['plan']:<32} failed: {f['error']}")
        if getattr(r, "accuracy_measure", None):
            lines.append(f"  accuracy drop, every plan: {r.accuracy_measure}")
        lines.append(f"  search stopped: {r.stopped} ({r.seconds:.0f} s)")
        if r.front:
            lines.append("  Pareto front (latency vs accuracy drop): "
                         + ", ".join(m.candidate.label for m in r.front))  # fmt: skip
    if r.best is not None:
        lines += ["", f"chosen: {r.best.candidate.label} -> {r.best.bundle}"]
    if getattr(r, "session_id", None):
        lines.append(f"session {r.session_id[:12]} (robopt-compile session {r.session_id[:12]})")
    return "\n".join(lines)
