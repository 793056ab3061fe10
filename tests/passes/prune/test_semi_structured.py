"""SemiStructuredSparsityPass: 2:4 along the reduction dim, eligibility reasons, ORT numerics."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import PassError
from robopt_compile.numerics import run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.prune.semi_structured import (
    SPARSITY_KEY,
    SemiStructuredSparsityPass,
    check_pattern,
    prune_n_m,
)

RNG = np.random.default_rng(0)
# name -> (shape, scale); scales keep activations O(1) through the stack
WEIGHTS = {
    "W_stem": (64, 3, 3, 3),  # C=3: not a multiple of 4
    "W_conv": (64, 64, 3, 3),  # eligible, axis 1
    "W_dw": (64, 1, 3, 3),  # depthwise
    "B_fc": (128, 64),  # Gemm transB=1: axis 1
    "B_mm": (128, 68),  # MatMul: axis 0
    "B_odd": (68, 64),  # C=68 ok, K=64 ok -> eligible
    "S": (64, 64),  # shared by two MatMuls
    "B_head": (64, 10),  # Gemm transB=0: K=10 below min_channels
}


def _weights() -> dict[str, np.ndarray]:
    out = {}
    for name, shape in WEIGHTS.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[1 if name == "B_fc" else 0]
        out[name] = (RNG.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


W = _weights()


def _proto(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """image -> stem conv -> conv -> depthwise conv -> pool -> gemm -> matmul x2 -> shared
    matmul x2 -> gemm head."""
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "W_stem"], ["s"], pads=[1, 1, 1, 1], name="stem"),
        n("Relu", ["s"], ["s_r"], name="stem_relu"),
        n("Conv", ["s_r", "W_conv"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        n("Conv", ["c", "W_dw"], ["d"], pads=[1, 1, 1, 1], group=64, name="dw"),
        n("GlobalAveragePool", ["d"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flat"),
        n("Gemm", ["f", "B_fc", "b_fc"], ["h1"], transB=1, name="fc"),
        n("MatMul", ["h1", "B_mm"], ["h2"], name="mm"),
        n("MatMul", ["h2", "B_odd"], ["h3"], name="mm_odd"),
        n("MatMul", ["h3", "S"], ["h4"], name="shared_a"),
        n("MatMul", ["h4", "S"], ["h5"], name="shared_b"),
        n("Gemm", ["h5", "B_head"], ["action"], name="head"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.zeros(128, np.float32), "b_fc"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _model(weights: dict[str, np.ndarray] = W) -> ir.Model:
    return ir.serde.deserialize_model(_proto(weights))


FEEDS = {"image": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _init(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _reference_prune(w: np.ndarray, axis: int) -> np.ndarray:
    """Naive loops: keep the two largest |w| of every four along ``axis``."""
    moved = np.moveaxis(w, axis, -1).copy()
    flat = moved.reshape(-1, moved.shape[-1])
    for row in flat:
        for j in range(0, row.size, 4):
            g = row[j : j + 4]
            for i in sorted(range(4), key=lambda i: abs(g[i]))[:2]:
                g[i] = 0.0
    return np.moveaxis(flat.reshape(moved.shape), -1, axis)


def test_eligible_weights_get_2_4_along_reduction_dim() -> None:
    model = _model()
    p = SemiStructuredSparsityPass()
    result = p(model)
    assert result.modified
    out = result.model
    conv = _init(out, "W_conv")
    # TensorRT's check from its developer guide, verbatim in spirit: [K, C, R, S], C % 4 == 0
    K, C, R, S = conv.shape
    for k in range(K):
        for r in range(R):
            for s in range(S):
                for c4 in range(C // 4):
                    assert np.count_nonzero(conv[k, c4 * 4 : (c4 + 1) * 4, r, s]) == 2
    assert np.array_equal(conv, _reference_prune(W["W_conv"], 1))
    assert np.array_equal(_init(out, "B_fc"), _reference_prune(W["B_fc"], 1))  # transB=1
    assert np.array_equal(_init(out, "B_mm"), _reference_prune(W["B_mm"], 0))
    assert np.array_equal(_init(out, "B_odd"), _reference_prune(W["B_odd"], 0))
    # kept values are the originals
    kept = conv != 0
    assert np.array_equal(conv[kept], W["W_conv"][kept])
    rows = {r["node"]: r for r in p.report["rows"]}
    for name in ("conv", "fc", "mm", "mm_odd"):
        r = rows[name]
        assert r["eligible"] and r["reason"] is None and r["pattern_verified"] is True
        assert r["zeros_fraction"] == 0.5
        assert 0.5 < r["magnitude_kept_fraction"] < 1.0
    assert rows["fc"]["axis"] == 1 and rows["mm"]["axis"] == 0 and rows["conv"]["axis"] == 1
    assert p.report["pattern_verified"] is True
    json.dumps(p.report, allow_nan=False)  # it goes into report.json
    assert out.metadata_props[SPARSITY_KEY] == "2:4"
    assert "SPARSE_WEIGHTS" in p.report["tensorrt"]["builder_flag"]
    assert "no speedup" in p.report["note"] and "TensorRT will choose normal" in p.report["note"]


def test_ineligible_layers_untouched_with_reasons() -> None:
    p = SemiStructuredSparsityPass()
    out = p(_model()).model
    rows = {r["node"]: r for r in p.report["rows"]}
    assert set(rows) == {"stem", "conv", "dw", "fc", "mm", "mm_odd", "shared_a", "shared_b", "head"}
    expected = {
        "stem": "reduction dim C=3 is not a multiple of 4",
        "dw": "depthwise conv (group=64)",
        "shared_a": "shared weight 'S'",
        "shared_b": "shared weight 'S'",
        "head": "output channels K=10 below min_channels=64",
    }
    for node, reason in expected.items():
        assert not rows[node]["eligible"] and reason in rows[node]["reason"], rows[node]
        assert rows[node]["pattern_verified"] is None
    for name in ("W_stem", "W_dw", "S", "B_head"):
        assert np.array_equal(_init(out, name), W[name]), name
    t = p.report["totals"]
    assert t["layers"] == 9 and t["eligible_layers"] == 4
    eligible = sum(W[k].size for k in ("W_conv", "B_fc", "B_mm", "B_odd"))
    assert t["eligible_params"] == eligible and t["zeros_in_eligible"] == eligible // 2


def test_min_channels_and_exclude() -> None:
    p = SemiStructuredSparsityPass(min_channels=68, exclude=["fc"])
    out = p(_model()).model
    rows = {r["node"]: r for r in p.report["rows"]}
    assert rows["fc"]["reason"] == "excluded"
    assert "C=64 is below min_channels=68" in rows["conv"]["reason"]
    assert "K=64 below min_channels=68" in rows["mm_odd"]["reason"]
    assert [n for n, r in rows.items() if r["eligible"]] == ["mm"]
    assert np.array_equal(_init(out, "B_fc"), W["B_fc"])
    assert np.array_equal(_init(out, "W_conv"), W["W_conv"])
    assert check_pattern(_init(out, "B_mm"), 0)


def test_result_passes_checker_and_runs_on_ort() -> None:
    model = _model()
    out = SemiStructuredSparsityPass()(model).model
    proto = ir.serde.serialize_model(out)
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}[SPARSITY_KEY] == "2:4"
    expected = dict(W)
    for name, axis in (("W_conv", 1), ("B_fc", 1), ("B_mm", 0), ("B_odd", 0)):
        expected[name] = _reference_prune(W[name], axis)
    want = run_onnx(_model(expected), FEEDS)["action"]
    got = run_onnx(out, FEEDS)["action"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    dense = run_onnx(_model(), FEEDS)["action"]
    assert not np.allclose(got, dense)  # pruning really changed the function


def test_nothing_eligible_raises_and_leaves_model_unchanged() -> None:
    model = _model()
    before = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    with pytest.raises(PassError, match=r"no layer can take the 2:4 pattern .* Lower min_"):
        SemiStructuredSparsityPass(min_channels=4096)(model)
    for k, v in model.graph.initializers.items():
        assert np.array_equal(v.const_value.numpy(), before[k]), k
    assert SPARSITY_KEY not in model.metadata_props


def test_bad_arguments_and_unknown_exclude() -> None:
    with pytest.raises(PassError, match="0 < n < m"):
        SemiStructuredSparsityPass(n=4, m=4)
    with pytest.raises(PassError, match="Did you mean 'conv'"):
        SemiStructuredSparsityPass(exclude=["cnv"])(_model())


def test_check_pattern_and_prune_n_m() -> None:
    w = np.array([[1.0, -3.0, 0.5, 2.0, 0.1, 0.2, -0.3, 0.4]])
    p = prune_n_m(w, axis=1)
    assert p.tolist() == [[0.0, -3.0, 0.0, 2.0, 0.0, 0.0, -0.3, 0.4]]
    assert check_pattern(p, 1) and not check_pattern(w, 1)
    assert not check_pattern(np.zeros((2, 6)), 1)  # 6 is not a multiple of 4
    assert check_pattern(np.zeros((8, 2)), 0)
    one_in_four = prune_n_m(w, axis=1, n=1, m=4)
    assert check_pattern(one_in_four, 1, n=1) and np.count_nonzero(one_in_four) == 2


def test_registered() -> None:
    assert get_pass_class("prune-2of4") is SemiStructuredSparsityPass


def test_failed_verification_raises_before_any_weight_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from robopt_compile.passes.prune import semi_structured

    monkeypatch.setattr(semi_structured, "check_pattern", lambda *a, **k: False)
    model = _model()
    with pytest.raises(PassError, match=r"fail the pattern \(a bug\)"):
        SemiStructuredSparsityPass()(model)
    for name, value in W.items():
        assert np.array_equal(_init(model, name), value), name
    assert SPARSITY_KEY not in model.metadata_props
