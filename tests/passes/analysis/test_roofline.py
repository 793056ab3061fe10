"""RooflinePass: per-node bound and time on a hand-made profile (10 GOP/s, 10 GB/s)."""

from __future__ import annotations

import json

import pytest

from robopt_compile.errors import PassError
from robopt_compile.passes.analysis.flops import FlopsPass
from robopt_compile.passes.analysis.roofline import RooflinePass

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
g (float[N,64] x) => (float[N,64] y, float[N,64] z) {
  m = MatMul(x, w)
  y = Relu(m)
  z = custom.x.Foo(x)
}
"""
MATMUL_FLOPS = 2 * 64 * 64 * 64
MATMUL_BYTES = 3 * 64 * 64 * 4  # input, weight, output
RELU_BYTES = 2 * 64 * 64 * 4


def _model(build):
    return build(MODEL, w=(64, 64))


def test_bound_classification_and_times(build, unchanged, profile_factory) -> None:
    facts = unchanged(RooflinePass(profile_factory(), batch=64), _model(build))
    nodes = {n["name"]: n for n in facts["nodes"]}
    matmul, relu = nodes["MatMul_0"], nodes["Relu_1"]
    assert matmul["bound"] == "compute"
    assert matmul["flops"] == MATMUL_FLOPS and matmul["bytes_moved"] == MATMUL_BYTES
    assert matmul["time_ms"] == pytest.approx(MATMUL_FLOPS / 10e9 * 1e3)
    assert matmul["intensity_flops_per_byte"] == pytest.approx(MATMUL_FLOPS / MATMUL_BYTES)
    assert relu["bound"] == "memory"
    assert relu["time_ms"] == pytest.approx(RELU_BYTES / 10e9 * 1e3)
    assert facts["latency_ms"] == pytest.approx(matmul["time_ms"] + relu["time_ms"])
    assert facts["compute_bound_nodes"] == 1 and facts["memory_bound_nodes"] == 1
    assert facts["ridge_flops_per_byte"] == pytest.approx(1.0)


def test_labelled_as_estimate_and_unknowns_listed(build, unchanged, profile_factory) -> None:
    facts = unchanged(RooflinePass(profile_factory(), batch=64), _model(build))
    assert facts["estimate"] is True
    assert "roofline" in facts["method"]
    assert facts["unknown_nodes"] == ["Foo_2"]
    assert facts["complete"] is False
    json.dumps(facts)


def test_threads_scale_per_core_peak_and_bandwidth(build, unchanged, profile_factory) -> None:
    profile = profile_factory(
        bandwidth_gbs=100.0,
        memory={
            "size_gb": {"value": 8, "source": "test"},
            "bandwidth_gbs": {"value": 100.0, "source": "test"},
            "bandwidth_per_core_gbs": {"value": 4.0, "source": "test"},
        },
    )
    facts = unchanged(RooflinePass(profile, threads=2, batch=64), _model(build))
    assert facts["peak_gops"] == 20.0
    assert facts["bandwidth_gbs"] == 8.0
    matmul = facts["nodes"][0]
    assert matmul["time_ms"] == pytest.approx(MATMUL_FLOPS / 20e9 * 1e3)


def test_shares_numbers_with_flops_pass(build, unchanged, profile_factory) -> None:
    model = _model(build)
    roofline = unchanged(RooflinePass(profile_factory(), batch=8), model)
    flops = unchanged(FlopsPass(batch=8), model)
    for r, f in zip(roofline["nodes"], flops["nodes"], strict=True):
        assert r["name"] == f["name"]
        if f["known"]:
            assert r["flops"] == f["flops"]
            assert r["bytes_moved"] == f["input_bytes"] + f["weight_bytes"] + f["output_bytes"]


def test_missing_precision_peak_falls_back_to_fp32(build, unchanged, profile_factory) -> None:
    facts = unchanged(RooflinePass(profile_factory(), precision="int8"), _model(build))
    assert facts["precision"] == "int8"
    assert facts["peak_precision"] == "fp32"
    assert facts["peak_gops"] == 10.0


def test_bad_precision_is_a_pass_error(profile_factory) -> None:
    with pytest.raises(PassError):
        RooflinePass(profile_factory(), precision="fp8")
