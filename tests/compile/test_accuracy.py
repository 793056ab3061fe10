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
