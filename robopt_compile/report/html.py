"""A bundle's human report: ``report.html`` (self-contained, offline) and ``report.md`` (CI).

Both are *derived* files: built only from what the bundle holds (``manifest.json``,
``report.json``, ``analysis.json``) and the measurements added later under ``results/``
(``robopt_compile.bench.results``). They are not listed in the manifest's hashed ``files`` and can
be deleted and regenerated at any time (``robopt-compile report BUNDLE``); docs/REPORTS.md
says what each section shows and where its numbers come from.

``report.html`` is one file a browser shows with no network: no scripts, no external style
sheets, fonts or images, no URLs. Plots are inline SVG drawn by matplotlib with text as paths
(no fonts needed) and a fixed hash salt, so the same inputs give the same bytes. matplotlib is
a compile-machine dependency imported only when a plot is drawn; without it the report keeps
its tables and says ``pip install matplotlib``. Any piece may be missing: its section then
says what was not measured and which command measures it. All text from the bundle goes
through ``html.escape``.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from robopt_compile.bench.results import atomic_write_text, load_results, result_kind
from robopt_compile.errors import InputError

HTML_NAME = "report.html"
MD_NAME = "report.md"
TOP_N = 15  # rows in per-layer tables and bar charts
# (anchor, heading) of every section, in order; every one is always present in report.html.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("graphs", "Graphs and actions (multi-graph bundle)"),
    ("passes", "Compile passes"),
    ("analysis", "Model analysis"),
    ("quantization", "Quantization"),
    ("compression", "Compression"),
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
# matplotlib settings for every plot: text as paths (no fonts), deterministic ids.
_RC: dict[str, Any] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "robopt-report",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
}
_WIDTH = 7.6  # figure width, inches
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


# --- loading ---------------------------------------------------------------------------------


@dataclass
class BundleData:
    """Everything a report is built from; missing pieces are None or empty."""

    root: Path
    manifest: dict[str, Any]
    report: dict[str, Any] | None
    analysis: dict[str, Any] | None
    results: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    shown: Path | None = None  # the path the report names (a staged bundle's final place)

    @property
    def where(self) -> Path:
        """The bundle's path as the report's hints print it."""
        return self.shown or self.root

    def results_of(self, *kinds: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, data) of the results whose kind is one of ``kinds``, by name."""
        return [(n, d) for n, d in self.results.items() if result_kind(n, d) in kinds]


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path.name} cannot be read ({str(exc).splitlines()[0][:160]})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return data


def load_bundle(bundle_dir: Path | str, shown: Path | None = None) -> BundleData:
    """Read a bundle's JSON files and results; only a missing or broken manifest is an error.

    Raises:
        InputError: the folder is missing, is not a bundle, or its manifest.json is unreadable.
    """
    root = Path(bundle_dir)
    if not root.exists():
        raise InputError(f"bundle folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is a file, not a bundle folder.")
    if not (root / "manifest.json").is_file():
        raise InputError(
            f"{str(root)!r} is not a robopt bundle (no manifest.json); pass the folder that "
            "`robopt-compile -o` wrote."
        )
    problems: list[str] = []
    manifest = _read_json(root / "manifest.json", problems)
    if manifest is None:
        raise InputError(f"{root / 'manifest.json'}: {problems[0]}; the bundle is corrupt.")
    errors: dict[str, str] = {}
    results = load_results(root, errors=errors)
    problems += [f"results/{n}.json {why}" for n, why in sorted(errors.items())]
    report = _read_json(root / "report.json", problems)
    analysis = _read_json(root / "analysis.json", problems)
    return BundleData(root, manifest, report, analysis, results, problems, shown)


# --- values and formatting -------------------------------------------------------------------


class _Raw(str):
    """HTML that is already escaped (a cell or value with markup)."""


def _e(x: Any) -> str:
    """Escaped text; ``://`` becomes a character reference so that no URL appears in the
    file's bytes, even one quoted from a result (it still reads the same in a browser)."""
    return html.escape(str(x), quote=True).replace("://", ":&#47;&#47;")


def _g(d: Any, path: str, default: Any = None) -> Any:
    """``d["a"]["b"]`` for ``path="a.b"``; ``default`` when a level is missing or None."""
    for key in path.split("."):
        if not isinstance(d, dict) or d.get(key) is None:
            return default
        d = d[key]
    return d


