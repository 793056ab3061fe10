"""LowRankPass: structure and ONNX Runtime numerics of the SVD rewrite, skips, report, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import PassError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.prune.lowrank import LowRankPass, rank_table

F = TensorProto.FLOAT


def _lowrank(m: int, n: int, rank: int = 6, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """An m x n weight of rank ``rank`` plus small dense noise, scaled to unit-size entries."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(rank)
    return (w + noise * rng.standard_normal((m, n))).astype(np.float32)


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _checked(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _feeds(model: ir.Model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {v.name: [d if isinstance(d, int) else 2 for d in v.shape] for v in model.graph.inputs}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _truncate(w: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_onnx(model, feeds, optimization="disable")


def test_registered() -> None:
    assert get_pass_class("low-rank") is LowRankPass


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_bias_and_alpha(trans_b: int) -> None:
    w = _lowrank(64, 48)  # B as [K, N]
    b = w.T.copy() if trans_b else w
    bias = np.random.default_rng(2).standard_normal(48).astype(np.float32)
    node = helper.make_node(
        "Gemm", ["X", "B", "C"], ["Y"], alpha=0.5, beta=2.0, transB=trans_b, name="fc"
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("X", F, ["N", 64])],
        [helper.make_tensor_value_info("Y", F, ["N", 48])],
        [_init("B", b), _init("C", bias)],
    )
    feeds = _feeds(model)
    ref = _run(model, feeds)
    p = LowRankPass(energy=0.99)
    result = p(model)
    assert result.modified and result.model is model
    _checked(model)
    assert _ops(model) == ["Gemm", "Gemm"]
    first, second = model.graph
    assert first.name == "fc_lowrank_0" and second.name == "fc"
    assert second.inputs[0] is first.outputs[0] and second.inputs[2].name == "C"
    assert [v.name for v in model.graph.outputs] == ["Y"] and second.outputs[0].name == "Y"
    assert second.attributes.get_float("alpha") == 0.5 and second.attributes.get_float("beta") == 2
    assert "C" not in [v.name for v in first.inputs if v is not None]
    assert "B" not in model.graph.initializers
    row = p.report["rows"][0]
    r = row["rank"]
    assert row["applied"] and r == 8 and row["shape"] == list(b.shape)
    assert first.outputs[0].shape == ir.Shape(["N", r])
    got = _run(model, feeds)
    assert compare(ref, got)["Y"]["cosine"] > 0.9999
    expected = 0.5 * feeds["X"] @ _truncate(w, r) + 2.0 * bias
    np.testing.assert_allclose(got["Y"], expected, rtol=1e-4, atol=1e-4)
    exact = np.linalg.norm(b - _truncate(b, r)) / np.linalg.norm(b)
    assert row["weight_relative_error"] == pytest.approx(exact, rel=1e-6)


def test_matmul_with_3d_input() -> None:
    w = _lowrank(64, 96)
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="proj")],
        [helper.make_tensor_value_info("X", F, ["N", 5, 64])],
        [helper.make_tensor_value_info("Y", F, ["N", 5, 96])],
        [_init("W", w)],
    )
    feeds = _feeds(model)
    ref = _run(model, feeds)
    p = LowRankPass(energy=0.99)
    p(model)
    _checked(model)
    assert _ops(model) == ["MatMul", "MatMul"]
    r = p.report["rows"][0]["rank"]
    assert model.graph.node(0).outputs[0].shape == ir.Shape(["N", 5, r])
    assert sorted(model.graph.initializers) == ["W_lowrank_0", "W_lowrank_1"]
    assert model.graph.initializers["W_lowrank_0"].const_value.shape == ir.Shape([64, r])
    got = _run(model, feeds)
    assert compare(ref, got)["Y"]["cosine"] > 0.9999
    np.testing.assert_allclose(got["Y"], feeds["X"] @ _truncate(w, r), rtol=1e-4, atol=1e-4)


def test_conv_1x1_stride_2_with_bias() -> None:
    w = _lowrank(48, 64)
    bias = np.random.default_rng(3).standard_normal(48).astype(np.float32)
    node = helper.make_node(
        "Conv", ["X", "W", "B"], ["Y"], kernel_shape=[1, 1], strides=[2, 2], name="pw"
    )
    model = _model(
        [node],
        [helper.make_tensor_value_info("X", F, [1, 64, 9, 9])],
        [helper.make_tensor_value_info("Y", F, [1, 48, 5, 5])],
        [_init("W", w.reshape(48, 64, 1, 1)), _init("B", bias)],
    )
    feeds = _feeds(model)
    ref = _run(model, feeds)
    p = LowRankPass(energy=0.99)
    p(model)
    _checked(model)
    first, second = model.graph
    r = p.report["rows"][0]["rank"]
    assert (first.op_type, second.op_type) == ("Conv", "Conv")
    assert first.attributes.get_ints("strides") == (2, 2) and len(first.inputs) == 2
    assert "strides" not in second.attributes and second.inputs[2].name == "B"
    assert first.inputs[1].const_value.shape == ir.Shape([r, 64, 1, 1])
    assert second.inputs[1].const_value.shape == ir.Shape([48, r, 1, 1])
    assert first.outputs[0].shape == ir.Shape([1, r, 5, 5])
    got = _run(model, feeds)
    assert compare(ref, got)["Y"]["cosine"] > 0.9999
    x = feeds["X"][:, :, ::2, ::2]
    expected = np.einsum("oi,bihw->bohw", _truncate(w, r), x) + bias[None, :, None, None]
    np.testing.assert_allclose(got["Y"], expected, rtol=1e-4, atol=1e-4)


