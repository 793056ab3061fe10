"""``report.md``: the verdict line and a few tables for a pull-request comment (no images)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from robopt_compile.report.checks import verdict
from robopt_compile.report.data import BundleData, bench_results, control_results
from robopt_compile.report.format import (
    Col,
    Raw,
    badge,
    big,
    cell_value,
    dicts,
    dig,
    fnum,
    success_text,
)


def _md_text(v: Any) -> str:
    """Text for a Markdown table cell: no pipes, newlines or HTML tags."""
    s = str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\n", " ")


def _md_ok(ok: Any) -> str:
    return "–" if not isinstance(ok, bool) else "pass" if ok else "FAIL"


def _md_table(rows: Iterable[Any], cols: Sequence[Col]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, Raw):  # badges: their text without markup
            v = html.unescape(re.sub(r"<[^>]+>", "", v))
        return _md_text(v)

    lines = ["| " + " | ".join(cell(c[0]) for c in cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(cell(cell_value(r, c)) for c in cols) + " |" for r in rows]


def render_markdown(d: BundleData) -> str:
    """A concise summary for a PR comment: the verdict line first, then tables; no images."""
    status, line, checks = verdict(d)
    m = d.manifest
    eng = dig(m, "parity.engine", {})
    s = dig(d.analysis, "summary", {})
    head, _, rest = line.partition(" — ")
    mark = {"PASS": "✅", "PENDING": "⏳"}.get(status, "❌")
    out = [f"{mark} **{head}** — {_md_text(rest)}", ""]
    rows = [
        ("model", f"`{dig(m, 'model.name', '?')}` from {dig(m, 'model.source', '?')}"),
        ("target", dig(m, "target.profile", "?")),
        ("engine", f"{m.get('backend', '?')} {m.get('precision', '?')}"),
        (
            "engine fidelity"
            if eng.get("engine_checked", True)
            else "ONNX fidelity (engine not run)",
            f"{_md_ok(eng.get('passed'))} (cosine {fnum(eng.get('cosine'), '.6f')})",
        ),
        ("compute", f"{big(s.get('macs'))}MAC, {big(s.get('params'))} params"),
        ("roofline latency", f"{fnum(s.get('estimated_latency_ms'), '.3g')} ms (estimate)"),
    ]
    for n, r in bench_results(d):
        rows.append((f"latency {n}", f"p50 {fnum(dig(r, 'latency.p50_ms'))} ms, "
                                     f"p99 {fnum(dig(r, 'latency.p99_ms'))} ms"))  # fmt: skip
    q = dig(d.report, "quantization")
    if isinstance(q, dict):
        rows.append(("quantization", f"held-out {q.get('metric', '?')} "
                     f"{fnum(dig(q, 'final.drop'))} (bound {q.get('max_accuracy_drop')})"
                     + ("; rolled back to fp32" if q.get("rolled_back") else "")))  # fmt: skip
    pair: list[Col] = [("item", lambda x: x[0], ""), ("value", lambda x: x[1], "")]
    out += _md_table(rows, pair)
    if checks:
        result: Col = ("result", lambda c: "warning" if c.ok is None else badge(c.ok), "")
        out += ["", "**Checks**", ""]
        out += _md_table(checks, [("check", lambda c: c.name, ""), result,
                                  ("detail", lambda c: c.detail, "")])  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        out += ["", f"**Closed loop `{name}`** ({r.get('episodes', '?')} episodes)", ""]
        out += _md_table(dicts(r.get("engines")), [
            ("engine", "label", ""),
            ("success", partial(success_text, episodes=r.get("episodes")), ""),
            ("return", "return.mean", ".4g"), ("95% CI", "return.ci95", "ci"),
            ("p50 ms", "latency_ms.p50", ".4g")])  # fmt: skip
        out += [_md_text(f"- {p.get('candidate')} vs {p.get('reference')}: "
                         f"**{p.get('verdict', '?')}** (return diff "
                         f"{fnum(dig(p, 'return_diff.mean'), '.3g')}, p = "
                         f"{fnum(p.get('p_value'), '.3g')})")
                for p in dicts(r.get("paired"))]  # fmt: skip
    for name, r in d.results_of("open_loop"):
        out += ["", f"**Open loop `{name}`** ({r.get('samples', '?')} samples)", ""]
        out += _md_table(dicts(r.get("engines")), [
            ("engine", "label", ""), ("L2 mean", "l2.mean", ".4g"), ("L2 p95", "l2.p95", ".4g"),
            ("max deviation", "max_deviation", ".4g")])  # fmt: skip
    ctl = control_results(d)
    if ctl:
        out += ["", "**Control loop**", ""]
        out += _md_table(ctl, [
            ("result", lambda x: x[0], ""), ("rate Hz", lambda x: x[1].get("rate_hz"), "g"),
            ("misses", lambda x: f"{x[1].get('misses', '?')}/"
                                 f"{x[1].get('ticks', x[1].get('runs', '?'))}", ""),
            ("p99 ms", lambda x: dig(x[1], "latency_ms.p99"), ".4g")])  # fmt: skip
    for name, r in d.results_of("layers"):
        out += ["", f"**Slowest layers** ({name}, {r.get('backend', '?')}, "
                f"{fnum(r.get('total_ms'))} ms in all nodes)", ""]  # fmt: skip
        out += _md_table(dicts(r.get("layers"))[:5], [
            ("node", lambda x: f"`{x.get('name')}`", ""), ("op", "op_type", ""),
            ("ms", "ms", ".4g"), ("share", "share", "%")])  # fmt: skip
    missing = [what for what, have in (
        ("latency (robopt-bench)", bench_results(d)),
        ("per-layer time (robopt-compile report)", d.results_of("layers")),
        ("closed-loop task success (robopt-compile evaluate)", d.results_of("closed_loop")),
    ) if not have]  # fmt: skip
    if missing:
        out += ["", "Not measured: " + "; ".join(missing) + "."]
    out += ["", "_Full report: `report.html` in the bundle (self-contained, opens offline)._"]
    return "\n".join(out) + "\n"
