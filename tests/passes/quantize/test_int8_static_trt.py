"""TensorRTInt8Pass: TensorRT's explicit-quantization placement, checked on structure and with
ONNX Runtime numerics (TensorRT itself is not installable here)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from robopt_compile.errors import PassError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.quantize import _ort_common
from robopt_compile.passes.quantize.int8_static_trt import TensorRTInt8Pass

# Residual CNN: a basic block whose skip comes from the MaxPool, a downsampling block whose
# skip is a 1x1 Conv, a ConvTranspose, a 4-channel Conv TensorRT has no INT8 kernel for, and a
# GEMV head. Graph inputs after ``image`` become random weights.
CNN = """
<ir_version: 9, opset_import: ["" : 17]>
cnn (float[1,3,16,16] image, float[16,3,3,3] W1, float[16] b1, float[16,16,3,3] W2,
     float[16] b2, float[16,16,3,3] W3, float[16] b3, float[32,16,1,1] Wd, float[32] bd,
     float[32,16,3,3] W4, float[32] b4, float[32,32,3,3] W5, float[32] b5,
     float[32,16,2,2] Wt, float[16] bt, float[4,16,3,3] W6, float[4] b6, float[4,4,3,3] W7,
     float[4] b7, float[8,4] Wh, float[8] bh) => (float[1,8] action)
{
  c1 = Conv<pads = [1, 1, 1, 1]>(image, W1, b1)
  r1 = Relu(c1)
  p1 = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(r1)
  c2 = Conv<pads = [1, 1, 1, 1]>(p1, W2, b2)
  r2 = Relu(c2)
  c3 = Conv<pads = [1, 1, 1, 1]>(r2, W3, b3)
  s1 = Add(c3, p1)
  r3 = Relu(s1)
  d = Conv<strides = [2, 2]>(r3, Wd, bd)
  c4 = Conv<pads = [1, 1, 1, 1], strides = [2, 2]>(r3, W4, b4)
  r4 = Relu(c4)
  c5 = Conv<pads = [1, 1, 1, 1]>(r4, W5, b5)
  s2 = Add(c5, d)
  r5 = Relu(s2)
  t = ConvTranspose<strides = [2, 2]>(r5, Wt, bt)
  r6 = Relu(t)
  c6 = Conv<pads = [1, 1, 1, 1]>(r6, W6, b6)
  r7 = Relu(c6)
  c7 = Conv<pads = [1, 1, 1, 1], kernel_shape = [3, 3]>(r7, W7, b7)
  g = GlobalAveragePool(c7)
  f = Flatten(g)
  action = Gemm<transB = 1>(f, Wh, bh)
}
"""

TRANSFORMER = """
<ir_version: 9, opset_import: ["" : 17]>
layer (float[1,16,32] x, float[32,32] Wq, float[32] bq, float[32,32] Wk, float[32] bk,
       float[32,32] Wv, float[32] bv, float[32,32] Wo, float[32] bo, float[32] g1, float[32] e1,
       float[32,8] Wh) => (float[1,16,8] y)
{
  q0 = MatMul(x, Wq)
  q = Add(q0, bq)
  k0 = MatMul(x, Wk)
  k = Add(k0, bk)
  v0 = MatMul(x, Wv)
  v = Add(v0, bv)
  kt = Transpose<perm = [0, 2, 1]>(k)
  s0 = MatMul(q, kt)
  scale = Constant<value = float {0.17677}>()
  s = Mul(s0, scale)
  a = Softmax<axis = -1>(s)
  ctx = MatMul(a, v)
  o0 = MatMul(ctx, Wo)
  o = Add(o0, bo)
  h = Add(x, o)
  n1 = LayerNormalization<axis = -1>(h, g1, e1)
  y = MatMul(n1, Wh)
}
"""

MLP = """
<ir_version: 9, opset_import: ["" : 17]>
mlp (float[1,39] obs, float[256,39] W1, float[256] b1, float[7,256] W2, float[7] b2)
    => (float[1,7] action)
{
  h = Gemm<transB = 1>(obs, W1, b1)
  r = Relu(h)
  action = Gemm<transB = 1>(r, W2, b2)
}
"""


def build(text: str, n_inputs: int, seed: int = 0) -> ir.Model:
    """Parse ``text``; graph inputs after the first ``n_inputs`` become random weights."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for w in list(proto.graph.input)[n_inputs:]:
        shape = [d.dim_value for d in w.type.tensor_type.shape.dim]
        if w.name.startswith("g"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            arr = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr.astype(np.float32), w.name))
        proto.graph.input.remove(w)
    for node in proto.graph.node:
        node.name = f"{node.output[0]}_node"
    return ir.serde.deserialize_model(proto)


