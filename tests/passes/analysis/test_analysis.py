"""robopt_compile.compile.analysis: all six passes through PassRunner, the summary and the table."""

from __future__ import annotations

import json

import pytest

from robopt_compile.compile.analysis import analyze, format_table

MODEL = """
<ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
g (float[N,3,16,16] x) => (float[N,10] y, float[N,8] z) {
  c = Conv<pads: ints = [1, 1, 1, 1]>(x, w, b)
  r = Relu(c)
  p = GlobalAveragePool(r)
  f = Flatten(p)
  y = Gemm<transB: int = 1>(f, fw, fb)
  z = custom.x.Foo(f)
}
"""
PASSES = ["op-histogram", "params", "flops", "memory", "roofline", "backend-support"]


@pytest.fixture
def facts(build, profile_factory, snapshot_of):
    model = build(MODEL, w=(8, 3, 3, 3), b=(8,), fw=(10, 8), fb=(10,))
    before = snapshot_of(model)
    result = analyze(model, profile_factory(), batch=2, backends=("onnxruntime",))
    assert snapshot_of(model) == before
    return result


def test_runs_every_pass_and_times_it(facts) -> None:
    assert [k for k in facts if k in PASSES] == PASSES
    assert [t["name"] for t in facts["timing"]] == PASSES
    assert all(t["modified"] is False and t["seconds"] >= 0 for t in facts["timing"])
    json.dumps(facts)


def test_summary_matches_the_pass_facts(facts) -> None:
    s = facts["summary"]
    conv_macs = 2 * 8 * 16 * 16 * 3 * 3 * 3
    gemm_macs = 2 * 8 * 10
    assert s["macs"] == conv_macs + gemm_macs
    assert s["params"] == 8 * 27 + 8 + 80 + 10
    assert s["weight_mb"] == pytest.approx((8 * 27 + 8 + 80 + 10) * 4 / 1e6)
    assert s["peak_activation_mb"] == pytest.approx(facts["memory"]["peak_live_bytes"] / 1e6)
    assert s["estimated_latency_ms"] == pytest.approx(facts["roofline"]["latency_ms"])
    assert set(s["estimates"]) == {"estimated_latency_ms", "peak_activation_mb"}
    assert s["unsupported_ops"] == {"onnxruntime": 1}
    assert s["batch"] == 2 and s["profile"] == "test-board"


def test_format_table(facts) -> None:
    text = format_table(facts, top=2)
    assert "latency (roofline estimate)" in text
    assert "peak activations (estimate)" in text
    assert "unsupported on onnxruntime" in text
    top = text.split("Top 2 nodes by estimated time")[1].split("Operators")[0]
    assert "Conv_0" in top  # the most expensive node leads
    assert len([ln for ln in top.strip().splitlines()]) == 2 + 2  # header, rule, two rows
    ops = text.split("Operators")[1]
    assert "custom.x::Foo" in ops and "Conv" in ops
