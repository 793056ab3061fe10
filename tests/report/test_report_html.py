"""report.html / report.md, per-layer profiling and results/ files, on real small bundles.

Two state-MLP bundles are compiled once (fp32 and int8 with measured sensitivity); the
evaluation results that other commands write are synthetic files in the documented schema.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robopt_compile.bench.results import load_results, result_kind, save_result
from robopt_compile.errors import BackendUnavailableError, InputError
from robopt_compile.report import SECTIONS, write_reports

NASTY = '<script>alert("x")</script> & <img src="https://example.com/x.png">'


# --- bundles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """state-mlp compiled for the host: fp32 and int8 (sensitivity measured), 1 thread."""
    from robopt_compile.compile.options import CompileOptions, QuantOptions
    from robopt_compile.compile.pipeline import compile_model

    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    calib = root / "calib.npz"
    np.savez(calib, obs=rng.standard_normal((24, 1, 39), dtype=np.float32))
    fp32 = compile_model("zoo:state-mlp", root / "fp32", CompileOptions(threads=1))
    quant = QuantOptions(calibration=str(calib), measure_sensitivity=True, max_drop=0.05)
    int8 = compile_model(
        "zoo:state-mlp", root / "int8", CompileOptions(threads=1, precision="int8", quant=quant)
    )
    return {"fp32": fp32.out, "int8": int8.out}


@pytest.fixture
def copy(tmp_path: Path) -> Any:
    def make(src: Path, name: str = "bundle") -> Path:
        return Path(shutil.copytree(src, tmp_path / name))

    return make


def _engine(label: str, role: str, p50: float, ret: float, succ: int, precision: str) -> dict:
    rets = [ret + (i % 5) - 2.0 for i in range(20)]
    return {
        "label": label, "role": role, "bundle": "/somewhere", "precision": precision,
        "backend": "onnxruntime", "latency_ms": {"p50": p50, "p99": 1.4 * p50},
        "return": {"mean": float(np.mean(rets)), "std": float(np.std(rets)),
                   "ci95": [float(np.mean(rets)) - 1.0, float(np.mean(rets)) + 1.0]},
        "success": {"rate": succ / 20, "count": succ,
                    "ci95": [max(0.0, succ / 20 - 0.2), min(1.0, succ / 20 + 0.1)]},
        "per_seed": {"return": rets, "success": [i < succ for i in range(20)], "steps": [50] * 20},
    }  # fmt: skip


def closed_loop(passed: bool = True, label: str = "optimized int8 (onnxruntime)") -> dict:
    return {
        "kind": "closed_loop",
        "task": {"name": "reach", "description": "reach the target", "success_rule": "d < 2 cm",
                 "max_steps": 50},
        "episodes": 20, "seeds": list(range(20)), "metric": "success",
        "engines": [_engine("original fp32 (onnxruntime)", "reference", 0.05, 10.0, 19, "fp32"),
                    _engine(label, "candidate", 0.03, 9.5 if passed else 4.0, 18 if passed else 9,
                            "int8")],
        "paired": [{"candidate": label, "reference": "original fp32 (onnxruntime)",
                    "return_diff": {"mean": -0.5, "ci95": [-1.0, 0.0]},
                    "success_diff": {"mean": -0.05, "ci95": [-0.2, 0.1]}, "p_value": 0.5,
                    "verdict": "no detectable change" if passed else "worse"}],
        "criteria": {"max_return_drop": 0.1, "max_success_drop": 0.1, "return_drop": 0.05,
                     "success_drop": 0.05, "passed": passed,
                     "failures": [] if passed else ["success dropped 50.0 points > 10.0"]},
    }  # fmt: skip


OPEN_LOOP = {
    "kind": "open_loop", "dataset": "/data/obs.npz", "samples": 100,
    "engines": [{"label": "optimized int8 (onnxruntime)", "role": "candidate",
                 "latency_ms": {"p50": 0.03, "p99": 0.05},
                 "per_dim": {"mae": [0.01, 0.02, 0.005, 0.0], "max_abs": [0.05, 0.07, 0.02, 0.0]},
                 "l2": {"mean": 0.02, "p95": 0.04, "max": 0.09, "relative_mean": 0.01},
                 "max_deviation": 0.07, "gripper_flips": 0, "chunk_divergence": None}],
}  # fmt: skip
CONTROL = {
    "kind": "control_loop", "rate_hz": 100.0, "deadline_ms": 10.0, "ticks": 500, "misses": 0,
    "miss_fraction": 0.0, "jitter_ms": {"p50": 0.01, "p99": 0.05, "max": 0.2},
    "latency_ms": {"p50": 0.05, "p99": 0.08, "p99.9": 0.2, "max": 0.3}, "cold_start_ms": 40.0,
    "warm_first_ms": 0.2, "rss_mib": {"start": 100.0, "end": 100.5, "growth": 0.5},
}  # fmt: skip


def _plan(label: str, p50: float, drop: float) -> dict:
    return {"candidate": label, "latency_ms": {"p50": p50, "p99": p50 * 1.2}, "size_mb": 0.1,
            "accuracy_drop": drop, "applied": None}  # fmt: skip


PLAN = {  # a planner search (results/plan.json) as plan.search writes it
    "kind": "plan", "stopped": "every proposed plan that runs here was measured", "seconds": 9.0,
    "accuracy_measure": "relative L2", "best": {"candidate": "onnxruntime int8"},
    "pareto": ["onnxruntime int8", "onnxruntime fp32"],
    "measured": [_plan("onnxruntime fp32", 0.2, 0.0), _plan("onnxruntime int8", 0.1, 0.01),
                 _plan("openvino bf16", 0.3, 0.02)],
    "decisions": [{"plan": "onnxruntime fp32", "verdict": "keep",
                   "prediction": {"latency_ms": 0.25}},
                  {"plan": "tvm fp32", "verdict": "reject", "reason": "give --tune-trials N"}],
    "failed": [],
}  # fmt: skip


def add_results(bundle: Path, passed: bool = True, label: str = "optimized int8 (onnxruntime)"):
    """Every kind of result: a real benchmark with samples, layers, and synthetic evaluations."""
    from robopt_compile.bench.harness import run_benchmark
    from robopt_compile.report.layers import profile_layers

    bench = run_benchmark(bundle, runs=60, warmup=5, threads=1, keep_samples=True,
                          control_rate=200.0)  # fmt: skip
    save_result(bundle, "bench-host", bench)
    save_result(bundle, "layers", profile_layers(bundle, runs=5))
    save_result(bundle, "eval-reach", closed_loop(passed, label))
    save_result(bundle, "openloop-obs", OPEN_LOOP)
    save_result(bundle, "control-100hz", CONTROL)
    save_result(bundle, "plan", PLAN)
    remote = {**bench, "remote": {"host": "orin-01", "url": "http://orin-01:8470", "job_id": "j1"}}
    save_result(bundle, "remote-orin-01-20260101T000000Z", remote)


# --- offline check ---------------------------------------------------------------------------


class _Refs(HTMLParser):
    """Every tag and every attribute that could load something."""

    URL_ATTRS: frozenset[str] = frozenset(
        {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data",
         "background", "cite", "longdesc", "manifest", "ping"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        for k, v in attrs:
            if k in self.URL_ATTRS:
                self.refs.append((tag, k, v or ""))
            if k == "style":
                self.styles.append(v or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def assert_offline(text: str) -> _Refs:
    """No scripts, no network URLs, nothing external: every reference is a "#" anchor."""
    low = text.lower()
    assert "<script" not in low
    assert "http://" not in low and "https://" not in low
    assert "javascript:" not in low
    p = _Refs()
    p.feed(text)
    bad_tags = {"script", "link", "img", "iframe", "object", "embed", "audio", "video",
                "source", "frame", "base", "meta-refresh"}  # fmt: skip
    assert not bad_tags & set(p.tags), bad_tags & set(p.tags)
    for tag, attr, value in p.refs:
        assert value.startswith("#"), (tag, attr, value)
    for css in p.styles:
        assert "@import" not in css
        assert all(u.startswith("#") for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", css)), css
    for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", text):  # SVG clip-path="url(#...)"
        assert u.startswith("#"), u
    return p


# --- tests -----------------------------------------------------------------------------------


def test_full_report_is_self_contained_with_every_section_and_plot(bundles, copy) -> None:
    b = copy(bundles["int8"])
    add_results(b)
    paths = write_reports(b)
    assert paths == {"html": b / "report.html", "md": b / "report.md"}
    text = paths["html"].read_text()
    for anchor, heading in SECTIONS:
        if anchor == "graphs":  # a single-graph bundle has no multi-graph section
            assert heading not in text and 'href="#graphs"' not in text
            continue
        assert f'<section id="{anchor}"><h2>{heading}</h2>' in text, heading
    assert_offline(text)
    assert "<svg" in text and "<img" not in text
    for alt in ("latency histogram", "accuracy vs latency", "per-layer time layers",
                "per-layer sensitivity", "closed loop eval-reach", "open loop openloop-obs",
                "control loop control-100hz", "roofline estimate",
                "compile stage times", "planner pareto front"):  # fmt: skip
        assert f'<svg role="img" aria-label="{alt}"' in text, alt
    assert "not measured" not in text.lower().replace("latency histogram not measured", "")
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)), "element ids must be unique across the inline SVGs"
    md = paths["md"].read_text()
    assert md.startswith("✅ **PASS** — state-mlp on host (onnxruntime int8)")
    assert "<" not in md.replace("&lt;", "")
    assert "![" not in md and "<img" not in md
    manifest = json.loads((b / "manifest.json").read_text())
    assert not any(
        k.startswith("results/") or k in ("report.html", "report.md") for k in manifest["files"]
    ), "results and reports are derived, never hashed"
    # Same inputs, same bytes.
    first = paths["html"].read_bytes(), paths["md"].read_bytes()
    write_reports(b)
    assert (paths["html"].read_bytes(), paths["md"].read_bytes()) == first
    assert not [p.name for p in b.iterdir() if p.name.startswith(".")], "temporary files left"


def test_failing_criteria_and_hostile_text(bundles, copy) -> None:
    b = copy(bundles["fp32"])
    save_result(b, "eval-reach", closed_loop(passed=False, label=NASTY))
    save_result(b, "openloop-x", {**OPEN_LOOP, "dataset": NASTY})
    write_reports(b)
    text = (b / "report.html").read_text()
    assert_offline(text)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert '<div class="verdict bad">FAIL' in text
    md = (b / "report.md").read_text()
    assert md.startswith("❌ **FAIL** — state-mlp on host (onnxruntime fp32): failed: closed loop")
    assert "<script" not in md


def test_missing_pieces_become_notes(bundles, copy) -> None:
    b = copy(bundles["fp32"])
    (b / "report.json").unlink()
    (b / "analysis.json").unlink()
    shutil.rmtree(b / "results")  # compile measured per-layer times; drop them here
    (b / "results").mkdir()
    (b / "results" / "bench-broken.json").write_text("{not json")
    write_reports(b)
    text = (b / "report.html").read_text()
    for anchor, heading in SECTIONS:
        assert (f"<h2>{heading}</h2>" in text) == (anchor != "graphs")
    assert_offline(text)
    for section in ("latency", "accuracy-latency", "layers", "sensitivity", "closed-loop",
                    "open-loop", "control-loop", "remote", "planner"):  # fmt: skip
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert "Not measured:" in body, section
    for section in ("passes", "analysis", "quantization", "compression"):
        body = text.split(f'<section id="{section}">', 1)[1].split("</section>", 1)[0]
        assert "Not present:" in body, section
    assert "results/bench-broken.json cannot be read" in text
    md = (b / "report.md").read_text()
    assert md.splitlines()[0].startswith("✅ **PASS** — state-mlp")
    assert "Not measured: latency (robopt-bench)" in md


def test_malformed_results_do_not_sink_the_report(bundles, copy) -> None:
    b = copy(bundles["fp32"])
    save_result(b, "eval-odd", {"kind": "closed_loop", "task": "reach", "engines": "oops",
                                "paired": [1, 2], "criteria": "x"})  # fmt: skip
    save_result(b, "openloop-odd", {"kind": "open_loop", "engines": [{"per_dim": {"mae": "x"}}]})
    save_result(b, "control-odd", {"kind": "control_loop", "latency_ms": [1], "misses": "2"})
    save_result(b, "layers", {"kind": "layers", "layers": [{"name": "a"}], "by_op_type": []})
    save_result(b, "bench-odd", {"latency": {"samples_ms": "x"}, "fidelity": None})
    write_reports(b)
    text = (b / "report.html").read_text()
    for anchor, heading in SECTIONS:
        assert (f"<h2>{heading}</h2>" in text) == (anchor != "graphs")
    assert_offline(text)
    assert (b / "report.md").read_text().startswith("✅ **PASS**")


def test_without_matplotlib_tables_only(bundles, copy, monkeypatch: pytest.MonkeyPatch) -> None:
    b = copy(bundles["int8"])
    save_result(b, "eval-reach", closed_loop())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    write_reports(b)
    text = (b / "report.html").read_text()
    assert "<svg" not in text
    assert "pip install matplotlib" in text
    assert "<h2>Closed-loop evaluation</h2>" in text and "original fp32 (onnxruntime)" in text


def test_compile_writes_the_report_with_layer_times(bundles) -> None:
    b = bundles["fp32"]
    assert (b / "report.html").is_file() and (b / "report.md").is_file()
    layers = json.loads((b / "results" / "layers.json").read_text())
    assert layers["backend"] == "onnxruntime" and layers["layers"]
    # Derived files are not part of the hashed bundle.
    files = json.loads((b / "manifest.json").read_text())["files"]
    assert not any(k.startswith("results/") or (k.startswith("report.") and k != "report.json")
                   for k in files)  # fmt: skip


def test_write_reports_needs_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_reports(tmp_path / "missing")
    with pytest.raises(InputError, match="not a robopt bundle"):
        write_reports(tmp_path)


def test_profile_layers_onnxruntime(bundles, copy) -> None:
    import onnx

    from robopt_compile.report.layers import profile_layers

    b = bundles["fp32"]
    r = profile_layers(b, runs=15, threads=1)
    assert (r["backend"], r["runs"], r["threads"]) == ("onnxruntime", 15, 1)
    layers = r["layers"]
    assert layers and all(x["ms"] >= 0 for x in layers)
    assert [x["ms"] for x in layers] == sorted((x["ms"] for x in layers), reverse=True)
    assert sum(x["ms"] for x in layers) == pytest.approx(r["total_ms"], rel=1e-9)
    assert sum(x["share"] for x in layers) == pytest.approx(1.0)
    assert 0 < r["total_ms"] <= 1.05 * r["run_ms"]  # node time fits inside the profiled run
    engine = onnx.load(str(b / "engine" / "model.ort-opt.onnx"))
    names = {n.name for n in engine.graph.node}
    mapped = [x for x in layers if x["graph_node"] is not None]
    assert sum(x["share"] for x in mapped) > 0.9
    assert {x["graph_node"] for x in mapped} <= names | {n.name for n in onnx.load(
        str(b / "model.onnx")).graph.node}  # fmt: skip
    by_op = r["by_op_type"]
    assert sum(v["layers"] for v in by_op.values()) == len(layers)
    assert sum(v["ms"] for v in by_op.values()) == pytest.approx(r["total_ms"])
    c = copy(b)
    path = save_result(c, "layers", r)
    assert path == c / "results" / "layers.json"
    assert load_results(c)["layers"]["layers"] == json.loads(json.dumps(layers))


@pytest.mark.openvino
def test_profile_layers_openvino(bundles, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model
    from robopt_compile.report.layers import profile_layers

    src = bundles["fp32"] / "model.onnx"
    ov = compile_model(str(src), tmp_path / "ov", CompileOptions(threads=1, backend="openvino"))
    r = profile_layers(ov.out, runs=10, threads=1)
    assert r["backend"] == "openvino" and r["layers"]
    assert sum(x["share"] for x in r["layers"]) == pytest.approx(1.0)
    assert all(x["exec_type"] and x["op_type"] for x in r["layers"])
    assert any(x["graph_node"] for x in r["layers"])
    assert r["total_ms"] > 0 and r["run_ms"] > 0


def test_profile_layers_refuses_engines_it_cannot_run(bundles, copy) -> None:
    from robopt_compile.report.layers import profile_layers

    b = copy(bundles["fp32"])
    m = json.loads((b / "manifest.json").read_text())
    m["engine"]["config"]["deferred"] = True
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackendUnavailableError, match="deferred") as exc:
        profile_layers(b)
    assert "\n" not in str(exc.value)
    m["engine"]["config"]["deferred"] = False
    m["backend"] = m["engine"]["backend"] = "tvm"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackendUnavailableError, match="supports"):
        profile_layers(b)
    with pytest.raises(InputError, match="runs"):
        profile_layers(bundles["fp32"], runs=0)


def test_cli_report(bundles, copy, capsys: pytest.CaptureFixture[str]) -> None:
    from robopt_compile.cli import main

    b = copy(bundles["fp32"])
    (b / "results" / "layers.json").unlink()  # measured at compile time; measure again
    main(["report", str(b), "--runs", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out == {"html": str(b / "report.html"), "md": str(b / "report.md"),
                   "layers": str(b / "results" / "layers.json")}  # fmt: skip
    assert load_results(b)["layers"]["runs"] == 3
    assert "<h2>Per-layer time</h2>" in (b / "report.html").read_text()
    main(["report", str(b), "--json"])  # layers.json exists: not measured again
    assert "layers" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(b / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robopt-compile: error: bundle folder")


def test_save_and_load_results(tmp_path: Path) -> None:
    p = save_result(tmp_path, "eval-reach.json", {"x": np.float32(1.5), "y": float("nan"),
                                                   "z": np.arange(3)})  # fmt: skip
    assert p == tmp_path / "results" / "eval-reach.json"
    assert json.loads(p.read_text()) == {"x": 1.5, "y": None, "z": [0, 1, 2]}
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InputError):
            save_result(tmp_path, bad, {})
    with pytest.raises(InputError, match="does not exist"):
        save_result(tmp_path / "nope", "x", {})
    (tmp_path / "results" / "broken.json").write_text("[1, 2]")
    errors: dict[str, str] = {}
    assert list(load_results(tmp_path, errors=errors)) == ["eval-reach"]
    assert "broken" in errors
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "broken.json", "eval-reach.json"]  # fmt: skip
    assert result_kind("bench-x", {"latency": {}, "fidelity": {}}) == "bench"
    assert result_kind("remote-a", {}) == "remote"
    assert result_kind("eval-a", {"kind": "open_loop"}) == "open_loop"


def test_run_benchmark_keeps_samples(bundles) -> None:
    from robopt_compile.bench.harness import run_benchmark

    r = run_benchmark(bundles["fp32"], runs=25, warmup=2, threads=1, keep_samples=True)
    s = r["latency"]["samples_ms"]
    assert len(s) == 25 and all(v > 0 for v in s)
    assert r["latency"]["p50_ms"] == pytest.approx(float(np.median(s)))
    assert "samples_ms" not in run_benchmark(bundles["fp32"], runs=3, threads=1)["latency"]
