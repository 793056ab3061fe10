"""MagnitudePrunePass: exact zero counts, global vs per-layer thresholds, ORT runs, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import PassError
from robopt_compile.numerics import run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.prune.magnitude import NOTE, MagnitudePrunePass

RNG = np.random.default_rng(1)
# Conv weights are 10x smaller than the rest: a global threshold prunes them hardest.
W = {
    "W_conv": (RNG.standard_normal((32, 16, 3, 3)) * 0.01).astype(np.float32),  # 4608
    "B_fc": (RNG.standard_normal((64, 32)) * 0.1).astype(np.float32),  # 2048, transB=1
    "B_mm": (RNG.standard_normal((64, 16)) * 0.1).astype(np.float32),  # 1024
    "B_head": (RNG.standard_normal((16, 4)) * 0.1).astype(np.float32),  # 64 < min_params
}
ELIGIBLE = ("W_conv", "B_fc", "B_mm")
FEEDS = {"image": RNG.standard_normal((1, 16, 6, 6)).astype(np.float32)}


def _model() -> ir.Model:
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "W_conv", "b_conv"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        n("GlobalAveragePool", ["c"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flat"),
        n("Gemm", ["f", "B_fc"], ["h"], transB=1, name="fc"),
        n("MatMul", ["h", "B_mm"], ["h2"], name="mm"),
        n("MatMul", ["h2", "B_head"], ["action"], name="head"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in W.items()]
    inits.append(numpy_helper.from_array(np.full(32, 0.01, np.float32), "b_conv"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 6, 6])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def _init(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _zeros(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(a))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layer_scope_zeroes_exact_fraction_of_each_layer(sparsity: float) -> None:
    p = MagnitudePrunePass(sparsity, scope="layer")
    out = p(_model()).model
    rows = {r["node"]: r for r in p.report["rows"]}
    for node, name in (("conv", "W_conv"), ("fc", "B_fc"), ("mm", "B_mm")):
        after, before = _init(out, name), W[name]
        k = math.floor(sparsity * before.size + 0.5)
        assert _zeros(after) == k, name
        # exactly the k smallest |w| went; the rest kept their values
        order = np.sort(np.abs(before).ravel())
        assert np.abs(before[after == 0]).max() == order[k - 1]
        assert np.array_equal(after[after != 0], before[after != 0])
        assert rows[node]["params_zeroed"] == k and rows[node]["sparsity"] == k / before.size
    assert np.array_equal(_init(out, "B_head"), W["B_head"])
    assert np.array_equal(_init(out, "b_conv"), np.full(32, 0.01, np.float32))  # bias kept
    assert p.report["threshold"] is None and p.report["note"] == NOTE


def test_global_scope_uses_one_threshold() -> None:
    p = MagnitudePrunePass(0.5, scope="global")
    out = p(_model()).model
    total = sum(W[n].size for n in ELIGIBLE)
    zeros = sum(_zeros(_init(out, n)) for n in ELIGIBLE)
    assert zeros == total // 2
    t = p.report["threshold"]
    for name in ELIGIBLE:
        before, after = W[name], _init(out, name)
        assert (np.abs(before[after == 0]) <= t).all()
        assert (np.abs(before[after != 0]) > t).all()
    rows = {r["node"]: r for r in p.report["rows"]}
    # the conv's 10x smaller weights fall below the global threshold first
    assert rows["conv"]["sparsity"] > 0.75 and rows["fc"]["sparsity"] < 0.15
    json.dumps(p.report, allow_nan=False)  # it goes into report.json
    totals = p.report["totals"]
    assert totals["eligible_params"] == total and totals["params_zeroed"] == total // 2
    assert totals["sparsity_eligible"] == 0.5
    assert totals["sparsity_all_weights"] == (total // 2) / (total + W["B_head"].size)
    assert rows["head"]["eligible"] is False
    assert rows["head"]["reason"] == "64 weights, fewer than min_params=1024"


def test_pruned_model_runs_on_ort() -> None:
    out = MagnitudePrunePass(0.5, scope="layer")(_model()).model
    onnx.checker.check_model(ir.serde.serialize_model(out), full_check=True)
    dense, pruned = run_onnx(_model(), FEEDS)["action"], run_onnx(out, FEEDS)["action"]
    assert pruned.shape == dense.shape and np.isfinite(pruned).all()
    assert not np.allclose(pruned, dense)
    # the same computation in numpy with the pruned weights
    x = FEEDS["image"]
    wc = _init(out, "W_conv")
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # 1,16,6,6,3,3
    conv = np.einsum("bchwij,kcij->bkhw", cols, wc) + 0.01
    h = conv.mean(axis=(2, 3)) @ _init(out, "B_fc").T @ _init(out, "B_mm") @ W["B_head"]
    np.testing.assert_allclose(pruned, h, rtol=1e-4, atol=1e-6)


def test_exclude_and_min_params() -> None:
    p = MagnitudePrunePass(0.5, scope="layer", min_params=2000, exclude=["fc"])
    out = p(_model()).model
    rows = {r["node"]: r for r in p.report["rows"]}
    assert rows["fc"]["reason"] == "excluded" and rows["mm"]["reason"].startswith("1024 weights")
    assert np.array_equal(_init(out, "B_fc"), W["B_fc"])
    assert np.array_equal(_init(out, "B_mm"), W["B_mm"])
    assert _zeros(_init(out, "W_conv")) == W["W_conv"].size // 2


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_open_interval(sparsity: float) -> None:
    with pytest.raises(PassError, match="between 0 and 1 exclusive"):
        MagnitudePrunePass(sparsity)


def test_nothing_qualifies_raises_and_leaves_model_unchanged() -> None:
    model = _model()
    with pytest.raises(PassError, match=r"no weight qualifies .* Lower min_params"):
        MagnitudePrunePass(0.5, min_params=10**6)(model)
    for name, value in W.items():
        assert np.array_equal(_init(model, name), value)
    with pytest.raises(PassError, match="scope must be one of"):
        MagnitudePrunePass(0.5, scope="channel")


def test_registered() -> None:
    assert get_pass_class("prune-magnitude") is MagnitudePrunePass