def _two_convs() -> ir.Model:
    rng = np.random.default_rng(4)
    return _model(
        [
            helper.make_node("Conv", ["X", "K"], ["H"], kernel_shape=[3, 3], name="conv3"),
            helper.make_node("Conv", ["H", "W"], ["Y"], kernel_shape=[1, 1], name="conv1"),
        ],
        [helper.make_tensor_value_info("X", F, [1, 64, 6, 6])],
        [helper.make_tensor_value_info("Y", F, [1, 64, 4, 4])],
        [
            _init("K", rng.standard_normal((64, 64, 3, 3)) * 0.05),
            _init("W", _lowrank(64, 64).reshape(64, 64, 1, 1)),
        ],
    )


def test_3x3_conv_is_not_touched() -> None:
    model = _two_convs()
    kernel = model.graph.initializers["K"].const_value.numpy().copy()
    p = LowRankPass(energy=0.95)
    p(model)
    _checked(model)
    assert [row["node"] for row in p.report["rows"]] == ["conv1"]
    conv3 = model.graph.node("conv3")
    assert conv3.inputs[1].name == "K"
    np.testing.assert_array_equal(conv3.inputs[1].const_value.numpy(), kernel)
    assert _ops(model) == ["Conv", "Conv", "Conv"]


def _matmuls(shapes: dict[str, tuple[int, int]], shared: bool = False) -> ir.Model:
    """A chain X -> MatMul -> ... -> Y with one weight per node named ``W_<node>``."""
    nodes, inits, prev = [], [], "X"
    for i, (name, (m, n)) in enumerate(shapes.items()):
        out = "Y" if i == len(shapes) - 1 else f"h{i}"
        weight = "W_shared" if shared and i < 2 else f"W_{name}"
        nodes.append(helper.make_node("MatMul", [prev, weight], [out], name=name))
        if weight not in {t.name for t in inits}:
            inits.append(_init(weight, _lowrank(m, n, seed=i)))
        prev = out
    first, last = next(iter(shapes.values())), list(shapes.values())[-1]
    return _model(
        nodes,
        [helper.make_tensor_value_info("X", F, ["N", first[0]])],
        [helper.make_tensor_value_info("Y", F, ["N", last[1]])],
        inits,
    )


def test_shared_weight_is_skipped() -> None:
    model = _matmuls({"a": (64, 64), "b": (64, 64), "c": (64, 64)}, shared=True)
    feeds = _feeds(model)
    ref = _run(model, feeds)
    p = LowRankPass(energy=0.99)
    p(model)
    _checked(model)
    rows = {row["node"]: row for row in p.report["rows"]}
    for name in ("a", "b"):
        assert not rows[name]["applied"]
        assert rows[name]["reason"] == "weight 'W_shared' is shared by 2 uses"
    assert rows["c"]["applied"] and p.report["totals"]["factorized"] == 1
    assert "W_shared" in model.graph.initializers and _ops(model) == ["MatMul"] * 4
    assert compare(ref, _run(model, feeds))["Y"]["cosine"] > 0.999


def test_exclude() -> None:
    model = _matmuls({"a": (64, 64), "b": (64, 64)})
    p = LowRankPass(energy=0.99, exclude=["a"])
    p(model)
    rows = {row["node"]: row for row in p.report["rows"]}
    assert rows["a"]["reason"] == "excluded" and rows["a"]["rank"] is None
    assert rows["b"]["applied"]
    assert model.graph.node("a").inputs[1].name == "W_a"
    with pytest.raises(PassError, match=r"'bb'.*Did you mean 'b'"):
        LowRankPass(energy=0.99, exclude=["bb"])(_matmuls({"a": (64, 64), "b": (64, 64)}))


def test_rank_ratio() -> None:
    """0.1 * 40 is 4.000000000000001 in floats: the rank must still be 4, then rounded."""
    shapes = {"a": (64, 40), "b": (40, 64)}
    p = LowRankPass(rank_ratio=0.1, round_to=1)
    p(_matmuls(shapes))
    assert [row["rank"] for row in p.report["rows"]] == [4, 4]
    p = LowRankPass(rank_ratio=0.1)
    model = _matmuls(shapes)
    p(model)
    assert [row["rank"] for row in p.report["rows"]] == [8, 8]
    assert model.graph.initializers["W_a_lowrank_1"].const_value.shape == ir.Shape([8, 40])