def feeds(model: ir.Model, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            v.name: (rng.random if v.name == "image" else rng.standard_normal)(
                [int(d) for d in v.shape], dtype=np.float32
            )
            for v in model.graph.inputs
        }
        for _ in range(n)
    ]


def cosine_vs_fp32(ref: ir.Model, got: ir.Model, held_out: list[dict[str, np.ndarray]]) -> float:
    """Worst cosine of the Q/DQ graph run as written (float after each DequantizeLinear), the
    arithmetic TensorRT's int32-accumulating int8 kernels approximate: ORT's fused x86 kernels
    would add their own saturation on a CPU without VNNI (0.9892 vs 0.9995 on an AVX2 EPYC)."""
    return min(
        c["cosine"]
        for f in held_out
        for c in compare(run_onnx(ref, f), run_onnx(got, f, optimization="disable")).values()
    )


def dq(model: ir.Model, name: str, index: int) -> ir.Node | None:
    """The DequantizeLinear feeding input ``index`` of node ``name``, if any."""
    p = model.graph.node(name).inputs[index].producer()
    return p if p is not None and p.op_type == "DequantizeLinear" else None


@pytest.fixture(scope="module")
def cnn() -> ir.Model:
    return build(CNN, 1)


@pytest.fixture(scope="module")
def cnn_quantized(cnn: ir.Model) -> tuple[ir.Model, dict]:
    p = TensorRTInt8Pass(feeds(cnn, 8, seed=1))
    result = p(cnn)
    assert result.modified
    return result.model, p.report


def test_registered() -> None:
    assert get_pass_class("int8-static-trt") is TensorRTInt8Pass


def test_qdq_on_weighted_inputs_only_symmetric(cnn_quantized) -> None:
    out, rep = cnn_quantized
    for conv in ("c1_node", "c2_node", "c3_node", "d_node", "c4_node", "c5_node", "t_node"):
        assert dq(out, conv, 0) and dq(out, conv, 1), conv
        assert dq(out, conv, 2) is None, conv  # bias stays float
        # No output quantization (TensorRT fuses the epilogue itself), except on a skip input.
        users = {u.node.op_type for u in out.graph.node(conv).outputs[0].uses()}
        assert ("QuantizeLinear" in users) == (conv == "d_node"), conv
    assert dq(out, "p1_node", 0)  # MaxPool next to quantized Convs
    # Symmetric int8 everywhere: zero points are int8 zeros.
    for node in out.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = node.inputs[2].const_value
            assert zp.dtype == ir.DataType.INT8 and not np.any(zp.numpy()), node.name
    # Weights: fp32 behind Q/DQ, per output channel (Conv axis 0, ConvTranspose axis 1).
    w = dq(out, "c5_node", 1)
    assert w.attributes.get_int("axis", 1) == 0 and w.inputs[1].const_value.shape.dims == (32,)
    assert w.inputs[0].producer().op_type == "QuantizeLinear"
    wt = dq(out, "t_node", 1)
    assert wt.attributes.get_int("axis", 1) == 1 and wt.inputs[1].const_value.shape.dims == (16,)
    json.dumps(rep)
    assert rep["activations"].startswith("int8 symmetric")


