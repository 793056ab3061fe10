"""Accuracy figures of the guard: relative L2 drop, cosine, argmax agreement, user metrics."""

from __future__ import annotations

import numpy as np
import pytest

from robopt_compile.compile.accuracy import accuracy_figures, load_metric
from robopt_compile.errors import InputError


def test_figures_on_known_arrays():
    ref = [{"a": np.array([[3.0, 4.0]])}, {"a": np.array([[0.0, 0.0]])}]
    got = [{"a": np.array([[3.0, 4.5]])}, {"a": np.array([[0.0, 0.0]])}]
    fig = accuracy_figures(ref, got)
    assert fig["relative_l2"] == pytest.approx(0.5 / 5.0)
    assert fig["drop"] == fig["relative_l2"]
    assert fig["max_abs"] == pytest.approx(0.5)
    assert fig["per_output"]["a"]["argmax_agreement"] == 1.0
    assert fig["samples"] == 2
    flipped = [{"a": np.array([[4.0, 3.0]])}, {"a": np.array([[0.0, 0.0]])}]
    assert accuracy_figures(ref, flipped)["per_output"]["a"]["argmax_agreement"] == 0.5


def test_user_metric(tmp_path, monkeypatch):
    (tmp_path / "mymetric.py").write_text(
        "def worst_joint(ref, got, inputs):\n"
        "    return max(float(abs(r['a'] - g['a']).max()) for r, g in zip(ref, got))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_metric("mymetric:worst_joint")
    ref = [{"a": np.zeros((1, 3))}]
    got = [{"a": np.array([[0.0, 0.2, 0.0]])}]
    fig = accuracy_figures(ref, got, [], fn, "mymetric:worst_joint")
    assert fig["drop"] == pytest.approx(0.2) and fig["metric"] == "mymetric:worst_joint"
    with pytest.raises(InputError, match="no callable"):
        load_metric("mymetric:nope")
    with pytest.raises(InputError, match="module:function"):
        load_metric("no-colon")


def test_engine_tolerance_covers_the_worst_sample_the_check_may_see():
    """One bad sample among good ones: the cosine over all samples hides it, the engine check
    (one sample) would not; the tolerance's margin is taken on the worst sample."""
    from robopt_compile.compile.quantize import engine_tolerance

    ref = [{"y": np.array([1.0, 0.0, 0.0])}] + [{"y": np.array([10.0, 10.0, 10.0])}] * 9
    cand = [{"y": np.array([1.0, 0.2, 0.0])}] + [{"y": np.array([10.0, 10.0, 10.0])}] * 9
    fig = accuracy_figures(ref, cand)
    worst = 1.0 / np.sqrt(1.04)
    assert fig["worst_sample_cosine"] == pytest.approx(worst)
    assert fig["cosine"] > 0.9999 > worst
    tol = engine_tolerance(fig)
    assert tol["cosine_min"] == pytest.approx(1 - 3 * (1 - worst))
    assert tol["cosine_min"] <= worst  # the worst sample itself passes the check


def test_int8_weights_follow_the_target_cpu_not_this_one():
    """7-bit weights (reduce_range, overflow_fix) where the TARGET's int8 kernels saturate."""
    from robopt_compile.compile.quantize import QuantOptions, _pass_kwargs
    from robopt_compile.hwprofiles import load_profile

    avx2, vnni = load_profile("x86-64-avx2"), load_profile("x86-64-avx512")
    opts = QuantOptions()
    assert _pass_kwargs("int8-static-ort", {}, opts, avx2)["reduce_range"] is True
    assert _pass_kwargs("int8-static-ort", {}, opts, vnni)["reduce_range"] is False
    assert _pass_kwargs("int8-nncf", {}, opts, avx2)["overflow_fix"] == "enable"
    assert _pass_kwargs("int8-nncf", {}, opts, vnni)["overflow_fix"] == "first_layer"
    assert "reduce_range" not in _pass_kwargs("int8-static-trt", {}, opts, avx2)


def test_a_target_that_cannot_run_here_is_judged_on_its_graph_as_written(tiny_onnx, tmp_path):
    """TensorRT's Q/DQ graph scored in ONNX Runtime without its fused int8 kernels."""
    from robopt_compile import ir as rir
    from robopt_compile.compile.quantize import evaluation_backend
    from robopt_compile.hwprofiles import load_profile
    from robopt_compile.numerics import random_feeds, run_onnx
    from robopt_compile.targets import BuildOptions, get_backend

    backend, note = evaluation_backend(get_backend("tensorrt"), load_profile("jetson-orin-nano"))
    assert "as written" in note and "tensorrt cannot run here" in note
    path = tmp_path / "model.onnx"
    rir.save(rir.load(tiny_onnx), path)
    art = backend.build(path, None, BuildOptions(precision="int8", threads=1), tmp_path / "e")
    assert art.config["runtime_optimization_level"] == "disable"
    feeds = random_feeds(rir.input_specs(rir.load(path)), seed=3)
    with backend.runner(art, threads=1) as r:
        got = r.infer(feeds)
    want = run_onnx(path, feeds, optimization="disable")
    assert all(np.array_equal(got[k], want[k]) for k in want)
