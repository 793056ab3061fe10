"""The report package's parts on their own: value formatting, the verdict, and its layering.

These need no compiled bundle: a manifest of a few keys is enough to build ``BundleData``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from robopt_compile.report import BundleData, verdict
from robopt_compile.report.format import (
    Raw,
    big,
    cell_value,
    esc,
    fnum,
    kv_table,
    pct,
    short,
    table,
)

PACKAGE = Path(__file__).resolve().parents[2] / "robopt_compile" / "report"
# Lowest first: a module may import only the modules before it.
LAYERS = (
    "layers",
    "format",
    "data",
    "checks",
    "plots",
    "sections_build",
    "sections_compress",
    "sections_eval",
    "sections_plan",
    "sections_timing",
    "html",
    "markdown",
    "write",
)


def bundle(
    manifest: dict[str, Any], results: dict[str, dict[str, Any]] | None = None
) -> BundleData:
    return BundleData(Path("b"), manifest, None, None, results or {})


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "–"), (float("nan"), "–"), (True, "–"), ("3", "–"), (0.123456, "0.1235")],
)
def test_numbers_missing_or_odd_print_as_a_dash(value: Any, text: str) -> None:
    assert fnum(value) == text
    assert pct(value) == ("–" if text == "–" else "12.3%")


def test_big_short_and_cells() -> None:
    assert (big(1_234_567), big(950), big(None)) == ("1.23 M", "950", "–")
    assert short("a" * 50, 10) == "aaaa…aaaaa"
    row = {"a": {"b": 0.25}, "ci": [1.0, 2.0]}
    assert cell_value(row, ("x", "a.b", "%")) == "25.0%"
    assert cell_value(row, ("x", "ci", "ci2")) == "[1.00, 2.00]"
    assert cell_value(row, ("x", "missing.path", "")) == "–"
    assert cell_value(row, ("x", lambda r: True, "ok")) == '<span class="pass">pass</span>'


def test_escaping_leaves_no_markup_and_no_url() -> None:
    assert esc('<a href="https://x">') == "&lt;a href=&quot;https:&#47;&#47;x&quot;&gt;"
    html = table([{"n": "<b>", "v": 1.5}], [("name", "n", ""), ("value", "v", ".2f")])
    assert "<td>&lt;b&gt;</td>" in html and '<td class="n">1.50</td>' in html
    kv = kv_table([("kept", Raw("<i>x</i>")), ("dropped", None), ("also dropped", "")])
    assert kv == '<table class="kv"><tbody><tr><th>kept</th><td><i>x</i></td></tr></tbody></table>'


def test_verdict_pass_fail_pending() -> None:
    m = {"model": {"name": "m"}, "target": {"profile": "host"}, "backend": "ort",
         "precision": "fp32"}  # fmt: skip
    assert verdict(bundle(m))[:2] == ("PASS", "PASS — m on host (ort fp32): no pass/fail criteria")
    failed = {**m, "parity": {"engine": {"passed": False, "cosine": 0.5, "max_abs": 1.0}}}
    status, line, checks = verdict(bundle(failed))
    assert status == "FAIL" and "engine fidelity at compile time" in line
    assert [c.ok for c in checks] == [False]
    pending = {**m, "parity": {"engine": {"passed": True, "engine_checked": False}}}
    assert verdict(bundle(pending))[0] == "PENDING"
    checked_on_device = {"bench-x": {"latency": {"p50_ms": 1.0}, "fidelity": {"passed": True}}}
    assert verdict(bundle(pending, checked_on_device))[0] == "PASS"


def test_modules_import_only_lower_layers_and_stay_small() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS), "a new module of the report package needs a place in LAYERS"
    for i, name in enumerate(LAYERS):
        source = (PACKAGE / f"{name}.py").read_text()
        assert len(source.splitlines()) <= 600, name
        tree = ast.parse(source)
        assert ast.get_docstring(tree), f"{name}.py says what it is for"
        imported = {
            node.module.rsplit(".", 1)[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("robopt_compile.report.")
        }
        assert imported <= set(LAYERS[:i]), (name, imported - set(LAYERS[:i]))
