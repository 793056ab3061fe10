"""ChannelPrunePass: exact channel counts, coupled groups, valid graphs, exact numerics on
channels that are dead by construction, clear errors when nothing can be pruned."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import InputError, PassError
from robopt_compile.numerics import run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.prune.channels import ChannelPrunePass

RNG = np.random.default_rng(0)


def _f(shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inits, inputs, outputs) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.from_proto(proto)


def _resnet_like(dead: int = 0) -> ir.Model:
    """stem conv -> [conv-BN-ReLU -> depthwise -> conv] + residual -> GAP -> Reshape -> Gemm.

    ``dead``: that many output channels of ``c1`` are exactly zero after its ReLU (zero weights,
    BN mean/beta 0), so removing them must not change the output at all.
    """
    c1 = _f((16, 16, 3, 3))
    c1[:dead] = 0.0
    beta = _f((16,), 0.1)
    beta[:dead] = 0.0
    mean = _f((16,), 0.1)
    mean[:dead] = 0.0
    inits = {
        "w0": _f((16, 3, 3, 3)),
        "b0": _f((16,), 0.1),
        "w1": c1,
        "bn_s": np.ones(16, np.float32) + _f((16,), 0.05),
        "bn_b": beta,
        "bn_m": mean,
        "bn_v": np.ones(16, np.float32),
        "wd": _f((16, 1, 3, 3)),
        "w2": _f((16, 16, 1, 1)),
        "b2": _f((16,), 0.1),
        "axes": np.array([2, 3], np.int64),
        "shape": np.array([1, 16], np.int64),
        "wf": _f((4, 16)),
        "bf": _f((4,), 0.1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["t0"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["t0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["t1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["t1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1"
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd"], ["d1"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d1", "w2", "b2"], ["t2"], name="c2"),
        helper.make_node("Add", ["t2", "r0"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("ReduceMean", ["r2", "axes"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 4])])


def _feeds(model: ir.Model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        v.name: rng.standard_normal([int(d) for d in v.shape]).astype(np.float32)
        for v in model.graph.inputs
    }


def _check_valid(model: ir.Model) -> dict[str, np.ndarray]:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return run_onnx(model, _feeds(model))


def _w(model: ir.Model, name: str) -> tuple[int, ...]:
    return tuple(model.graph.initializers[name].const_value.shape)


def test_registered():
    assert get_pass_class("prune-channels") is ChannelPrunePass


def test_residual_depthwise_bn_chain_default_protects_stem():
    m = _resnet_like()
    p = ChannelPrunePass(0.5)
    assert p(m).modified
    # c0 and c2 are coupled by the residual add; c0 reads the input, so the group is protected.
    assert _w(m, "w0") == (16, 3, 3, 3) and _w(m, "w2") == (16, 8, 1, 1)
    assert _w(m, "w1") == (8, 16, 3, 3)
    assert _w(m, "bn_s") == (8,) and _w(m, "bn_v") == (8,)
    assert _w(m, "wd") == (8, 1, 3, 3)
    _check_valid(m)
    rows = {r["group"]: r for r in p.report["groups"]}
    assert rows["c0"]["status"] == "protected" and rows["c0"]["producers"] == ["c0", "c2"]
    assert rows["c1"]["channels_after"] == 8 and rows["c1"]["status"] == "pruned"
    assert rows["fc"]["status"].startswith("blocked: graph output")
    layers = {r["node"]: r for r in p.report["layers"]}
    assert (
        layers["c1"]["params_before"] == 16 * 16 * 9 and layers["c1"]["params_after"] == 8 * 16 * 9
    )
    assert layers["c1"]["macs_after"] == 8 * 8 * 8 * 16 * 9
    assert layers["c2"]["in_channels_after"] == 8
    tot = p.report["totals"]
    assert tot["channels_removed"] == 8 and tot["groups_pruned"] == 1
    assert tot["params_before"] - tot["params_after"] == 8 * 16 * 9 + 16 * 8 + 8 * 9


def test_unprotected_prunes_coupled_group_and_rewrites_reshape():
    m = _resnet_like()
    p = ChannelPrunePass(0.5, protect=[])
    p(m)
    assert _w(m, "w0") == (8, 3, 3, 3) and _w(m, "b0") == (8,)
    assert _w(m, "w2") == (8, 8, 1, 1) and _w(m, "b2") == (8,)
    assert _w(m, "wf") == (4, 8)
    assert m.graph.initializers["shape"].const_value.numpy().tolist() == [1, 8]
    out = _check_valid(m)
    assert out["y"].shape == (1, 4)


def test_dead_channels_removed_exactly():
    """L1 ranks the 8 all-zero channels lowest; removing them leaves the output unchanged."""
    m = _resnet_like(dead=8)
    feeds = _feeds(m)
    before = run_onnx(m, feeds)
    ChannelPrunePass(0.5)(m)
    after = run_onnx(m, feeds)
    np.testing.assert_allclose(after["y"], before["y"], rtol=1e-5, atol=1e-6)


def test_activation_criterion_finds_channels_dead_on_data():
    """Weights are not small, but a ReLU kills channels 0..7 on every input: the activation
    criterion removes them (exact output), the weight norm does not know."""
    m = _resnet_like()
    bn_b = m.graph.initializers["bn_b"].const_value.numpy().copy()
    bn_b[:8] = -1e3  # always negative before the ReLU
    m.graph.initializers["bn_b"].const_value = ir.tensor(bn_b, name="bn_b")
    calib = [_feeds(m, seed=s) for s in range(4)]
    feeds = _feeds(m, seed=9)
    before = run_onnx(m, feeds)
    p = ChannelPrunePass(0.5, criterion="activation", calibration=calib)
    p(m)
    np.testing.assert_allclose(run_onnx(m, feeds)["y"], before["y"], rtol=1e-5, atol=1e-5)


def _concat_model(dead: bool) -> ir.Model:
    wa, wb = _f((16, 3, 1, 1)), _f((8, 3, 1, 1))
    if dead:
        wa[8:] = 0.0
        wb[4:] = 0.0
    inits = {"wa": wa, "wb": wb, "wc": _f((16, 24, 1, 1)), "wo": _f((4, 16, 1, 1))}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], name="cc"),
        helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
        helper.make_node("Conv", ["rc", "wo"], ["y"], name="co"),
    ]
    return _model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])])


def test_concat_keeps_offsets_of_each_input_group():
    m = _concat_model(dead=True)
    feeds = _feeds(m)
    before = run_onnx(m, feeds)
    p = ChannelPrunePass(0.5, protect=["cc"], multiple=1)
    p(m)
    assert _w(m, "wa") == (8, 3, 1, 1) and _w(m, "wb") == (4, 3, 1, 1)
    assert _w(m, "wc") == (16, 12, 1, 1) and _w(m, "wo") == (4, 16, 1, 1)
    _check_valid(m)
    np.testing.assert_allclose(run_onnx(m, feeds)["y"], before["y"], rtol=1e-5, atol=1e-6)


def test_matmul_chain_with_bias_on_3d_input():
    inits = {"w1": _f((16, 32)), "b1": _f((32,), 0.1), "w2": _f((32, 16)), "w3": _f((16, 6))}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Gelu", ["hb"], ["g"], name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    m = _model(nodes, inits, [("x", [2, 5, 16])], [("y", [2, 5, 6])])
    p = ChannelPrunePass(0.25, multiple=1)
    p(m)
    assert _w(m, "w1") == (16, 32)  # first layer protected
    assert _w(m, "w2") == (32, 12) and _w(m, "w3") == (12, 6)
    assert _check_valid(m)["y"].shape == (2, 5, 6)
    p2 = ChannelPrunePass(0.5, protect=[], multiple=8)
    m2 = _model(nodes, inits, [("x", [2, 5, 16])], [("y", [2, 5, 6])])
    p2(m2)
    assert _w(m2, "w1") == (16, 16) and _w(m2, "b1") == (16,) and _w(m2, "w2") == (16, 8)
    _check_valid(m2)


def test_layer_ratio_override_and_global_scope():
    m = _concat_model(dead=False)
    ChannelPrunePass(0.5, protect=[], multiple=1, layer_ratios={"cb": 0.25})(m)
    assert _w(m, "wa") == (8, 3, 1, 1) and _w(m, "wb") == (6, 3, 1, 1)
    m = _concat_model(dead=False)
    p = ChannelPrunePass(0.5, protect=[], multiple=1, scope="global")
    p(m)
    removed = p.report["totals"]["channels_removed"]
    assert 14 <= removed <= 22  # about half of the 16 + 8 + 16 candidate channels
    _check_valid(m)
    with pytest.raises(InputError, match="no prunable layer named 'nope'"):
        ChannelPrunePass(0.5, layer_ratios={"nope": 0.1})(_concat_model(dead=False))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("single", "graph output"),
        ("attention", "product of two activations"),
        ("grouped", "grouped Conv"),
        ("shared", "shared by 2 nodes"),
    ],
)
def test_nothing_prunable_is_a_clear_error_and_model_unchanged(case, reason):
    if case == "single":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c")]
        m = _model(nodes, {"w": _f((8, 3, 1, 1))}, [("x", [1, 3, 4, 4])], [("y", [1, 8, 4, 4])])
    elif case == "attention":
        nodes = [
            helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
            helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
            helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["y"], name="scores"),
        ]
        inits = {"wq": _f((16, 16)), "wk": _f((16, 16))}
        m = _model(nodes, inits, [("x", [1, 4, 16])], [("y", [1, 4, 4])])
    elif case == "grouped":
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
            helper.make_node("Conv", ["h", "w2"], ["y"], name="c2", group=2),
        ]
        inits = {"w1": _f((8, 3, 1, 1)), "w2": _f((8, 4, 1, 1))}
        m = _model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 8, 4, 4])])
    else:
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
            helper.make_node("Conv", ["h", "w2"], ["h2"], name="c2"),
            helper.make_node("Conv", ["h2", "w2"], ["y"], name="c3"),
        ]
        inits = {"w1": _f((8, 8, 1, 1)), "w2": _f((8, 8, 1, 1))}
        m = _model(nodes, inits, [("x", [1, 8, 4, 4])], [("y", [1, 8, 4, 4])])
    before = ir.to_proto(m).SerializeToString()
    with pytest.raises(PassError, match="nothing in this model can be pruned safely") as e:
        ChannelPrunePass(0.5, protect=[])(m)
    assert reason in str(e.value) or case == "shared"
    assert "\n" not in str(e.value)
    assert ir.to_proto(m).SerializeToString() == before


def test_ratio_too_small_after_rounding_and_bad_options():
    with pytest.raises(PassError, match="removes no channel"):
        ChannelPrunePass(0.01)(_resnet_like())
    with pytest.raises(InputError, match="in \\[0, 1\\)"):
        ChannelPrunePass(1.0)
    with pytest.raises(InputError, match="needs calibration"):
        ChannelPrunePass(0.5, criterion="activation")
    with pytest.raises(InputError, match="unknown pruning criterion"):
        ChannelPrunePass(0.5, criterion="taylor")
    with pytest.raises(InputError, match="is not a node"):
        ChannelPrunePass(0.5, protect=["nope"])(_resnet_like())


def test_value_read_inside_a_subgraph_blocks_its_group():
    branch_out = helper.make_tensor_value_info("hb", TensorProto.FLOAT, [1, 16, 4, 4])
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["hb"], name="then_id")], "then", [], [branch_out]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["hb"], name="else_neg")], "else", [], [branch_out]
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t"], name="c1"),
        helper.make_node("Relu", ["t"], ["h"], name="relu"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="c2"),
        helper.make_node(
            "If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 4, 4]),
        ],
        [
            numpy_helper.from_array(_f((16, 8, 1, 1)), "w1"),
            numpy_helper.from_array(_f((8, 16, 1, 1)), "w2"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m = ir.from_proto(onnx.shape_inference.infer_shapes(proto, strict_mode=True))
    with pytest.raises(PassError, match="read inside a subgraph"):
        ChannelPrunePass(0.5, protect=[])(m)


def _convnext_like(ln_axis: int = -1) -> ir.Model:
    """A ConvNeXt block (depthwise Conv, channels-last LayerNorm, an inverted bottleneck of
    MatMuls, a layer scale, a residual add) and a head whose LayerNorm shares its constants
    with the block's (as an exporter's deduplication leaves them)."""
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"], name="stem"),
        helper.make_node("Conv", ["s", "wd"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["d"], ["dt"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node(
            "LayerNormalization", ["dt", "ln_s", "ln_b"], ["n"], name="ln", axis=ln_axis
        ),
        helper.make_node("MatMul", ["n", "w1"], ["h"], name="pw1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="pw1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="pw2"),
        helper.make_node("Mul", ["o", "gamma"], ["og"], name="layer_scale"),
        helper.make_node("Transpose", ["og"], ["ot"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["s", "ot"], ["res"], name="residual"),
        helper.make_node("ReduceMean", ["res", "axes"], ["p"], name="pool", keepdims=0),
        helper.make_node("LayerNormalization", ["p", "ln_s", "ln_b"], ["pn"], name="head_ln"),
        helper.make_node("MatMul", ["pn", "wh"], ["y"], name="head"),
    ]
    inits = {"ws": _f((16, 3, 1, 1)), "wd": _f((16, 1, 3, 3)),
             "ln_s": np.ones(16, np.float32), "ln_b": np.zeros(16, np.float32),
             "w1": _f((16, 64)), "b1": _f((64,)), "w2": _f((64, 16)),
             "gamma": np.full(16, 0.5, np.float32), "axes": np.array([2, 3], np.int64),
             "wh": _f((16, 4))}  # fmt: skip
    return _model(nodes, inits, [("x", [1, 3, 8, 8])], [("y", [1, 4])])


def test_convnext_block_prunes_through_channels_last_layer_norm():
    """The residual stream (stem + the bottleneck's second MatMul, through the depthwise Conv,
    the transposes, LayerNorm over the channels and the layer scale) and the bottleneck's
    hidden units are both prunable; shared LayerNorm constants get a copy each."""
    m = _convnext_like()
    p = ChannelPrunePass(0.5, protect=[])
    p(m)
    assert p.report["unshared_constants"] == 2  # ln_s and ln_b, read by two LayerNorms
    assert _w(m, "ws")[0] == 8 and _w(m, "wd")[0] == 8 and _w(m, "w1") == (8, 32)
    assert _w(m, "w2") == (32, 8) and _w(m, "wh") == (8, 4) and _w(m, "gamma") == (8,)
    assert _w(m, "ln_s") == (8,) and _w(m, "ln_s__1") == (8,) and _w(m, "b1") == (32,)
    out = _check_valid(m)
    assert next(iter(out.values())).shape == (1, 4)


def test_layer_norm_over_more_than_the_channels_blocks_and_leaves_the_model_unchanged():
    m = _convnext_like(ln_axis=1)  # normalizes (H, W, C) of the NHWC tensor
    p = ChannelPrunePass(0.5, protect=[], layer_ratios={"pw1": 0.5})
    p(m)  # the hidden units still prune; the stream does not
    assert _w(m, "w1") == (16, 32) and _w(m, "ws")[0] == 16
    assert "normalizes other axes too" in json.dumps(p.report)
    m = _convnext_like(ln_axis=1)
    m.graph.outputs.append(next(n for n in m.graph if n.name == "pw1").outputs[0])
    before = ir.to_proto(m).SerializeToString()
    with pytest.raises(PassError, match="nothing in this model can be pruned safely"):
        ChannelPrunePass(0.5, protect=[])(m)
    assert ir.to_proto(m).SerializeToString() == before  # the unshared copies taken back


def test_channels_first_layer_norm_written_out_prunes_with_its_channels():
    """ConvNeXt's LayerNorm2d as exporters write it: mean and variance over the channel axis
    (ReduceMean, keepdims), normalize, per-channel scale and shift of shape (C, 1, 1)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
        helper.make_node("ReduceMean", ["h", "ax"], ["u"], name="mean", keepdims=1),
        helper.make_node("Sub", ["h", "u"], ["d"], name="center"),
        helper.make_node("Mul", ["d", "d"], ["d2"], name="square"),
        helper.make_node("ReduceMean", ["d2", "ax"], ["v"], name="var", keepdims=1),
        helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="std"),
        helper.make_node("Div", ["d", "sd"], ["nrm"], name="normalize"),
        helper.make_node("Mul", ["nrm", "g"], ["sc"], name="scale"),
        helper.make_node("Add", ["sc", "b"], ["o"], name="shift"),
        helper.make_node("Conv", ["o", "w2"], ["y"], name="c2"),
    ]
    inits = {"w1": _f((16, 3, 1, 1)), "ax": np.array([1], np.int64),
             "eps": np.array(1e-6, np.float32), "g": _f((16, 1, 1)), "b": _f((16, 1, 1)),
             "w2": _f((4, 16, 1, 1))}  # fmt: skip
    m = _model(nodes, inits, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])])
    ChannelPrunePass(0.5, protect=[])(m)
    assert _w(m, "w1")[0] == 8 and _w(m, "g") == (8, 1, 1) and _w(m, "w2") == (4, 8, 1, 1)
    assert next(iter(_check_valid(m).values())).shape == (1, 4, 4, 4)