def _isnum(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _f(x: Any, fmt: str = ".4g", unit: str = "") -> str:
    """A number for people; "–" for a missing or non-finite one."""
    return f"{x:{fmt}}{unit}" if _isnum(x) else "–"


def _pct(x: Any, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if _isnum(x) else "–"


def _big(x: Any) -> str:
    if not _isnum(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:g}"


def _mb(x: Any) -> Any:
    return x / 1e6 if _isnum(x) else None


def _x100(x: Any) -> Any:
    return 100 * x if _isnum(x) else None


def _ci(ci: Any, fmt: str = ".3g") -> str:
    if _pair(ci):
        return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return "–"


def _pair(ci: Any) -> bool:
    return isinstance(ci, list | tuple) and len(ci) == 2 and all(_isnum(v) for v in ci)


def _dicts(x: Any) -> list[dict[str, Any]]:
    """The dict items of a list field; [] for a missing or malformed one."""
    return [e for e in x if isinstance(e, dict)] if isinstance(x, list) else []


def _short(text: Any, n: int = 42) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n // 2 - 1] + "…" + s[-(n - n // 2) :]


def _badge(ok: Any, yes: str = "pass", no: str = "FAIL") -> _Raw:
    if not isinstance(ok, bool):
        return _Raw("–")
    return _Raw(f'<span class="{"pass" if ok else "fail"}">{_e(yes if ok else no)}</span>')


def _warn(text: str) -> _Raw:
    return _Raw(f'<span class="warn">{_e(text)}</span>')


def _est(value: str, what: str = "estimate") -> _Raw:
    return _Raw(f'{_e(value)} <span class="est">{_e(what)}</span>')


def _no_scheme(url: Any) -> str:
    """A server address without its URL scheme (the report holds no URLs)."""
    return re.sub(r"^[a-z][a-z0-9+.-]*://", "", str(url))


# A column: (header, dotted path or function of the row, format). Formats: "" as is, "n" as
# is but right-aligned, ".4g"-style number, "%"/"%0"/"%2" percent, "ci"/"ci2" interval,
# "big" (k/M/G), "ok" (pass/FAIL badge).
Col = tuple[str, "str | Callable[[Any], Any]", str]


def _cell(row: Any, col: Col) -> Any:
    _, get, fmt = col
    v = get(row) if callable(get) else _g(row, get)
    if fmt in ("", "n"):
        return "–" if v is None else v
    if fmt.startswith("%"):
        return _pct(v, int(fmt[1:] or 1))
    if fmt.startswith("ci"):
        return _ci(v, f".{fmt[2:] or 3}{'f' if fmt[2:] else 'g'}")
    return {"big": _big, "ok": _badge}.get(fmt, lambda x: _f(x, fmt))(v)


def _is_numeric(fmt: str) -> bool:
    return fmt == "n" or fmt == "big" or fmt[:1] in (".", "%")


def _table(rows: Iterable[Any], cols: Sequence[Col]) -> str:
    """An HTML table of ``rows`` by column specs; every cell is escaped unless ``_Raw``."""
    out = ["<table><thead><tr>", *(f"<th>{_e(c[0])}</th>" for c in cols), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for c in cols:
            v = _cell(row, c)
            text = v if isinstance(v, _Raw) else _e(v)
            out.append(f'<td class="n">{text}</td>' if _is_numeric(c[2]) else f"<td>{text}</td>")
        out.append("</tr>")
    return "".join([*out, "</tbody></table>"])


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table; rows whose value is None or "" are left out."""
    body = "".join(
        f"<tr><th>{_e(k)}</th><td>{v if isinstance(v, _Raw) else _e(v)}</td></tr>"
        for k, v in rows
        if v is not None and v != ""
    )
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _h3(text: str) -> str:
    return f"<h3>{_e(text)}</h3>"


def _md_text(v: Any) -> str:
    """Text for a Markdown table cell: no pipes, newlines or HTML tags."""
    s = str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\n", " ")


def _md_ok(ok: Any) -> str:
    return "–" if not isinstance(ok, bool) else "pass" if ok else "FAIL"


def _md_table(rows: Iterable[Any], cols: Sequence[Col]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, _Raw):  # badges: their text without markup
            v = html.unescape(re.sub(r"<[^>]+>", "", v))
        return _md_text(v)

    lines = ["| " + " | ".join(cell(c[0]) for c in cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(cell(_cell(r, c)) for c in cols) + " |" for r in rows]


# --- plots -----------------------------------------------------------------------------------


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _t(s: Any, n: int | None = None) -> str:
    """Text for matplotlib: shortened, ``$`` escaped so a name never triggers mathtext."""
    return (_short(s, n) if n else str(s)).replace("$", r"\$")


_SVG_ID = re.compile(r'(\bid="|href="#|url\(#)')


def _clean_svg(svg: str, prefix: str, alt: str) -> str:
    """matplotlib's SVG made fit for inline HTML: no XML prolog, DOCTYPE, metadata or
    namespace URLs, ids unique per figure, ``xlink:href`` as plain ``href`` (SVG 2)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    svg = svg.replace("xlink:href=", "href=")
    svg = _SVG_ID.sub(lambda m: m.group(1) + prefix, svg)
    return svg.replace("<svg", f'<svg role="img" aria-label="{_e(alt)}"', 1).strip()


class _Plots:
    """Draws inline SVG figures; ``enabled`` is False without matplotlib."""

    def __init__(self) -> None:
        self.enabled = matplotlib_available()
        self.count = 0

    def svg(self, draw: Callable[[Any], None], height: float, alt: str, caption: str = "") -> str:
        """``draw(fig)`` on a new figure; its ``<figure>`` HTML, or "" without matplotlib."""
        if not self.enabled:
            return ""
        import matplotlib
        from matplotlib.figure import Figure

        self.count += 1
        with matplotlib.rc_context(_RC):
            fig = Figure(figsize=(_WIDTH, max(1.6, min(height, 9.0))), layout="constrained")
            draw(fig)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = _clean_svg(buf.getvalue(), f"f{self.count}-", alt)
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        return f"<figure>{svg}{cap}</figure>"


def _barh(ax: Any, labels: Sequence[str], values: Sequence[float], color: Any = None,
          fmt: str = ".3g") -> None:  # fmt: skip
    """Horizontal bars, the first at the top, each labelled with its value."""
    y = list(range(len(values)))[::-1]
    bars = ax.barh(y, values, color=color or "#4c72b0")
    ax.set_yticks(y, [_t(s) for s in labels])
    ax.bar_label(bars, labels=[f"{v:{fmt}}" for v in values], padding=2, fontsize=7.5)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)


# --- figures several sections use ------------------------------------------------------------


def _bench_results(d: BundleData) -> list[tuple[str, dict[str, Any]]]:
    """Results holding a harness benchmark (``robopt-bench --json``, local or remote)."""
    return [
        (n, r) for n, r in d.results_of("bench", "remote") if isinstance(r.get("latency"), dict)
    ]


def _control_results(d: BundleData) -> list[tuple[str, dict[str, Any]]]:
    """Control-loop figures: dedicated results, a paced loop inside a benchmark, and the
    deadline figures of back-to-back benchmark runs with a control rate."""
    out = list(d.results_of("control_loop"))
    for name, r in _bench_results(d):
        if isinstance(r.get("control_loop"), dict):
            out.append((f"{name} (paced loop)", r["control_loop"]))
        if isinstance(r.get("control"), dict):
            out.append((f"{name} (back-to-back runs)", r["control"]))
    return out


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
    if q_on and _isnum(_g(q, "final.drop")):
        return float(q["final"]["drop"]), str(q.get("metric", "relative_l2"))
    if c_on and _isnum(_g(c, "final.drop")):
        return float(c["final"]["drop"]), str(c.get("metric", "relative_l2"))
    if precision == "fp32" and not q_on and not c_on:
        return 0.0, str(_g(q, "metric", "relative_l2"))
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
        pts = groups.setdefault(group, []) if _isnum(lat) and _isnum(val) else []
        if _isnum(lat) and _isnum(val) and all(p.label != str(label) for p in pts):
            pts.append(_Point(str(label), float(lat), float(val), ci if _pair(ci) else None))

    for _, r in d.results_of("closed_loop"):
        ret = r.get("metric") == "return"
        key = "return.mean" if ret else "success.rate"
        group = f"{_g(r, 'task.name', 'task')}: {'mean return' if ret else 'success rate'} "
        for e in _dicts(r.get("engines")):
            add(group + "(higher is better)", e.get("label"), _g(e, "latency_ms.p50"),
                _g(e, key), _g(e, key.split(".")[0] + ".ci95"))  # fmt: skip
    for name, r in d.results_of("open_loop"):
        for e in _dicts(r.get("engines")):
            add(f"open loop {name}: action L2 error (lower is better)", e.get("label"),
                _g(e, "latency_ms.p50"), _g(e, "l2.mean"))  # fmt: skip
    root = d.root.resolve()
    for name, r in _bench_results(d):
        path = Path(str(r.get("bundle") or root))
        path = path if path.is_absolute() else d.root / path
        if path.resolve() in (root, d.where.resolve()):
            acc = _bundle_accuracy(d.report, d.manifest.get("precision"))
        else:
            acc = _bundle_accuracy(_read_json(path / "report.json", []), r.get("precision"))
        if acc is not None:
            label = f"{name}: {r.get('precision', '?')} ({r.get('backend', '?')})"
            add(f"held-out {acc[1]} vs fp32 (lower is better)", label,
                _g(r, "latency.p50_ms"), acc[0])  # fmt: skip
    for key in ("quantization", "compression"):  # candidates that carry their own latency
        rep = _g(d.report, key)
        if not isinstance(rep, dict):
            continue
        named = [("full quantization", rep.get("full_quantization")), ("final", rep.get("final"))]
        named += [(str(s.get("pass")), s.get("figures")) for s in _dicts(rep.get("steps"))]
        for label, fig in named:
            lat = _g(fig, "latency_ms.p50", _g(fig, "latency_ms"))
            metric = _g(fig, "metric", rep.get("metric", "drop"))
            add(f"held-out {metric} vs fp32 (lower is better)", label, lat, _g(fig, "drop"))
    return groups


# --- verdict ---------------------------------------------------------------------------------


@dataclass
class _Check:
    name: str
    ok: bool | None  # None: a warning, not a failure
    detail: str


def _checks(d: BundleData) -> list[_Check]:
    """Pass/fail criteria found in the bundle and its results (warnings have ok=None)."""
    checks: list[_Check] = []
    eng = _g(d.manifest, "parity.engine", {})
    if isinstance(eng.get("passed"), bool):
        checked = eng.get("engine_checked", True)
        where = "engine" if checked else "ONNX in ONNX Runtime (the engine was not run)"
        checks.append(_Check("engine fidelity at compile time" if checked
                             else "ONNX fidelity at compile time", eng["passed"],
                             f"{where}: cosine {_f(eng.get('cosine'), '.6f')}, "
                             f"max abs {_f(eng.get('max_abs'), '.2e')}"))  # fmt: skip
    for name, r in _bench_results(d):
        if isinstance(_g(r, "fidelity.passed"), bool):
            checks.append(_Check(f"fidelity on {name}", r["fidelity"]["passed"],
                                 f"cosine {_f(_g(r, 'fidelity.cosine'), '.6f')} on "
                                 f"{_g(r, 'machine.cpu_model', '?')}"))  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        crit = r.get("criteria")
        if isinstance(crit, dict) and isinstance(crit.get("passed"), bool):
            detail = "; ".join(str(f) for f in crit.get("failures") or []) or (
                f"return drop {_pct(crit.get('return_drop'))} (max "
                f"{_pct(crit.get('max_return_drop'))}), success drop "
                f"{_f(_x100(crit.get('success_drop')), '.1f')} points"
            )
            checks.append(_Check(f"closed loop {name}", crit["passed"], detail))
        for p in _dicts(r.get("paired")):
            if p.get("verdict") == "worse":
                checks.append(_Check(f"closed loop {name}", None,
                                     f"{p.get('candidate')} is worse than {p.get('reference')} "
                                     f"(p = {_f(p.get('p_value'), '.3g')})"))  # fmt: skip
    acts = _g(d.manifest, "parity.actions", {})
    if isinstance(acts.get("passed"), bool):
        detail = (f"{_pct(acts.get('token_agreement'))} agree with the fp32 torch model on "
                  f"{acts.get('observations')} held-out observations")  # fmt: skip
        checks.append(_Check("action tokens at compile time", acts["passed"], detail))
    q = _g(d.report, "quantization")
    if isinstance(q, dict) and q.get("rolled_back"):
        checks.append(_Check("quantization", None, str(q.get("rollback_reason", "rolled back"))))
    if isinstance(q, dict) and _g(q, "data.random"):
        checks.append(_Check("quantization", None, "calibrated on random data"))
    for name, c in _control_results(d):
        if _isnum(c.get("misses")) and c["misses"] > 0:
            checks.append(_Check(f"control loop {name}", None,
                                 f"{c['misses']} deadline misses in "
                                 f"{c.get('ticks', c.get('runs', '?'))} ticks at "
                                 f"{_f(c.get('rate_hz'), 'g')} Hz"))  # fmt: skip
    return checks


def pending_engine_check(d: BundleData) -> str | None:
    """What is left to check on the device: the compile could not run the engine (a deferred
    TensorRT build, a cross-compiled library) and no device result has checked it since."""
    eng = _g(d.manifest, "parity.engine", {})
    if eng.get("engine_checked", True) is not False:
        return None
    if any(isinstance(_g(r, "fidelity.passed"), bool) for _, r in _bench_results(d)):
        return None  # robopt-bench checked the engine on the device since (results/)
    return str(eng.get("checked") or "ONNX checked in ONNX Runtime; engine not run here: "
               "checked on the device by robopt-bench")  # fmt: skip


def verdict(d: BundleData) -> tuple[str, str, list[_Check]]:
    """(status, one-line verdict without markup, checks). Status is FAIL when a check failed,
    PENDING when none failed but the engine itself was not checked yet, else PASS."""
    checks = _checks(d)
    failed = [c for c in checks if c.ok is False]
    warnings = [c for c in checks if c.ok is None]
    m = d.manifest
    head = (
        f"{_g(m, 'model.name', '?')} on {_g(m, 'target.profile', '?')} "
        f"({m.get('backend', '?')} {m.get('precision', '?')})"
    )
    if failed:
        bits = ["failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)]
    else:
        n = sum(1 for c in checks if c.ok)
        bits = [f"{n} check(s) passed" if n else "no pass/fail criteria"]
    bench = _bench_results(d)
    if bench:
        bits.append(f"p50 {_f(_g(bench[0][1], 'latency.p50_ms'), '.3g')} ms ({bench[0][0]})")
    if warnings:
        bits.append(f"{len(warnings)} warning(s)")
    pending = None if failed else pending_engine_check(d)
    if pending:
        bits.insert(0, pending)
    status = "FAIL" if failed else "PENDING" if pending else "PASS"
    return status, f"{status} — {head}: " + "; ".join(bits), checks


# --- sections --------------------------------------------------------------------------------


def _sec_summary(d: BundleData, plots: _Plots) -> str:
    m = d.manifest
    status, line, checks = verdict(d)
    cls = {"PASS": "ok", "PENDING": "pending"}.get(status, "bad")
    out = [f'<div class="verdict {cls}">{_e(line)}</div>']
    if not plots.enabled:
        out.append(
            _note("Plots are left out: matplotlib is not installed (pip install matplotlib).")
        )
    eng = _g(m, "parity.engine", {})
    exp = _g(m, "parity.export", {})
    s = _g(d.analysis, "summary") or _g(d.report, "summary", {})
    cfg = _g(m, "engine.config", {})
    precision = str(m.get("precision", "?"))
    if m.get("requested_precision") not in (None, m.get("precision")):
        precision += f" (requested {m['requested_precision']})"
    engine = f"{m.get('backend', '?')}: {', '.join(_g(m, 'engine.files', []))}"
    engine += " (deferred build, completed on the device)" if cfg.get("deferred") else ""
    engine += " (cross-compiled for the board)" if cfg.get("cross_compiled") else ""
    ins = ", ".join(
        f"{i.get('name')}{i.get('shape')} {i.get('dtype')}" for i in m.get("inputs", [])
    )
    outs = ", ".join(f"{o.get('name')}{o.get('shape')}" for o in m.get("outputs", []))
    rows: list[tuple[str, Any]] = [
        ("model", f"{_g(m, 'model.name', '?')} (source {_g(m, 'model.source', '?')})"),
        ("target", f"{_g(m, 'target.profile', '?')}: {_g(m, 'target.description', '')}"),
        ("engine", engine),
        ("precision", precision),
        ("inputs", ins),
        ("outputs", outs),
    ]
    if exp:
        rows.append(("export parity", f"cosine {_f(exp.get('cosine'), '.7f')}, max abs "
                     f"{_f(exp.get('max_abs'), '.2e')} "
                     f"({_g(d.report, 'exporter', '?')} exporter)"))  # fmt: skip
    if eng:
        checked = eng.get("engine_checked", True)
        where = "" if checked else f" ({pending_engine_check(d) or 'ONNX checked here'})"
        text = f" cosine {_f(eng.get('cosine'), '.7f')}, max abs {_f(eng.get('max_abs'), '.2e')}"
        rows.append(
            (
                "engine fidelity" if checked else "ONNX fidelity",
                _Raw(_badge(eng.get("passed")) + _e(text + where)),
            )
        )
    if s:
        rows.append(("compute", f"{_big(s.get('macs'))}MAC, {_big(s.get('params'))} params, "
                     f"{_f(s.get('weight_mb'), '.3g')} MB weights"))  # fmt: skip
        rows.append(("latency (roofline)", _est(f"{_f(s.get('estimated_latency_ms'), '.3g')} ms",
                     "estimate from datasheet peaks, not a measurement")))  # fmt: skip
    for name, r in _bench_results(d):
        rows.append((f"latency ({name})", f"p50 {_f(_g(r, 'latency.p50_ms'))} ms, p99 "
                     f"{_f(_g(r, 'latency.p99_ms'))} ms over {_g(r, 'latency.n', '?')} runs, "
                     f"{_g(r, 'settings.threads', 'default')} thread(s), "
                     f"{_g(r, 'machine.cpu_model', '?')}"))  # fmt: skip
    for name, r in d.results_of("layers"):
        rows.append((f"per-layer total ({name})", f"{_f(r.get('total_ms'))} ms in "
                     f"{len(_dicts(r.get('layers')))} nodes "
                     f"({r.get('backend', '?')} profiler)"))  # fmt: skip
    q = _g(d.report, "quantization")
    if isinstance(q, dict):
        rows.append(("quantization", f"{q.get('pass', '?')}: held-out {q.get('metric', '?')} "
                     f"{_f(_g(q, 'final.drop'))} (bound {q.get('max_accuracy_drop')})"
                     + ("; ROLLED BACK to fp32" if q.get("rolled_back") else "")))  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        rows.append((f"closed loop ({name})", "; ".join(
            f"{e.get('label')}: success {_pct(_g(e, 'success.rate'), 0)}, return "
            f"{_f(_g(e, 'return.mean'))}" for e in _dicts(r.get("engines")))))  # fmt: skip
    # No folder name: a bundle restored from the build cache keeps its report.
    rows.append(("bundle", f"written {m.get('created_utc', '?')} by robopt "
                 f"{m.get('robopt_version', '?')}"))  # fmt: skip
    out.append(_kv(rows))
    if checks:
        out.append(_h3("Criteria"))
        result: Col = (
            "result",
            lambda c: _badge(c.ok) if c.ok is not None else _warn("warning"),
            "",
        )
        out.append(_table(checks, [("check", lambda c: c.name, ""), result,
                                   ("detail", lambda c: c.detail, "")]))  # fmt: skip
    if d.problems:
        out.append(_h3("Unreadable files"))
        out.append("<ul>" + "".join(f"<li>{_e(p)}</li>" for p in d.problems) + "</ul>")
    return "".join(out)


def _sec_graphs(d: BundleData, plots: _Plots) -> str:
    """A multi-graph bundle (a VLA): each graph's precision, weights and check against torch;
    fidelity in action terms; the action error per dimension."""
    graphs = _dicts(d.manifest.get("graphs"))
    if not graphs:
        return _note("A single-graph bundle (no driver loop).")
    checks = _g(d.report, "graph_checks", {}) or {}
    rows = [(g.get("name"), g.get("precision"), (g.get("weight_bytes") or 0) / 2**20,
             _g(checks, f"{g.get('name')}.cosine"),
             "pass" if _g(checks, f"{g.get('name')}.passed") else "differs")
            for g in graphs]  # fmt: skip
    cols: list[Col] = [
        ("graph", lambda r: r[0], ""),
        ("precision", lambda r: r[1], ""),
        ("weights MiB", lambda r: r[2], ".1f"),
        ("cosine vs torch", lambda r: r[3], ".6f"),
        ("check", lambda r: r[4], ""),
    ]
    kind = _g(d.manifest, "driver.kind", "?")
    out = [
        _note(f"Driver {kind}: one control step runs the graphs below in a loop."),
        _table(rows, cols),
    ]
    f = _g(d.manifest, "parity.actions", {}) or {}
    if f:
        out.append(_kv([
            ("action tokens", f"{_pct(f.get('token_agreement'))} agree with the fp32 torch model "
                              f"({f.get('observations')} held-out observations; first token "
                              f"{_pct(f.get('first_token_agreement'))})"),
            ("action L2", f"mean {_f(_g(f, 'action_l2.mean'))}, max {_f(_g(f, 'action_l2.max'))}"),
            ("gripper flips", f.get("gripper_flips")),
        ]))  # fmt: skip
        mae = f.get("action_mae_per_dim") or []
        if mae and plots.enabled:

            def draw(fig: Any) -> None:
                ax = fig.subplots()
                _barh(ax, [f"dim {i}" for i in range(len(mae))], mae)
                ax.set_xlabel("mean absolute action error vs fp32 torch")

            out.append(plots.svg(draw, 0.22 * len(mae) + 1.1, "action error per dimension"))
    return "".join(out)


def _sec_passes(d: BundleData, plots: _Plots) -> str:
    r = d.report
    if not r:
        return _missing("Not present: report.json is missing; recompile the bundle.")
    out = [_note(f"Exported with the {r['exporter']} exporter from {r.get('source', '?')}.")
           if r.get("exporter") else ""]  # fmt: skip
    out += [_note(str(n)) for n in r.get("notes") or []]
    if r.get("passes"):
        out.append(_table(r["passes"], [("pass", "name", ""), ("seconds", "seconds", ".3f"),
                                        ("modified", "modified", ""),
                                        ("nodes before", "nodes_before", "n"),
                                        ("nodes after", "nodes_after", "n")]))  # fmt: skip
    simp = r.get("simplify")
    if isinstance(simp, dict):
        delta = simp.get("op_delta") or {}
        out.append(_note(f"simplify: {simp.get('tool', '?')} {simp.get('tool_version', '')}, "
                         f"nodes {simp.get('nodes_before', '?')} -> {simp.get('nodes_after', '?')}"
                         + (f", op changes {json.dumps(delta, sort_keys=True)}"
                            if delta else "")))  # fmt: skip
    stages = [(k, v) for k, v in (r.get("stage_seconds") or {}).items() if _isnum(v)]
    if stages:
        out.append(_h3("Stages"))
        out.append(
            _table(stages, [("stage", lambda s: s[0], ""), ("seconds", lambda s: s[1], ".3f")])
        )

        def draw(fig: Any) -> None:
            ax = fig.subplots()
            _barh(ax, [k for k, _ in stages], [v for _, v in stages], fmt=".2f")
            ax.set_xlabel("seconds")
            ax.set_title("Compile stages (wall time)")

        out.append(plots.svg(draw, 0.3 * len(stages) + 1.0, "compile stage times"))
    if _g(d.analysis, "timing"):
        out.append(_h3("Analysis passes"))
        out.append(
            _table(d.analysis["timing"], [("pass", "name", ""), ("seconds", "seconds", ".4f")])
        )
    return "".join(out)


def _sec_analysis(d: BundleData, plots: _Plots) -> str:
    a = d.analysis
    if not a:
        return _missing("Not present: analysis.json is missing; recompile the bundle.")
    s, roof = a.get("summary") or {}, a.get("roofline") or {}
    unsupported = ", ".join(f"{b}: {'not checked' if n is None else n}"
                            for b, n in (s.get("unsupported_ops") or {}).items())  # fmt: skip
    out = [
        _kv([
            ("nodes", s.get("nodes")),
            ("MACs / FLOPs", f"{_big(s.get('macs'))} / {_big(s.get('flops'))}"),
            ("parameters", _big(s.get("params"))),
            ("weights", f"{_f(s.get('weight_mb'))} MB"),
            ("peak activations", _est(f"{_f(s.get('peak_activation_mb'))} MB", "estimate")),
            ("memory footprint", _est(f"{_f(_mb(_g(a, 'memory.footprint_bytes')))} MB")),
            ("latency (roofline)", _est(
                f"{_f(roof.get('latency_ms'))} ms on {roof.get('profile', '?')} at "
                f"{roof.get('precision', '?')}, {roof.get('threads', '?')} thread(s): "
                f"{roof.get('compute_bound_nodes', '?')} compute-bound, "
                f"{roof.get('memory_bound_nodes', '?')} memory-bound nodes", "estimate")),
            ("unsupported ops", unsupported),
        ])
    ]  # fmt: skip
    if roof.get("method"):
        out.append(_note(f"Roofline method: {roof['method']}"))
    nodes = [n for n in _dicts(roof.get("nodes")) if _isnum(n.get("time_ms"))]
    nodes.sort(key=lambda n: (-n["time_ms"], str(n.get("name"))))
    total = sum(n["time_ms"] for n in nodes) or 1.0
    if nodes:
        out.append(_h3(f"Top {min(10, len(nodes))} nodes by estimated time"))
        out.append(_table(nodes[:10], [
            ("node", "name", ""), ("op", "op_type", ""), ("FLOPs", "flops", "big"),
            ("bytes moved", "bytes_moved", "big"),
            ("estimate µs", lambda n: n["time_ms"] * 1e3, ".3g"),
            ("share", lambda n: n["time_ms"] / total, "%"), ("bound", "bound", "")]))  # fmt: skip
        out.append(_roofline_plot(plots, roof, nodes))
    by_op = _g(a, "flops.by_op", {})
    if _g(a, "op-histogram.ops"):
        out.append(_h3("Operators"))
        out.append(_table(a["op-histogram"]["ops"], [
            ("op", "key", ""), ("count", "count", "n"),
            ("MACs", lambda o: _g(by_op, f"{o.get('key')}.macs"), "big")]))  # fmt: skip
    return "".join(out)


def _roofline_plot(plots: _Plots, roof: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    peak, bw = roof.get("peak_gops"), roof.get("bandwidth_gbs")
    pts = [
        (n["intensity_flops_per_byte"], n["flops"] / (n["time_ms"] * 1e6), n.get("bound"))
        for n in nodes
        if _isnum(n.get("intensity_flops_per_byte")) and n["intensity_flops_per_byte"] > 0
        and _isnum(n.get("flops")) and n["flops"] > 0 and n["time_ms"] > 0
    ]  # fmt: skip
    if not pts or not (_isnum(peak) and _isnum(bw) and peak > 0 and bw > 0):
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
        ax.set_title(_t(f"Roofline estimate: {roof.get('profile')} ({roof.get('precision')}), "
                        f"peak {peak:.4g} GOP/s, {bw:.4g} GB/s"))  # fmt: skip
        ax.legend(loc="lower right", fontsize=7.5)

    return plots.svg(draw, 3.4, "roofline estimate", "Each node at its estimated attainable rate: "
                     "estimates from the board profile, not measurements.")  # fmt: skip


_FIGURE_COLS: list[Col] = [
    ("figures", lambda x: x[0], ""),
    ("drop", lambda x: _g(x[1], "drop"), ".4g"),
    ("metric", lambda x: _g(x[1], "metric"), ""),
    ("cosine", lambda x: _g(x[1], "cosine"), ".6f"),
    ("centred cosine", lambda x: _g(x[1], "centred_cosine"), ".4f"),
    ("max abs", lambda x: _g(x[1], "max_abs"), ".3g"),
    ("samples", lambda x: _g(x[1], "samples"), "n"),
]
_TASK_COLS: list[Col] = [
    ("task return", lambda x: _g(x[1], "closed_loop.return"), ".4g"),
    ("task success", lambda x: _g(x[1], "closed_loop.success"), "%0"),
]


def _figure_table(figs: list[tuple[str, Any]]) -> str:
    task = any(isinstance(_g(f, "closed_loop"), dict) for _, f in figs)
    return _table(figs, _FIGURE_COLS + (_TASK_COLS if task else []))


def _sec_quant(d: BundleData, plots: _Plots) -> str:
    q = _g(d.report, "quantization")
    if not isinstance(q, dict):
        return _missing(
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
        ("weights", f"{_f(_mb(pr.get('weight_bytes_before')))} MB -> "
                    f"{_f(_mb(pr.get('weight_bytes_after')))} MB"
                    if "weight_bytes_before" in pr else None),
        ("mixed precision", f"{'met' if mp.get('met') else 'not met'} with {len(fp32)} layer(s) "
                            f"in fp32 after {mp.get('evaluations', '?')} evaluations: "
                            f"{', '.join(fp32) or '-'}" if mp else None),
        ("result", _Raw(_badge(False, no="rolled back to fp32") + ": "
                        + _e(q.get("rollback_reason", ""))) if q.get("rolled_back")
         else _badge(True, "kept")),
    ]  # fmt: skip
    out = [_kv(rows)]
    out += [_note(str(q[k])) for k in ("data_note", "evaluation_note", "mixed_precision_note")
            if q.get(k)]  # fmt: skip
    figs = [("full quantization", q.get("full_quantization"))]
    if isinstance(q.get("surgery_requantization"), dict):
        figs.append(("requantized for surgery", _g(q, "surgery_requantization.figures")))
    out.append(_figure_table([*figs, ("final (the bundle)", q.get("final"))]))
    if mp.get("steps"):
        out.append(_h3("Mixed-precision search"))
        out.append(_table(mp["steps"], [("layers in fp32", "fp32_nodes", "n"),
                                        ("held-out drop", "drop", ".4g")]))  # fmt: skip
    return "".join(out)


def _sec_compress(d: BundleData, plots: _Plots) -> str:
    c = _g(d.report, "compression")
    if not isinstance(c, dict):
        return _missing(
            "Not present: no pruning or low-rank factorization (robopt-compile ... --prune "
            "channels:0.5 or --low-rank energy=0.95 compresses)."
        )
    bound = c.get("max_accuracy_drop")
    out = [_kv([
        ("metric", c.get("metric")),
        ("bound", bound if bound is not None else "none (steps are kept whatever they cost)"),
        ("data", f"{_g(c, 'data.source', '?')}: {_g(c, 'data.holdout_count', '?')} held-out "
                 "samples"),
    ])]  # fmt: skip
    if c.get("data_note"):
        out.append(_note(str(c["data_note"])))

    def change(key: str) -> Callable[[Any], str]:
        def get(s: Any) -> str:
            t = _g(s, "report.totals", {})
            return f"{_big(t[key + '_before'])} -> {_big(t.get(key + '_after'))}" if t.get(
                key + "_before") else "–"  # fmt: skip

        return get

    def distilled(s: Any) -> str:
        steps = _g(s, "distillation.steps")
        before = _f(_g(s, "figures_before_distillation.drop"))
        return f"{steps} steps (from {before})" if steps is not None else "–"

    steps = _dicts(c.get("steps"))
    out.append(_table(steps, [
        ("step", "pass", ""), ("MACs", change("macs"), ""), ("params", change("params"), ""),
        ("drop before", "figures_before.drop", ".4g"), ("drop after", "figures.drop", ".4g"),
        ("centred cosine", "figures.centred_cosine", ".4f"), ("distilled", distilled, ""),
        ("result", lambda s: not s.get("rolled_back"), "ok")]))  # fmt: skip
    for s in steps:
        if s.get("rollback_reason"):
            out.append(_note(str(s["rollback_reason"])))
        if _g(s, "report.note"):
            out.append(_note(f"{s.get('pass')}: {s['report']['note']}"))
    if isinstance(c.get("final"), dict):
        out.append(_figure_table([("final (the bundle)", c["final"])]))
    return "".join(out)


def _sec_latency(d: BundleData, plots: _Plots) -> str:
    bench = _bench_results(d)
    if not bench:
        return _missing(
            f"Not measured: run robopt-bench {d.where} --json and save the output as "
            f"{d.where}/results/bench-NAME.json (robopt_compile.bench.results.save_result)."
        )
    out = [_table(bench, [
        ("result", lambda x: x[0], ""),
        ("threads", lambda x: _g(x[1], "settings.threads", "default"), "n"),
        ("runs", lambda x: _g(x[1], "latency.n"), "n"),
        *((h, lambda x, k=k: _g(x[1], f"latency.{k}"), f) for h, k, f in (
            ("p50 ms", "p50_ms", ".4g"), ("p90 ms", "p90_ms", ".4g"), ("p99 ms", "p99_ms", ".4g"),
            ("mean ms", "mean_ms", ".4g"), ("stdev ms", "stdev_ms", ".3g"),
            ("max ms", "max_ms", ".4g"), ("items/s", "throughput_per_s", ".4g"))),
        ("fidelity", lambda x: _g(x[1], "fidelity.passed"), "ok")])]  # fmt: skip
    out.append(_table(bench, [
        ("result", lambda x: x[0], ""), ("machine", lambda x: _g(x[1], "machine.cpu_model"), ""),
        ("engine load ms", lambda x: _g(x[1], "timing.engine_load_ms"), ".4g"),
        ("first inference ms", lambda x: _g(x[1], "timing.first_infer_ms"), ".4g"),
        ("peak RSS MiB", lambda x: _g(x[1], "memory.peak_rss_mib"), ".4g"),
        ("RSS growth MiB", lambda x: _g(x[1], "memory.rss_increase_mib"), ".3g")]))  # fmt: skip
    series = [
        (n, [float(x) for x in r["latency"]["samples_ms"] if _isnum(x)], r)
        for n, r in bench
        if isinstance(_g(r, "latency.samples_ms"), list)
    ]
    series = [s for s in series if s[1]][:5]
    if not series:
        out.append(_missing(
            "Latency histogram not measured: no result keeps its raw samples; benchmark with "
            "robopt_compile.bench.harness.run_benchmark(bundle, keep_samples=True) and save it "
            "with robopt_compile.bench.results.save_result(bundle, 'bench-NAME', result)."
        ))  # fmt: skip
        return "".join(out)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        lo = min(min(s) for _, s, _ in series)
        hi = max(max(s) for _, s, _ in series)
        bins = [lo + (hi - lo) * i / 60 for i in range(61)] if hi > lo else 10
        one = len(series) == 1
        for i, (name, s, r) in enumerate(series):
            c = f"C{i}"
            ax.hist(s, bins=bins, histtype="stepfilled" if one else "step", color=c,
                    alpha=0.75 if one else 1.0, lw=1.2,
                    label=_t(f"{name} (n={len(s)})"))  # fmt: skip
            for key, style in (("p50_ms", "--"), ("p99_ms", ":")):
                v = _g(r, f"latency.{key}")
                if _isnum(v):
                    who = "" if one else name + " "
                    ax.axvline(v, color="#333" if one else c, ls=style, lw=1,
                               label=_t(f"{who}{key[:3]} {v:.3g} ms"))  # fmt: skip
        deadline = next((_g(r, "control.deadline_ms") for _, _, r in series
                         if _isnum(_g(r, "control.deadline_ms"))), None)  # fmt: skip
        if deadline is not None and deadline <= hi * 1.5:
            ax.axvline(deadline, color="#b42318", lw=1.4, label=f"deadline {deadline:.3g} ms")
        ax.set(xlabel="latency per run (ms)", ylabel="runs")
        ax.set_title("Latency distribution (timed runs after warm-up)")
        ax.legend(fontsize=7.5)

    out.append(plots.svg(draw, 3.2, "latency histogram"))
    return "".join(out)


def _sec_acc_lat(d: BundleData, plots: _Plots) -> str:
    groups = _accuracy_points(d)
    if not groups:
        return _missing(
            "Not measured: no candidate has both an accuracy figure and a measured latency. "
            f"Run robopt-compile evaluate {d.where} (closed loop, with latency), or benchmark "
            "the bundle (results/bench-*.json) so its held-out accuracy gets a latency."
        )
    out = []
    cols: list[Col] = [("candidate", "label", ""), ("latency p50 ms", "latency_ms", ".4g"),
                       ("accuracy", "value", ".4g"), ("95% CI", "ci", "ci")]  # fmt: skip
    for g, pts in groups.items():
        out += [_h3(g), _table([p.__dict__ for p in pts], cols)]
    items = list(groups.items())[:4]

    def draw(fig: Any) -> None:
        axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
        for ax, (g, pts) in zip(axes, items, strict=True):
            for i, p in enumerate(pts):
                yerr = [[p.value - p.ci[0]], [p.ci[1] - p.value]] if p.ci else None
                ax.errorbar([p.latency_ms], [p.value], yerr=yerr, fmt="o", color=f"C{i % 10}",
                            capsize=3, ms=5)  # fmt: skip
                ax.annotate(_t(p.label, 40), (p.latency_ms, p.value), textcoords="offset points",
                            xytext=(6, 3 + 9 * (i % 3)), fontsize=7)  # fmt: skip
            ax.set(xlabel="latency p50 (ms)")
            ax.set_title(_t(g, 90))
            ax.margins(x=0.3, y=0.25)

    out.append(plots.svg(draw, 2.5 * len(items) + 0.3, "accuracy vs latency",
                         "One point per engine or candidate with both figures; error bars are "
                         "95% confidence intervals where measured."))  # fmt: skip
    return "".join(out)


def _sec_layers(d: BundleData, plots: _Plots) -> str:
    res = d.results_of("layers")
    if not res:
        return _missing(
            f"Not measured: run robopt-compile report {d.where} on a machine where the engine "
            "runs (it first profiles each layer with the backend's own profiler)."
        )
    est = {str(n.get("name")): n.get("time_ms") for n in _g(d.analysis, "roofline.nodes", [])}
    out = []
    for name, r in res:
        layers = [x for x in _dicts(r.get("layers")) if _isnum(x.get("ms"))]
        top = layers[:TOP_N]
        by_op = [(k, v) for k, v in (r.get("by_op_type") or {}).items() if isinstance(v, dict)]
        extra = "exec_type" if any("exec_type" in x for x in top) else "provider"
        out.append(_h3(f"{name}: {r.get('backend', '?')}"))
        out.append(_kv([
            ("measured", f"{r.get('runs', '?')} runs after {r.get('warmup', '?')} warm-up, "
                         f"{r.get('threads') or 'default'} thread(s)"),
            ("total", f"{_f(r.get('total_ms'))} ms in nodes; profiled run "
                      f"{_f(r.get('run_ms'))} ms"),
            ("method", r.get("method")), ("runtime", r.get("runtime_version"))]))  # fmt: skip
        out.append(_table(top, [
            ("node", "name", ""), ("op", "op_type", ""), ("ms", "ms", ".4g"),
            ("share", "share", "%"), (extra, extra, ""),
            ("graph node", lambda x: x.get("graph_node") or "(runtime's own)", ""),
            ("roofline estimate ms", lambda x: est.get(str(x.get("graph_node"))), ".3g"),
        ]))  # fmt: skip
        if len(layers) > TOP_N:
            rest = sum(x["ms"] for x in layers[TOP_N:])
            out.append(_note(f"{len(layers) - TOP_N} more nodes take {rest:.4g} ms together."))

        def draw(fig: Any, top: list[Any] = top, by_op: list[Any] = by_op) -> None:
            left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
            _barh(left, [_short(f"{x['name']} ({x.get('op_type')})", 44) for x in top],
                  [x["ms"] for x in top])  # fmt: skip
            left.set(xlabel="ms per run", title=f"Top {len(top)} nodes by measured time")
            ops = by_op[:12]
            _barh(right, [k for k, _ in ops], [100 * float(v.get("share") or 0) for _, v in ops],
                  color="#55a868", fmt=".1f")  # fmt: skip
            right.set(xlabel="% of node time", title="Share by op type")

        out.append(plots.svg(draw, 0.24 * max(len(top), 4) + 1.1, f"per-layer time {name}",
                             "Measured with the backend's profiler on the bundle's "
                             "engine."))  # fmt: skip
        if by_op:
            out.append(_table(by_op, [
                ("op type", lambda x: x[0], ""), ("nodes", lambda x: x[1].get("layers"), "n"),
                ("ms", lambda x: x[1].get("ms"), ".4g"),
                ("share", lambda x: x[1].get("share"), "%")]))  # fmt: skip
    return "".join(out)


def _sec_sensitivity(d: BundleData, plots: _Plots) -> str:
    q = _g(d.report, "quantization")
    if not isinstance(q, dict):
        return _missing("Not measured: the bundle is not quantized, so no layer has a sensitivity.")
    rows = [r for r in _dicts(q.get("layers")) if _isnum(r.get("sensitivity"))]
    if not rows:
        return _missing(
            "Not measured: the bound was met with every layer quantized, so no sweep ran; "
            "recompile with --measure-sensitivity to measure each layer."
        )
    rows.sort(key=lambda r: (-r["sensitivity"], str(r.get("node"))))
    metric = q.get("metric", "drop")
    top = rows[:20]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        colors = ["#c44e52" if r.get("precision") == "fp32" else "#4c72b0" for r in top]
        _barh(ax, [_short(f"{r.get('node')} ({r.get('op_type')})", 48) for r in top],
              [r["sensitivity"] for r in top], color=colors, fmt=".2g")  # fmt: skip
        ax.axvline(0, color="#333", lw=0.8)
        ax.set_xlabel(_t(f"fall in held-out {metric} when the layer alone is fp32"))
        ax.set_title("Per-layer quantization sensitivity (red: kept in fp32)")

    return "".join([
        _note(f"Sensitivity = full-quantization drop minus the drop with only that layer back in "
              f"fp32 ({metric}, held-out data); {len(rows)} layers measured, the top "
              f"{len(top)} plotted."),
        plots.svg(draw, 0.22 * len(top) + 1.1, "per-layer sensitivity"),
        _table(rows, [("layer", "node", ""), ("op", "op_type", ""), ("precision", "precision", ""),
                      ("sensitivity", "sensitivity", ".4g"),
                      ("drop if only this fp32", "drop_with_only_this_fp32", ".4g")]),
    ])  # fmt: skip


def _success_text(e: dict[str, Any], episodes: Any) -> str:
    n = len(_g(e, "per_seed.success", [])) or episodes or "?"
    return f"{_pct(_g(e, 'success.rate'), 0)} ({_g(e, 'success.count', '?')}/{n})"


def _sec_closed_loop(d: BundleData, plots: _Plots) -> str:
    res = d.results_of("closed_loop")
    if not res:
        return _missing(
            f"Not measured: run robopt-compile evaluate {d.where} (seeded episodes of the "
            "model's task, original vs optimized)."
        )
    out = []
    for name, r in res:
        task = r["task"] if isinstance(r.get("task"), dict) else {"name": r.get("task")}
        out.append(_h3(f"{name}: {task.get('name', '?')}"))
        out.append(_kv([
            ("task", task.get("description")), ("success rule", task.get("success_rule")),
            ("max steps", task.get("max_steps")),
            ("episodes", f"{r.get('episodes', '?')} per engine, same seeds"),
            ("paired-test metric", r.get("metric"))]))  # fmt: skip
        engines = _dicts(r.get("engines"))
        out.append(_table(engines, [
            ("engine", "label", ""), ("role", "role", ""),
            ("precision / backend", lambda e: f"{e.get('precision')} / {e.get('backend')}", ""),
            ("p50 ms", "latency_ms.p50", ".4g"), ("p99 ms", "latency_ms.p99", ".4g"),
            ("return mean", "return.mean", ".4g"), ("return 95% CI", "return.ci95", "ci"),
            ("success", partial(_success_text, episodes=r.get("episodes")), ""),
            ("success 95% CI", "success.ci95", "ci2")]))  # fmt: skip
        pairs = _dicts(r.get("paired"))
        if pairs:
            out.append(_table(pairs, [
                ("candidate", "candidate", ""), ("vs", "reference", ""),
                ("return diff", "return_diff.mean", ".4g"), ("95% CI", "return_diff.ci95", "ci"),
                ("success diff", "success_diff.mean", ".3g"),
                ("95% CI", "success_diff.ci95", "ci2"), ("p-value", "p_value", ".3g"),
                ("verdict", lambda p: _verdict_span(p.get("verdict")), "")]))  # fmt: skip
        crit = r.get("criteria")
        if isinstance(crit, dict):
            fails = "; ".join(str(f) for f in crit.get("failures") or [])
            out.append("<p>Criteria: " + _badge(crit.get("passed"), "met", "NOT met") + _e(
                f" (max return drop {_pct(crit.get('max_return_drop'))}, max success drop "
                f"{_f(_x100(crit.get('max_success_drop')), '.1f')} points; measured "
                f"{_pct(crit.get('return_drop'))} and {_f(_x100(crit.get('success_drop')), '.1f')}"
                " points)" + (f": {fails}" if fails else "")) + "</p>")  # fmt: skip
        else:
            out.append(_note("No criteria were set (--max-return-drop / --max-success-drop)."))
        if engines:
            out.append(_closed_loop_plot(plots, name, engines))
    return "".join(out)


def _verdict_span(v: Any) -> _Raw:
    cls = {"worse": "fail", "better": "pass"}.get(str(v))
    return _Raw(f'<span class="{cls}">{_e(v)}</span>' if cls else _e(v or "–"))


def _closed_loop_plot(plots: _Plots, name: str, engines: list[dict[str, Any]]) -> str:
    def draw(fig: Any) -> None:
        for ax, key, val, title in zip(
            fig.subplots(1, 2), ("return", "success"), ("mean", "rate"),
            ("Mean return (95% CI)", "Success rate (95% CI)"), strict=True,
        ):  # fmt: skip
            ys, lo, hi = [], [], []
            for e in engines:
                y, ci = _g(e, f"{key}.{val}"), _g(e, f"{key}.ci95")
                y = float(y) if _isnum(y) else math.nan
                ys.append(y)
                lo.append(max(y - ci[0], 0.0) if _pair(ci) else 0.0)
                hi.append(max(ci[1] - y, 0.0) if _pair(ci) else 0.0)
            x = list(range(len(engines)))
            colors = ["#8c8c8c" if e.get("role") == "reference" else "#4c72b0" for e in engines]
            ax.bar(x, ys, color=colors, yerr=[lo, hi], capsize=4, width=0.6)
            ax.set_xticks(x, [_t(e.get("label", "?"), 30) for e in engines], rotation=12,
                          ha="right")  # fmt: skip
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
            if key == "success":
                ax.set_ylim(0, 1.05)

    return plots.svg(draw, 3.0, f"closed loop {name}", "Grey: the reference (original) engine.")


def _sec_open_loop(d: BundleData, plots: _Plots) -> str:
    res = d.results_of("open_loop")
    if not res:
        return _missing(
            f"Not measured: run robopt-compile evaluate {d.where} --dataset OBSERVATIONS.npz "
            "(recorded observations through the original and the optimized engine)."
        )

    def chunk(e: dict[str, Any]) -> str:
        cd = e.get("chunk_divergence")
        if not isinstance(cd, dict):
            return "–"
        first, last = _f(cd.get("first"), ".3g"), _f(cd.get("last"), ".3g")
        return f"{first} -> {last} (x{_f(cd.get('growth'), '.3g')})"

    out = []
    for name, r in res:
        out.append(_h3(f"{name}: {r.get('samples', '?')} samples"))
        if r.get("dataset"):
            out.append(_note(f"Dataset: {r['dataset']}"))
        engines = _dicts(r.get("engines"))
        out.append(_table(engines, [
            ("engine", "label", ""), ("role", "role", ""), ("L2 mean", "l2.mean", ".4g"),
            ("L2 p95", "l2.p95", ".4g"), ("L2 max", "l2.max", ".4g"),
            ("relative L2", "l2.relative_mean", "%2"), ("max deviation", "max_deviation", ".4g"),
            ("gripper flips", "gripper_flips", "n"), ("chunk divergence", chunk, "")]))  # fmt: skip
        dims = [
            e for e in engines if isinstance(_g(e, "per_dim.mae"), list) and e["per_dim"]["mae"]
        ]
        if dims:
            out.append(_open_loop_plot(plots, name, dims))
    return "".join(out)


def _open_loop_plot(plots: _Plots, name: str, engines: list[dict[str, Any]]) -> str:
    def num(v: Any) -> float:
        return float(v) if _isnum(v) else math.nan

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        n = max(len(e["per_dim"]["mae"]) for e in engines)
        width = 0.8 / len(engines)
        for i, e in enumerate(engines):
            mae = [num(v) for v in e["per_dim"]["mae"]]
            mx = _g(e, "per_dim.max_abs", [])
            x = [k + (i - (len(engines) - 1) / 2) * width for k in range(len(mae))]
            ax.bar(
                x,
                mae,
                width=width * 0.95,
                color=f"C{i}",
                label=_t(e.get("label", "?"), 40) + " MAE",
            )
            if isinstance(mx, list) and len(mx) == len(mae):
                ax.plot(x, [num(v) for v in mx], "v", color=f"C{i}", ms=5, label="max abs")
        ax.set_xticks(list(range(n)), [str(k) for k in range(n)])
        ax.set(xlabel="action dimension", ylabel="absolute error")
        ax.set_title("Open-loop action error per dimension (bars: mean, triangles: max)")
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=7.5)

    return plots.svg(draw, 3.0, f"open loop {name}")


def _sec_control(d: BundleData, plots: _Plots) -> str:
    res = _control_results(d)
    if not res:
        return _missing(
            f"Not measured: run robopt-bench {d.where} --control-rate HZ --json and save the "
            "result under results/ (deadline misses, release jitter, latency tail at a rate)."
        )
    out = []
    for name, c in res:
        lat = c.get("latency_ms") if isinstance(c.get("latency_ms"), dict) else {}
        jit = c.get("jitter_ms") if isinstance(c.get("jitter_ms"), dict) else {}
        rss = c.get("rss_mib") if isinstance(c.get("rss_mib"), dict) else {}
        misses = c.get("misses")
        streak = c.get("longest_miss_streak")

        def opt(key: str, fmt: str = ".4g", unit: str = " ms", c: dict[str, Any] = c) -> Any:
            return _f(c[key], fmt, unit) if key in c else None

        out.append(_h3(name))
        out.append(_kv([
            ("rate", f"{_f(c.get('rate_hz'), 'g')} Hz, deadline {_f(c.get('deadline_ms'))} ms"),
            ("deadline misses", _Raw(
                _badge(misses == 0 if _isnum(misses) else None, "none", "missed")
                + _e(f" {misses} of {c.get('ticks', c.get('runs', '?'))} "
                     f"({_pct(c.get('miss_fraction'), 2)})"
                     + (f", longest streak {streak}" if _isnum(streak) else "")))),
            ("latency ms", ", ".join(f"{k} {_f(v)}" for k, v in lat.items()) or None),
            ("release jitter ms", ", ".join(f"{k} {_f(v)}" for k, v in jit.items()) or None),
            ("worst overrun", opt("worst_overrun_ms")), ("p99 headroom", opt("p99_headroom_ms")),
            ("utilisation", _pct(c["utilisation"]) if "utilisation" in c else None),
            ("cold start", opt("cold_start_ms")), ("first warm inference", opt("warm_first_ms")),
            ("RSS MiB", f"start {_f(rss.get('start'))}, end {_f(rss.get('end'))}, growth "
                        f"{_f(rss.get('growth'), '.3g')}" if rss else None)]))  # fmt: skip
        pts = [(k, float(v)) for k, v in lat.items() if _isnum(v) and k != "mean"]
        if pts and _isnum(c.get("deadline_ms")):

            def draw(
                fig: Any, pts: list[tuple[str, float]] = pts, dl: float = c["deadline_ms"]
            ) -> None:
                ax = fig.subplots()
                bars = ax.bar([k for k, _ in pts], [v for _, v in pts], color="#4c72b0", width=0.5)
                ax.bar_label(bars, labels=[f"{v:.3g}" for _, v in pts], fontsize=7.5)
                ax.axhline(dl, color="#b42318", lw=1.2, label=f"deadline {dl:.3g} ms")
                ax.set(ylabel="latency (ms)", title="Control-loop latency percentiles vs deadline")
                ax.grid(axis="x", visible=False)
                ax.legend(fontsize=7.5)

            out.append(plots.svg(draw, 2.4, f"control loop {name}"))
    return "".join(out)


def _sec_remote(d: BundleData, plots: _Plots) -> str:
    res = d.results_of("remote")
    if not res:
        return _missing(
            "Not measured: no remote results; benchmark on the robot over the network "
            "(robopt-bench serve there, then a remote run from here) to add results/remote-*.json."
        )

    def server(x: Any) -> str:
        return _no_scheme(_g(x[1], "remote.host") or _g(x[1], "remote.url", "?"))

    return _table(res, [
        ("result", lambda x: x[0], ""), ("server", server, ""),
        ("machine", lambda x: f"{_g(x[1], 'machine.cpu_model', '?')} "
                              f"({_g(x[1], 'machine.arch', '?')})", ""),
        ("runtime", lambda x: f"{_g(x[1], 'machine.runtime', '?')} "
                              f"{_g(x[1], 'machine.runtime_version', '')}", ""),
        ("p50 ms", lambda x: _g(x[1], "latency.p50_ms"), ".4g"),
        ("p99 ms", lambda x: _g(x[1], "latency.p99_ms"), ".4g"),
        ("fidelity", lambda x: _g(x[1], "fidelity.passed"), "ok"),
        ("job", lambda x: _g(x[1], "remote.job_id"), "")])  # fmt: skip


def _sec_versions(d: BundleData, plots: _Plots) -> str:
    tv = d.manifest.get("tool_versions") or {}
    out = [_table(sorted(tv.items()), [("tool (at build)", lambda x: x[0], ""),
                                       ("version", lambda x: x[1], "")])
           if tv else _missing("Not present: the manifest lists no tool versions.")]  # fmt: skip
    built = {k: v for k, v in _g(d.manifest, "engine.config", {}).items() if k.endswith("_version")}
    if built:
        out.append(_note("Engine built with " + ", ".join(f"{k} {v}" for k, v in built.items())))
    bench = _bench_results(d)
    if bench:
        out.append(_table(bench, [("measured in", lambda x: x[0], "")] + [
            (h, lambda x, k=k: _g(x[1], f"machine.{k}"), "")
            for h, k in (("runtime", "runtime"), ("version", "runtime_version"),
                         ("python", "python"), ("numpy", "numpy"),
                         ("platform", "platform"))]))  # fmt: skip
    return "".join(out)


_SECTION_FUNCS: dict[str, Callable[[BundleData, _Plots], str]] = {
    "summary": _sec_summary,
    "graphs": _sec_graphs,
    "passes": _sec_passes,
    "analysis": _sec_analysis,
    "quantization": _sec_quant,
    "compression": _sec_compress,
    "latency": _sec_latency,
    "accuracy-latency": _sec_acc_lat,
    "layers": _sec_layers,
    "sensitivity": _sec_sensitivity,
    "closed-loop": _sec_closed_loop,
    "open-loop": _sec_open_loop,
    "control-loop": _sec_control,
    "remote": _sec_remote,
    "versions": _sec_versions,
}


def render_html(d: BundleData) -> str:
    """The whole self-contained HTML document."""
    plots = _Plots()
    m = d.manifest
    title = (
        f"robopt report: {_g(m, 'model.name', '?')} on {_g(m, 'target.profile', '?')} "
        f"({m.get('backend', '?')} {m.get('precision', '?')})"
    )
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in SECTIONS) + "</nav>",
    ]
    for anchor, heading in SECTIONS:
        try:
            body = _SECTION_FUNCS[anchor](d, plots)
        except Exception as exc:  # a malformed result must not cost the rest of the report
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            body = _missing(
                f"Not shown: this section could not be built from the bundle's files "
                f"({type(exc).__name__}: {msg}); check the result files it reads."
            )
        parts.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>{body}</section>')
    parts.append(
        "<footer>Derived from the bundle's manifest.json, report.json, analysis.json and "
        "results/*.json; not covered by the manifest's hashes. Regenerate with "
        "<code>robopt-compile report BUNDLE_FOLDER</code>. Figures marked estimate come "
        "from the board profile's datasheet peaks; every other figure was measured.</footer>"
        "</body></html>\n"
    )
    return "".join(parts)


# --- markdown --------------------------------------------------------------------------------


def render_markdown(d: BundleData) -> str:
    """A concise summary for a PR comment: the verdict line first, then tables; no images."""
    status, line, checks = verdict(d)
    m = d.manifest
    eng = _g(m, "parity.engine", {})
    s = _g(d.analysis, "summary", {})
    head, _, rest = line.partition(" — ")
    mark = {"PASS": "✅", "PENDING": "⏳"}.get(status, "❌")
    out = [f"{mark} **{head}** — {_md_text(rest)}", ""]
    rows = [
        ("model", f"`{_g(m, 'model.name', '?')}` from {_g(m, 'model.source', '?')}"),
        ("target", _g(m, "target.profile", "?")),
        ("engine", f"{m.get('backend', '?')} {m.get('precision', '?')}"),
        (
            "engine fidelity"
            if eng.get("engine_checked", True)
            else "ONNX fidelity (engine not run)",
            f"{_md_ok(eng.get('passed'))} (cosine {_f(eng.get('cosine'), '.6f')})",
        ),
        ("compute", f"{_big(s.get('macs'))}MAC, {_big(s.get('params'))} params"),
        ("roofline latency", f"{_f(s.get('estimated_latency_ms'), '.3g')} ms (estimate)"),
    ]
    for n, r in _bench_results(d):
        rows.append((f"latency {n}", f"p50 {_f(_g(r, 'latency.p50_ms'))} ms, "
                                     f"p99 {_f(_g(r, 'latency.p99_ms'))} ms"))  # fmt: skip
    q = _g(d.report, "quantization")
    if isinstance(q, dict):
        rows.append(("quantization", f"held-out {q.get('metric', '?')} {_f(_g(q, 'final.drop'))} "
                     f"(bound {q.get('max_accuracy_drop')})"
                     + ("; rolled back to fp32" if q.get("rolled_back") else "")))  # fmt: skip
    pair: list[Col] = [("item", lambda x: x[0], ""), ("value", lambda x: x[1], "")]
    out += _md_table(rows, pair)
    if checks:
        result: Col = ("result", lambda c: "warning" if c.ok is None else _badge(c.ok), "")
        out += ["", "**Checks**", ""]
        out += _md_table(checks, [("check", lambda c: c.name, ""), result,
                                  ("detail", lambda c: c.detail, "")])  # fmt: skip
    for name, r in d.results_of("closed_loop"):
        out += ["", f"**Closed loop `{name}`** ({r.get('episodes', '?')} episodes)", ""]
        out += _md_table(_dicts(r.get("engines")), [
            ("engine", "label", ""),
            ("success", partial(_success_text, episodes=r.get("episodes")), ""),
            ("return", "return.mean", ".4g"), ("95% CI", "return.ci95", "ci"),
            ("p50 ms", "latency_ms.p50", ".4g")])  # fmt: skip
        out += [_md_text(f"- {p.get('candidate')} vs {p.get('reference')}: "
                         f"**{p.get('verdict', '?')}** (return diff "
                         f"{_f(_g(p, 'return_diff.mean'), '.3g')}, p = "
                         f"{_f(p.get('p_value'), '.3g')})")
                for p in _dicts(r.get("paired"))]  # fmt: skip
    for name, r in d.results_of("open_loop"):
        out += ["", f"**Open loop `{name}`** ({r.get('samples', '?')} samples)", ""]
        out += _md_table(_dicts(r.get("engines")), [
            ("engine", "label", ""), ("L2 mean", "l2.mean", ".4g"), ("L2 p95", "l2.p95", ".4g"),
            ("max deviation", "max_deviation", ".4g")])  # fmt: skip
    ctl = _control_results(d)
    if ctl:
        out += ["", "**Control loop**", ""]
        out += _md_table(ctl, [
            ("result", lambda x: x[0], ""), ("rate Hz", lambda x: x[1].get("rate_hz"), "g"),
            ("misses", lambda x: f"{x[1].get('misses', '?')}/"
                                 f"{x[1].get('ticks', x[1].get('runs', '?'))}", ""),
            ("p99 ms", lambda x: _g(x[1], "latency_ms.p99"), ".4g")])  # fmt: skip
    for name, r in d.results_of("layers"):
        out += ["", f"**Slowest layers** ({name}, {r.get('backend', '?')}, {_f(r.get('total_ms'))} "
                "ms in all nodes)", ""]  # fmt: skip
        out += _md_table(_dicts(r.get("layers"))[:5], [
            ("node", lambda x: f"`{x.get('name')}`", ""), ("op", "op_type", ""),
            ("ms", "ms", ".4g"), ("share", "share", "%")])  # fmt: skip
    missing = [what for what, have in (
        ("latency (robopt-bench)", _bench_results(d)),
        ("per-layer time (robopt-compile report)", d.results_of("layers")),
        ("closed-loop task success (robopt-compile evaluate)", d.results_of("closed_loop")),
    ) if not have]  # fmt: skip
    if missing:
        out += ["", "Not measured: " + "; ".join(missing) + "."]
    out += ["", "_Full report: `report.html` in the bundle (self-contained, opens offline)._"]
    return "\n".join(out) + "\n"


# --- entry point -----------------------------------------------------------------------------


def write_reports(bundle_dir: Path | str, shown: Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into the bundle folder, atomically.

    Returns:
        ``{"html": path, "md": path}``.

    Raises:
        InputError: the folder is missing or is not a bundle (anything else that is missing
            becomes a "not measured" or "not present" note in the report).
    """
    data = load_bundle(bundle_dir, shown)
    root = Path(bundle_dir)
    html_path = atomic_write_text(root / HTML_NAME, render_html(data))
    md_path = atomic_write_text(root / MD_NAME, render_markdown(data))
    return {"html": html_path, "md": md_path}


def refresh_reports(
    bundle_dir: Path | str,
    profile: bool = True,
    runs: int = 20,
    warn: Callable[[str], None] | None = None,
    shown: Path | None = None,
) -> dict[str, Path]:
    """Measure per-layer times if they are missing (and the engine runs here), then write
    ``report.html`` and ``report.md``. What cannot be measured is a warning, not a failure.

    Raises:
        InputError: the folder is missing or is not a bundle.
    """
    from robopt_compile.bench.results import save_result
    from robopt_compile.errors import RoboptError

    manifest = load_bundle(bundle_dir).manifest  # one-line error for a missing folder
    layers = None
    # Per-layer profiles are of single-graph engines; a multi-graph bundle reports per graph.
    profile = profile and "graphs" not in manifest
    if profile and "layers" not in load_results(bundle_dir):
        from robopt_compile.plan.layer_profile import profile_layers as measure

        threads = (manifest.get("build") or {}).get("threads") or 1
        try:
            layers = save_result(bundle_dir, "layers", measure(bundle_dir, runs, threads))
        except RoboptError as exc:  # a report without per-layer times is still a report
            if warn:  # naming the bundle where it will be, not its staging folder
                text = str(exc).replace(str(bundle_dir), str(shown)) if shown else str(exc)
                warn(f"per-layer times not measured: {text}")
    paths = write_reports(bundle_dir, shown)
    if layers is not None:
        paths["layers"] = layers
    return paths
