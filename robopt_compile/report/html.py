"""``report.html``: one self-contained page of every section, in a fixed order.

``SECTIONS`` lists each section's anchor and heading; every one is always present. A section
that cannot be built from the bundle's files says so in place and the rest of the page is
still written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robopt_compile.report.data import BundleData
from robopt_compile.report.format import dig, esc, missing
from robopt_compile.report.plots import Plots
from robopt_compile.report.sections_build import (
    section_analysis,
    section_graphs,
    section_passes,
    section_summary,
    section_versions,
)
from robopt_compile.report.sections_compress import (
    section_compression,
    section_quantization,
    section_sensitivity,
)
from robopt_compile.report.sections_eval import (
    section_accuracy_latency,
    section_closed_loop,
    section_open_loop,
)
from robopt_compile.report.sections_plan import section_planner
from robopt_compile.report.sections_timing import (
    section_control_loop,
    section_latency,
    section_layers,
    section_remote,
)

# (anchor, heading) of every section, in order; every one is present in report.html (the
# multi-graph one only for a multi-graph bundle: ``sections_of``).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("graphs", "Graphs and actions (multi-graph bundle)"),
    ("passes", "Compile passes"),
    ("analysis", "Model analysis"),
    ("quantization", "Quantization"),
    ("compression", "Compression"),
    ("planner", "Planner search"),
    ("latency", "Latency"),
    ("accuracy-latency", "Accuracy vs latency"),
    ("layers", "Per-layer time"),
    ("sensitivity", "Per-layer sensitivity"),
    ("closed-loop", "Closed-loop evaluation"),
    ("open-loop", "Open-loop fidelity"),
    ("control-loop", "Control-loop timing"),
    ("remote", "Remote results"),
    ("versions", "Tool versions"),
)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0 auto;max-width:1100px;padding:0 20px 40px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:22px 0 4px}h2{font-size:18px;margin:30px 0 8px;padding-top:8px;
border-top:1px solid #dde1e8}h3{font-size:15px;margin:18px 0 6px}
nav{font-size:13px;margin:8px 0 14px}nav a{margin-right:10px;color:#2457a6;text-decoration:none}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}th{background:#f3f5f9}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:210px}
.pass{color:#116329;font-weight:600}.fail{color:#b42318;font-weight:600}
.warn{color:#9a6700;font-weight:600}
.verdict{font-size:16px;padding:10px 14px;border-radius:6px;margin:10px 0}
.verdict.ok{background:#e8f5ec;border:1px solid #9fd5ad}
.verdict.bad{background:#fdecea;border:1px solid #f1a7a1}
.verdict.pending{background:#fff6e0;border:1px solid #f0c36d}
.missing{color:#5b6473;font-style:italic}.note{color:#5b6473;font-size:13px}
.est{color:#9a6700;font-size:12px}
figure{margin:6px 0 14px}figure svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5b6473}
footer{margin-top:30px;font-size:12px;color:#5b6473}
code{font-size:12.5px;background:#f3f5f9;padding:0 3px;border-radius:3px}
"""


_SECTION_FUNCS: dict[str, Callable[[BundleData, Plots], str]] = {
    "summary": section_summary,
    "graphs": section_graphs,
    "passes": section_passes,
    "analysis": section_analysis,
    "quantization": section_quantization,
    "compression": section_compression,
    "latency": section_latency,
    "accuracy-latency": section_accuracy_latency,
    "layers": section_layers,
    "sensitivity": section_sensitivity,
    "closed-loop": section_closed_loop,
    "open-loop": section_open_loop,
    "control-loop": section_control_loop,
    "remote": section_remote,
    "versions": section_versions,
    "planner": section_planner,
}


def sections_of(manifest: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The sections a bundle's report has: all of them, but the multi-graph one only for a
    multi-graph bundle."""
    multi = bool(manifest.get("graphs"))
    return tuple(s for s in SECTIONS if multi or s[0] != "graphs")


def render_html(d: BundleData) -> str:
    """The whole self-contained HTML document."""
    plots = Plots()
    m = d.manifest
    title = (
        f"robopt report: {dig(m, 'model.name', '?')} on {dig(m, 'target.profile', '?')} "
        f"({m.get('backend', '?')} {m.get('precision', '?')})"
    )
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections_of(m)) + "</nav>",
    ]
    for anchor, heading in sections_of(m):
        try:
            body = _SECTION_FUNCS[anchor](d, plots)
        except Exception as exc:  # broad: a malformed result must not sink the whole page
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            body = missing(
                f"Not shown: this section could not be built from the bundle's files "
                f"({type(exc).__name__}: {msg}); check the result files it reads."
            )
        parts.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>{body}</section>')
    parts.append(
        "<footer>Derived from the bundle's manifest.json, report.json, analysis.json and "
        "results/*.json; not covered by the manifest's hashes. Regenerate with "
        "<code>robopt-compile report BUNDLE_FOLDER</code>. Figures marked estimate come "
        "from the board profile's datasheet peaks; every other figure was measured.</footer>"
        "</body></html>\n"
    )
    return "".join(parts)