def test_residual_add_quantizes_the_skip_input_only(cnn_quantized) -> None:
    out, rep = cnn_quantized
    # Basic block: the Conv branch (c3) feeds the Add raw, the skip (MaxPool output) via Q/DQ.
    assert out.graph.node("s1_node").inputs[0].producer().name == "c3_node"
    assert dq(out, "s1_node", 1)
    # Downsampling block: both inputs come from Convs; the deeper (c5) is the Conv branch.
    assert out.graph.node("s2_node").inputs[0].producer().name == "c5_node"
    skip = dq(out, "s2_node", 1)
    assert skip.inputs[0].producer().inputs[0].producer().name == "d_node"
    assert rep["residual_adds"] == {"s1_node": "p1", "s2_node": "d"}


def test_nvidia_rules_leave_gemv_and_small_convs_float(cnn_quantized) -> None:
    out, rep = cnn_quantized
    reasons = {e["name"]: e["reason"] for e in rep["excluded_nodes"]}
    assert "GEMV" in reasons["action_node"]
    assert "4 input / 4 output channels" in reasons["c7_node"]
    assert "c6_node" not in reasons  # 16 in, 4 out: a multiple of 8 on one side is enough
    assert dq(out, "action_node", 0) is None and dq(out, "c7_node", 0) is None


def test_numerics_vs_fp32(cnn: ir.Model, cnn_quantized) -> None:
    out, _ = cnn_quantized
    assert cosine_vs_fp32(cnn, out, feeds(cnn, 4, seed=2)) > 0.999


def test_transformer_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ort_common, "ENTROPY_BINS", (512, 256))  # 2048: ~1 s a tensor
    model = build(TRANSFORMER, 1)
    p = TensorRTInt8Pass(feeds(model, 8, seed=1), method="entropy")
    out = p(model).model
    for mm in ("q0_node", "k0_node", "v0_node", "o0_node", "s0_node", "ctx_node"):
        assert dq(out, mm, 0) and dq(out, mm, 1), mm  # attention MatMuls too (INT8 MHA)
    w = dq(out, "q0_node", 1)  # MatMul weight [K, N]: per-channel along N
    assert w.attributes.get_int("axis", 0) == 1 and w.inputs[1].const_value.shape.dims == (32,)
    for name in ("a_node", "n1_node", "s_node"):
        assert all(dq(out, name, i) is None for i in range(len(out.graph.node(name).inputs)))
    # The residual Add reads x through the Q/DQ shared with the Q/K/V MatMuls, as in Model
    # Optimizer's output; its attention branch stays float.
    assert dq(out, "h_node", 0) and dq(out, "h_node", 1) is None
    assert "small GEMM" in {e["name"]: e["reason"] for e in p.report["excluded_nodes"]}["y_node"]
    assert p.report["method"] == "entropy"
    assert cosine_vs_fp32(model, out, feeds(model, 4, seed=2)) > 0.995


def test_quantizable_nodes_and_exclude_round_trip(cnn: ir.Model) -> None:
    calib = feeds(cnn, 4, seed=1)
    names = TensorRTInt8Pass(calib).quantizable_nodes(cnn)
    assert {"c1_node", "t_node", "s1_node", "s2_node", "p1_node"} <= set(names)
    assert "action_node" not in names and "c7_node" not in names
    p = TensorRTInt8Pass(calib, exclude_nodes=["c3_node"])
    out = p(cnn).model
    assert dq(out, "c3_node", 0) is None and dq(out, "c3_node", 1) is None
    # With c3 float, s1 is no residual add after a quantized Conv: no Q/DQ on it.
    assert "s1_node" not in p.report["residual_adds"]
    assert dq(out, "s1_node", 0) is None
    assert {"name": "c3_node", "reason": "excluded by the caller"} in p.report["excluded_nodes"]


def test_errors(cnn: ir.Model) -> None:
    with pytest.raises(PassError, match="needs calibration samples"):
        TensorRTInt8Pass([])(cnn)
    mlp = build(MLP, 1)  # every Linear is a GEMV at batch 1
    with pytest.raises(PassError, match=r"nothing to quantize.*FP16"):
        TensorRTInt8Pass(feeds(mlp, 2, seed=1))(mlp)
