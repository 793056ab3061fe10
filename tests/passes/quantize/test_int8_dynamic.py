"""DynamicInt8Pass: MatMul/Gemm weights to int8 with run-time activation ranges; conv nets
refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from robopt_compile.errors import PassError, UnknownNameError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.quantize.int8_dynamic import DynamicInt8Pass, conv_mac_share

# A state policy: two hidden layers and a head (Gemm at batch 1), plus a 3D MatMul with an
# activation-by-activation MatMul (ORT quantizes only constant-B MatMuls dynamically).
MLP = """
<ir_version: 9, opset_import: ["" : 17]>
mlp (float[1,39] obs, float[1,8,64] tokens, float[256,39] W1, float[256] b1, float[256,256] W2,
     float[256] b2, float[7,256] W3, float[7] b3, float[64,64] Wt) => (float[1,7] action,
     float[1,8,8] attn)
{
  h1 = Gemm<transB = 1>(obs, W1, b1)
  r1 = Relu(h1)
  h2 = Gemm<transB = 1>(r1, W2, b2)
  r2 = Relu(h2)
  action = Gemm<transB = 1>(r2, W3, b3)
  p = MatMul(tokens, Wt)
  pt = Transpose<perm = [0, 2, 1]>(p)
  attn = MatMul(p, pt)
}
"""

CNN = """
<ir_version: 9, opset_import: ["" : 17]>
cnn (float[1,3,32,32] image, float[32,3,3,3] W1, float[32] b1, float[32,32,3,3] W2,
     float[32] b2, float[8,32] Wh, float[8] bh) => (float[1,8] action)
{
  c1 = Conv<pads = [1, 1, 1, 1]>(image, W1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads = [1, 1, 1, 1]>(r1, W2, b2)
  r2 = Relu(c2)
  g = GlobalAveragePool(r2)
  f = Flatten(g)
  action = Gemm<transB = 1>(f, Wh, bh)
}
"""


def build(text: str, n_inputs: int, seed: int = 0) -> ir.Model:
    """Parse ``text``; graph inputs after the first ``n_inputs`` become random weights."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for w in list(proto.graph.input)[n_inputs:]:
        shape = [d.dim_value for d in w.type.tensor_type.shape.dim]
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * (0.1 if len(shape) == 1 else 1)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr.astype(np.float32), w.name))
        proto.graph.input.remove(w)
    for node in proto.graph.node:
        node.name = f"{node.output[0]}_node"
    return ir.serde.deserialize_model(proto)


def feed(model: ir.Model, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        v.name: rng.standard_normal([int(d) for d in v.shape], dtype=np.float32)
        for v in model.graph.inputs
    }


@pytest.fixture(scope="module")
def mlp() -> ir.Model:
    return build(MLP, 2)


def test_registered() -> None:
    assert get_pass_class("int8-dynamic") is DynamicInt8Pass
    assert DynamicInt8Pass.needs_calibration is False


def test_quantizes_constant_weight_matmul_gemm(mlp: ir.Model) -> None:
    p = DynamicInt8Pass()
    result = p(mlp)
    assert result.modified
    out = result.model
    ops = [n.op_type for n in out.graph]
    assert ops.count("MatMulInteger") == 4 and "DynamicQuantizeLinear" in ops
    assert ops.count("MatMul") == 1  # p @ p^T: both inputs are activations
    rep = p.report
    assert rep["quantized_nodes"] == ["h1_node", "h2_node", "action_node", "p_node"]
    assert rep["weight_bytes_after"] < 0.3 * rep["weight_bytes_before"]
    assert rep["conv_mac_share"] == 0.0 and rep["tool_version"]
    json.dumps(rep)
    for seed in (1, 2, 3):
        f = feed(mlp, seed)
        cmp = compare(run_onnx(mlp, f), run_onnx(out, f))
        assert all(c["cosine"] > 0.999 for c in cmp.values()), cmp
    assert [v.name for v in out.graph.outputs] == ["action", "attn"]


def test_quantizable_nodes_and_exclude_round_trip(mlp: ir.Model) -> None:
    names = DynamicInt8Pass().quantizable_nodes(mlp)
    assert names == ["h1_node", "h2_node", "action_node", "p_node"]
    p = DynamicInt8Pass(exclude_nodes=["action_node"], per_channel=True)
    assert p.quantizable_nodes(mlp) == names
    out = p(mlp).model
    # ORT rewrites every Gemm to MatMul + Add; the excluded one stays a float MatMul.
    head = out.graph.node("action_node_MatMul")
    assert head.op_type == "MatMul" and head.inputs[1].const_value.dtype == ir.DataType.FLOAT
    assert sum(n.op_type == "MatMulInteger" for n in out.graph) == 3
    assert "action_node" not in p.report["quantized_nodes"] and p.report["per_channel"]
    with pytest.raises(UnknownNameError):
        DynamicInt8Pass(exclude_nodes=["nope"])(mlp)


def test_refuses_conv_nets_with_the_reason() -> None:
    cnn = build(CNN, 1)
    assert conv_mac_share(cnn) > 0.99
    with pytest.raises(PassError, match=r"conv net \(Conv holds 100% .*ConvInteger runs 6.2x"):
        DynamicInt8Pass()(cnn)
    with pytest.raises(PassError, match="ConvInteger"):
        DynamicInt8Pass(op_types=("MatMul", "Conv"))
    # The limit is the caller's to lift: then only the Gemm head is quantized.
    p = DynamicInt8Pass(max_conv_mac_share=1.0)
    out = p(cnn).model
    assert p.report["quantized_nodes"] == ["action_node"]
    assert {n.op_type for n in out.graph} >= {"Conv", "MatMulInteger"}


def test_nothing_to_quantize(mlp: ir.Model) -> None:
    with pytest.raises(PassError, match="nothing to quantize"):
        DynamicInt8Pass(exclude_nodes=["h1_node", "h2_node", "action_node", "p_node"])(mlp)
