"""numerics: random feeds, ONNX Runtime runs and output comparison shared by every parity check."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from robopt_compile import numerics
from robopt_compile.ir import TensorSpec, input_specs
from robopt_compile.numerics import compare, random_feeds, run_onnx, worst

MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 3] x, int64[N] ids, bool[N] flag) => (float[N, 3] y, int64[N] k)
<float[3] w = {1.0, -2.0, 0.5}>
{
  y = Mul(x, w)
  zero = Constant<value = int64[1] {0}>()
  k = Where(flag, ids, zero)
}
"""


def _model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(MODEL))


def _expected(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    y = feeds["x"] * np.array([1.0, -2.0, 0.5], np.float32)
    return {"y": y, "k": np.where(feeds["flag"], feeds["ids"], 0)}


# random_feeds


def test_random_feeds_shapes_dtypes_and_ranges() -> None:
    specs = [
        TensorSpec("img", ("batch", 3, 4, 4), "float32"),
        TensorSpec("half", (2,), "float16"),
        TensorSpec("ids", ("batch", 5), "int64"),
        TensorSpec("small", (50,), "int32"),
        TensorSpec("mask", ("batch", 5), "bool"),
        TensorSpec("pixels", (8,), "uint8"),
        TensorSpec("scalar", (), "float32"),
    ]
    feeds = random_feeds(specs, seed=0, batch=2)
    assert list(feeds) == [s.name for s in specs]
    assert feeds["img"].shape == (2, 3, 4, 4) and feeds["img"].dtype == np.float32
    assert feeds["half"].dtype == np.float16
    assert feeds["ids"].shape == (2, 5) and feeds["ids"].dtype == np.int64
    lo, hi = numerics.INT_RANGE
    assert feeds["small"].min() >= lo and feeds["small"].max() < hi
    assert feeds["mask"].dtype == np.bool_
    assert feeds["pixels"].dtype == np.uint8
    assert feeds["scalar"].shape == ()
    assert random_feeds(specs[:1], seed=0)["img"].shape == (1, 3, 4, 4)  # symbolic -> 1


def test_random_feeds_are_seeded() -> None:
    specs = [TensorSpec("x", (4, 4), "float32"), TensorSpec("m", (64,), "bool")]
    a, b, c = (random_feeds(specs, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["m"], b["m"])
    assert not np.array_equal(a["x"], c["x"])
    assert 0 < a["m"].sum() < 64  # both values occur


def test_random_feeds_bfloat16_and_unknown_dtype() -> None:
    feeds = random_feeds([TensorSpec("x", (3,), "bfloat16")])
    assert feeds["x"].dtype.name == "bfloat16"
    with pytest.raises(ValueError, match="unknown"):
        random_feeds([TensorSpec("x", (3,), "unknown")])


# run_onnx


def test_run_onnx_ir_model_and_file(tmp_path) -> None:
    model = _model()
    feeds = random_feeds(input_specs(model), seed=3, batch=4)
    expected = _expected(feeds)
    got = run_onnx(model, feeds)
    assert list(got) == ["y", "k"]  # graph order
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    path = tmp_path / "m.onnx"
    ir.save(model, path)
    from_file = run_onnx(path, {**feeds, "unused": np.zeros(1)}, threads=2, optimization="disable")
    np.testing.assert_array_equal(from_file["y"], got["y"])
    with pytest.raises(ValueError, match="optimization must be one of"):
        run_onnx(model, feeds, optimization="max")


def test_run_onnx_external_data_and_large_models(tmp_path, monkeypatch) -> None:
    """Models with side files or past the in-memory limit run from a temporary folder."""
    model = _model()
    feeds = random_feeds(input_specs(model), seed=1, batch=2)
    path = tmp_path / "m.onnx"
    ir.save(model, path, external_data="m.onnx.data", size_threshold_bytes=0)
    external = ir.load(path)  # robopt's loader reads small models into memory
    assert isinstance(external.graph.initializers["w"].const_value, ir.ExternalTensor)
    np.testing.assert_allclose(run_onnx(external, feeds)["y"], _expected(feeds)["y"], rtol=1e-6)
    monkeypatch.setattr(numerics, "_IN_MEMORY_LIMIT", 0)
    np.testing.assert_allclose(run_onnx(model, feeds)["y"], _expected(feeds)["y"], rtol=1e-6)


# compare / worst


def test_compare_identical_and_perturbed() -> None:
    ref = {"a": np.linspace(-1, 1, 100, dtype=np.float32), "b": np.arange(6).reshape(2, 3)}
    same = compare(ref, {k: v.copy() for k, v in ref.items()})
    assert same["a"] == {
        "max_abs": 0.0,
        "max_rel": 0.0,
        "cosine": 1.0,
        "allclose": True,
        "nonfinite_mismatch": 0,
    }
    assert same["b"]["allclose"]

    got = {"a": ref["a"] + np.float32(1e-2), "b": ref["b"]}
    c = compare(ref, got)
    assert c["a"]["max_abs"] == pytest.approx(1e-2, rel=1e-3)
    assert c["a"]["max_rel"] == pytest.approx(1e-2, rel=1e-3)  # relative to max |ref| = 1
    assert not c["a"]["allclose"]
    assert 0.999 < c["a"]["cosine"] < 1.0
    assert compare(ref, got, rtol=0, atol=0.02)["a"]["allclose"]


def test_compare_sign_flip_and_zeros() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert compare({"x": x}, {"x": -x})["x"]["cosine"] == pytest.approx(-1.0)
    zeros = np.zeros(3)
    assert compare({"x": zeros}, {"x": zeros})["x"]["cosine"] == 1.0
    assert compare({"x": zeros}, {"x": x})["x"]["cosine"] == 0.0
    assert compare({"x": zeros}, {"x": x})["x"]["max_rel"] == float("inf")


def test_compare_nan_and_inf() -> None:
    ref = np.array([1.0, np.nan, np.inf, -np.inf, 2.0])
    assert compare({"x": ref}, {"x": ref.copy()})["x"]["allclose"]
    got = np.array([1.0, 5.0, np.inf, np.inf, np.nan])
    c = compare({"x": ref}, {"x": got})["x"]
    assert c["nonfinite_mismatch"] == 3 and not c["allclose"]
    assert c["max_abs"] == 0.0  # figures use finite-in-both elements only


def test_compare_missing_and_shape_mismatch() -> None:
    ref = {"x": np.ones(3), "y": np.ones((2, 2))}
    c = compare(ref, {"y": np.ones(4)})
    assert c["x"]["error"] == "missing output" and not c["x"]["allclose"]
    assert "shape" in c["y"]["error"] and c["y"]["cosine"] == 0.0


def test_worst() -> None:
    ref = {"a": np.ones(4), "b": np.arange(4.0)}
    got = {"a": np.ones(4) * 1.1, "b": np.arange(4.0)[::-1]}
    w = worst(compare(ref, got))
    assert w["output"] == "b" and w["outputs"] == 2
    assert w["cosine"] == compare(ref, got)["b"]["cosine"]
    assert w["max_abs"] == pytest.approx(3.0) and not w["allclose"]
    assert worst({}) == {
        "max_abs": 0.0,
        "max_rel": 0.0,
        "cosine": 1.0,
        "allclose": True,
        "nonfinite_mismatch": 0,
        "output": None,
        "outputs": 0,
    }


def test_compare_and_worst_need_no_onnx() -> None:
    """robopt-bench runs them on a robot where onnx and onnxruntime may be absent."""
    code = (
        "import sys, numpy as np\n"
        "from robopt_compile.numerics import compare, worst\n"
        "worst(compare({'a': np.ones(2)}, {'a': np.ones(2)}))\n"
        "bad = [m for m in ('onnx', 'onnxruntime', 'onnx_ir') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