def test_full_energy_saves_nothing_and_raises_with_model_unchanged() -> None:
    model = _matmuls({"a": (64, 64)})
    before = ir.serde.serialize_model(model).SerializeToString()
    p = LowRankPass(energy=1.0)
    with pytest.raises(PassError) as info:
        p(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("low-rank: no Gemm/MatMul/1x1-Conv")
    assert "needs rank 64, a saving needs rank <= 28" in message
    assert "lower the energy, use rank=0.375 (rank_ratio), or drop --low-rank." in message
    assert ir.serde.serialize_model(model).SerializeToString() == before
    (row,) = p.report["rows"]
    assert not row["applied"] and row["rank"] == 64 and row["energy_kept"] == pytest.approx(1)
    assert row["reason"] == (
        "rank 64 needs 8192 MACs vs 4096 dense, saving less than min_saving=0.1 (needs rank <= 28)"
    )
    assert row["params_after"] == row["params_before"] == 4096
    assert LowRankPass(rank_ratio=0.375)(model).modified  # the suggested fix applies


def test_nothing_to_factorize_messages() -> None:
    with pytest.raises(PassError, match=r"no weight can be factorized \('a': min\(m, n\) = 16"):
        LowRankPass(energy=0.9)(_matmuls({"a": (16, 16)}))
    no_weight = _model(
        [helper.make_node("MatMul", ["X", "Z"], ["Y"])],
        [helper.make_tensor_value_info(k, F, [64, 64]) for k in "XZ"],
        [helper.make_tensor_value_info("Y", F, [64, 64])],
        [],
    )
    with pytest.raises(PassError, match="has no Gemm/MatMul/1x1-Conv node with a constant"):
        LowRankPass(energy=0.9)(no_weight)


def test_report_totals_are_exact() -> None:
    model = _matmuls({"a": (64, 64), "b": (64, 32), "c": (32, 16)})
    p = LowRankPass(rank_ratio=0.125)
    p(model)
    json.dumps(p.report)
    rows = {row["node"]: row for row in p.report["rows"]}
    # a: rank ceil(0.125 * 64) = 8 -> 8 * (64 + 64) = 1024 params / MACs (4096 dense)
    # b: rank ceil(0.125 * 32) = 4, rounded up to 8 -> 8 * (64 + 32) = 768 (2048 dense)
    # c: min(32, 16) < min_dim = 32: stays dense, 512
    assert (rows["a"]["rank"], rows["b"]["rank"], rows["c"]["rank"]) == (8, 8, None)
    assert rows["c"]["reason"] == "min(m, n) = 16 is below min_dim = 32"
    assert p.report["totals"] == {
        "params_before": 4096 + 2048 + 512,
        "params_after": 1024 + 768 + 512,
        "macs_before": 4096 + 2048 + 512,
        "macs_after": 1024 + 768 + 512,
        "candidates": 3,
        "factorized": 2,
    }
    params = sum(v.const_value.size for v in model.graph.initializers.values())
    assert params == p.report["totals"]["params_after"]
    assert p.report["config"]["rank_ratio"] == 0.125 and "per row of A" in p.report["macs_unit"]


def test_constant_node_weight_is_lifted() -> None:
    w = _lowrank(64, 64)
    model = _model(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
            helper.make_node("MatMul", ["X", "W"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", F, ["N", 64])],
        [helper.make_tensor_value_info("Y", F, ["N", 64])],
        [],
    )
    feeds = _feeds(model)
    ref = _run(model, feeds)
    p = LowRankPass(energy=0.99)
    p(model)
    _checked(model)
    assert p.report["rows"][0]["node"] == "MatMul_1"
    assert _ops(model) == ["MatMul", "MatMul"] and model.graph.node(1).name == "MatMul_1"
    assert compare(ref, _run(model, feeds))["Y"]["cosine"] > 0.9999


def test_rank_table() -> None:
    w = _lowrank(48, 32, rank=4)
    table = rank_table(w, [1, 4, 16, 32])
    assert [row["rank"] for row in table] == [1, 4, 16, 32]
    for row in table:
        r = row["rank"]
        assert row["params_ratio"] == row["macs_ratio"] == r * (48 + 32) / (48 * 32)
        exact = np.linalg.norm(w - _truncate(w, r)) / np.linalg.norm(w)
        assert row["relative_error"] == pytest.approx(exact, rel=1e-6, abs=1e-12)
    assert table[1]["relative_error"] < 0.02 < table[0]["relative_error"]
    assert table[-1]["energy_kept"] == pytest.approx(1.0)
    assert rank_table(w.reshape(48, 32, 1, 1), [4]) == table[1:2]
    with pytest.raises(ValueError, match=r"outside 1\.\.32"):
        rank_table(w, [33])


def test_config_is_checked() -> None:
    with pytest.raises(PassError, match="exactly one of energy"):
        LowRankPass()
    with pytest.raises(PassError, match="exactly one of energy"):
        LowRankPass(energy=0.9, rank_ratio=0.5)
    with pytest.raises(PassError, match="energy must be in"):
        LowRankPass(energy=1.5)
