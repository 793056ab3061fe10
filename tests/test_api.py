"""The Python API (robopt_compile.api): every call end to end on small models, typed results,
in-memory torch modules, and the errors a caller gets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_bundle

import robopt_compile.api as robopt
from robopt_compile.errors import EXIT_BAD_INPUT, InputError, RoboptError, UnknownNameError

SWINGUP = "zoo:pendulum-swingup-mlp"


def _mlp(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return m.eval(), torch.randn(1, 6)


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory: pytest.TempPathFactory) -> robopt.Compiled:
    """A tiny Sequential compiled from memory for the host with ONNX Runtime."""
    m, x = _mlp()
    out = tmp_path_factory.mktemp("api") / "mlp"
    return robopt.compile(m, example_inputs=x, out=out, threads=1, backend="onnxruntime")


def test_api_import_is_light() -> None:
    code = (
        "import sys, robopt_compile, robopt_compile.api as robopt\n"
        "assert robopt_compile.api is robopt and callable(robopt.compile)\n"
        "heavy = [m for m in ('torch', 'numpy', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


def test_compile_module_in_memory(mlp_bundle: robopt.Compiled) -> None:
    r = mlp_bundle
    m = assert_bundle(r.bundle, "onnxruntime")
    assert m == r.manifest
    assert m["model"] == {**m["model"], "name": "Sequential", "source": "<module Sequential>"}
    assert m["model"]["source_kind"] == "module"
    assert [i["name"] for i in m["inputs"]] == ["input"]  # Sequential.forward(input)
    assert m["parity"]["export"]["cosine"] >= 0.99999
    assert r.verdict["status"] == "pass" and r.engine_checked
    assert r.criteria_failures == () and r.evaluation is None
    assert r.facts["summary"]["params"] == 6 * 16 + 16 + 16 * 2 + 2
    assert r.session_id is not None  # recorded in the test run's store
    doc = json.loads(json.dumps(r.to_json(), default=str))
    assert list(doc) == [
        "bundle", "verdict", "manifest", "report", "evaluation", "criteria_failures",
    ]  # fmt: skip
    with pytest.raises(AttributeError):
        r.bundle = Path("elsewhere")  # type: ignore[misc]  # frozen


def test_in_memory_module_is_cached_by_content(mlp_bundle: robopt.Compiled, tmp_path: Path) -> None:
    m, x = _mlp()
    again = robopt.compile(m, example_inputs=x, out=tmp_path / "same", threads=1,
                           backend="onnxruntime", record=False)  # fmt: skip
    assert again.report["cache"]["bundle"]["cache"] == "hit"  # the same weights: reused
    other, _ = _mlp(seed=1)
    changed = robopt.compile(other, example_inputs=x, out=tmp_path / "other", threads=1,
                             backend="onnxruntime", record=False)  # fmt: skip
    assert changed.report["cache"]["export"]["cache"] == "miss"  # new weights: exported again


def test_compile_zoo_source(tmp_path: Path) -> None:
    r = robopt.compile("zoo:state-mlp", out=tmp_path / "b", target="host", threads=1,
                       record=False, cache=False)  # fmt: skip
    assert r.manifest["model"]["source"] == "zoo:state-mlp"
    assert r.manifest["model"]["source_kind"] == "zoo"
    assert r.session_id is None and (tmp_path / "b" / "report.html").is_file()


def test_bench_a_compiled_bundle(mlp_bundle: robopt.Compiled) -> None:
    b = robopt.bench(mlp_bundle.bundle, runs=20, warmup=2, threads=1)
    assert b.passed and b.saved is None
    assert b.latency["n"] == 20 and 0 < b.latency["p50_ms"] <= b.latency["p99_ms"]
    assert b.to_json()["backend"] == "onnxruntime"


def test_analyze_returns_typed_facts() -> None:
    m, x = _mlp()
    a = robopt.analyze(m, example_inputs=x, target="x86-64-avx512", precision="int8")
    assert isinstance(a, robopt.Analysis)
    assert a.target == "x86-64-avx512" and a.source == "<module Sequential>"
    assert a.summary["macs"] == 6 * 16 + 16 * 2
    assert a.parity["export"]["passed"] is True
    assert "Gemm" in a.table(top=3) or "MatMul" in a.table(top=3)
    assert set(a.to_json()) == {"source", "target", "parity", "facts"}


def test_plan_only_builds_nothing(tmp_path: Path) -> None:
    s = robopt.plan("zoo:state-mlp", criteria={"max_latency_ms": 50, "objective": "size"},
                    plan_only=True, threads=1, backend="onnxruntime")  # fmt: skip
    assert s.best is None and s.measured == [] and s.stopped.startswith("--plan-only")
    assert s.criteria is not None and s.criteria.objective == "size"
    assert {d.candidate.backend for d in s.decisions} == {"onnxruntime"}
    assert any(d.verdict == "propose" for d in s.decisions)
    assert s.to_json()["kind"] == "plan"


def test_evaluate_closed_and_open_loop(tmp_path: Path) -> None:
    out = tmp_path / "swingup"
    robopt.compile(SWINGUP, out=out, threads=1, record=False)
    e = robopt.evaluate(out, episodes=2, threads=1)
    assert e.kind == "closed_loop" and e.path is not None and e.path.is_file()
    assert [x["role"] for x in e.result["engines"]] == ["reference", "candidate"]
    assert e.criteria_failures == [] and e.to_json()["path"] == str(e.path)
    data = tmp_path / "episodes.npz"
    rec = robopt.evaluate(out, episodes=2, record=data, threads=1)
    assert rec.kind == "recording" and rec.result["episodes"] == 2 and data.is_file()
    o = robopt.evaluate(out, dataset=data, threads=1)
    assert o.kind == "open_loop" and o.result["samples"] == rec.result["steps"]
    assert o.result["engines"][1]["l2"]["max"] < 1e-3  # fp32 engine vs the fp32 original


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda d: robopt.compile("zoo:no-such-model", out=d / "o"), UnknownNameError, "zoo model"),
        (lambda d: robopt.compile(str(d / "missing.onnx"), out=d / "o"), InputError, "not found"),
        (lambda d: robopt.compile(42, out=d / "o"), InputError, "not int"),
        (lambda d: robopt.compile(_mlp()[0], out=d / "o"), InputError, "needs example_inputs"),
        (lambda d: robopt.compile("zoo:state-mlp", example_inputs=1, out=d / "o"), InputError,
         "go with a torch.nn.Module"),
        (lambda d: robopt.compile("zoo:state-mlp", out=d / "o", precison="int8"), InputError,
         "unknown compile option"),
        (lambda d: robopt.compile("zoo:state-mlp", out=d / "o", target="jetsn"),
         UnknownNameError, "unknown target"),
        (lambda d: robopt.plan("zoo:state-mlp"), InputError, "plan_only"),
        (lambda d: robopt.plan("zoo:state-mlp", criteria={"latency": 1}, plan_only=True),
         InputError, "unknown criteria"),
        (lambda d: robopt.bench(d, device="http://robot:8470"), InputError, "go together"),
    ],
)  # fmt: skip
def test_bad_input_raises_a_robopt_error(tmp_path: Path, call, error, needle) -> None:
    with pytest.raises(error, match=needle) as info:
        call(tmp_path)
    assert isinstance(info.value, RoboptError) and info.value.exit_code == EXIT_BAD_INPUT
    assert not (tmp_path / "o").exists()


def test_compile_options_by_field() -> None:
    from robopt_compile.compile.options import CompileOptions

    o = robopt.compile_options(
        CompileOptions(threads=2), precision="int8", calibration="random", prune="channels:0.5",
        seed=3, eval="task:episodes=4", reference_inputs="x.npz",
    )  # fmt: skip
    assert (o.threads, o.precision, o.seed, o.quant.seed) == (2, "int8", 3, 3)
    assert o.quant.calibration == "random" and o.compress.prune == ("channels:0.5",)
    assert o.eval.episodes == 4 and o.reference_inputs == Path("x.npz")
