"""OrtStaticInt8Pass: QDQ placement (transformer-safe or not), numerics vs fp32, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from robopt_compile.errors import PassError, UnknownNameError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.quantize import _ort_common
from robopt_compile.passes.quantize.int8_static_ort import OrtStaticInt8Pass

# A residual CNN: stem, a basic block (skip from the MaxPool), a downsampling block (1x1 Conv
# on the skip) and a Gemm head. Graph inputs after ``image`` become random initializers.
CNN = """
<ir_version: 9, opset_import: ["" : 17]>
cnn (float[1,3,16,16] image, float[16,3,3,3] W1, float[16] b1, float[16,16,3,3] W2,
     float[16] b2, float[16,16,3,3] W3, float[16] b3, float[32,16,1,1] Wd, float[32] bd,
     float[32,16,3,3] W4, float[32] b4, float[32,32,3,3] W5, float[32] b5, float[8,32] Wh,
     float[8] bh) => (float[1,8] action)
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
  g = GlobalAveragePool(r5)
  f = Flatten(g)
  action = Gemm<transB = 1>(f, Wh, bh)
}
"""

# One post-norm transformer layer with an additive attention mask (single head, T=16, d=32).
TRANSFORMER = """
<ir_version: 9, opset_import: ["" : 17]>
layer (float[1,16,32] x, float[1,16,16] mask, float[32,32] Wq, float[32] bq, float[32,32] Wk,
       float[32] bk, float[32,32] Wv, float[32] bv, float[32,32] Wo, float[32] bo, float[32] g1,
       float[32] e1, float[32,64] W1, float[64] b1, float[64,32] W2, float[32] b2, float[32] g2,
       float[32] e2) => (float[1,16,32] y)
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
  s1 = Mul(s0, scale)
  s = Add(s1, mask)
  a = Softmax<axis = -1>(s)
  ctx = MatMul(a, v)
  o0 = MatMul(ctx, Wo)
  o = Add(o0, bo)
  h = Add(x, o)
  n1 = LayerNormalization<axis = -1>(h, g1, e1)
  f0 = MatMul(n1, W1)
  f1 = Add(f0, b1)
  f2 = Relu(f1)
  f3 = MatMul(f2, W2)
  f4 = Add(f3, b2)
  h2 = Add(n1, f4)
  y = LayerNormalization<axis = -1>(h2, g2, e2)
}
"""


def build(text: str, n_inputs: int, seed: int = 0, names: bool = True) -> ir.Model:
    """Parse ``text``; graph inputs after the first ``n_inputs`` become random weights."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    weights = list(proto.graph.input)[n_inputs:]
    for w in weights:
        shape = [d.dim_value for d in w.type.tensor_type.shape.dim]
        if w.name.startswith("g"):  # norm gains
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:  # biases and norm shifts
            arr = 0.1 * rng.standard_normal(shape)
        else:  # He init keeps activations O(1) through the layers
            fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr.astype(np.float32), w.name))
        proto.graph.input.remove(w)
    for node in proto.graph.node:
        node.name = f"{node.output[0]}_node" if names else ""
    return ir.serde.deserialize_model(proto)


def feeds(model: ir.Model, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sample = {}
        for v in model.graph.inputs:
            shape = [int(d) for d in v.shape]
            if v.name == "mask":  # 0 where attended, -1e4 on a random quarter of keys
                sample[v.name] = np.where(rng.random(shape) < 0.25, -1e4, 0.0).astype(np.float32)
            elif v.name == "image":
                sample[v.name] = rng.random(shape, dtype=np.float32)
            else:
                sample[v.name] = rng.standard_normal(shape, dtype=np.float32)
        out.append(sample)
    return out


def cosine_vs_fp32(ref: ir.Model, got: ir.Model, held_out: list[dict[str, np.ndarray]]) -> float:
    worst = 1.0
    for f in held_out:
        cmp = compare(run_onnx(ref, f), run_onnx(got, f))
        worst = min(worst, *(c["cosine"] for c in cmp.values()))
    return worst


def producers(model: ir.Model) -> dict[str, dict[int, str]]:
    """node name -> {input index: op type of the producer} for every non-Q/DQ node."""
    out = {}
    for node in model.graph:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            out[node.name] = {
                i: (v.producer().op_type if v is not None and v.producer() else "")
                for i, v in enumerate(node.inputs)
            }
    return out


def dq_inputs(model: ir.Model, name: str) -> list[int]:
    return [i for i, op in producers(model)[name].items() if op == "DequantizeLinear"]


@pytest.fixture(scope="module")
def cnn() -> ir.Model:
    return build(CNN, 1)


@pytest.fixture(scope="module")
def layer() -> ir.Model:
    return build(TRANSFORMER, 2)


@pytest.fixture(scope="module")
def layer_quantized(layer: ir.Model) -> tuple[ir.Model, dict]:
    p = OrtStaticInt8Pass(feeds(layer, 8, seed=1))
    result = p(layer)
    assert result.modified
    return result.model, p.report


def test_registered() -> None:
    assert get_pass_class("int8-static-ort") is OrtStaticInt8Pass


def test_cnn_structure_and_numerics(cnn: ir.Model) -> None:
    p = OrtStaticInt8Pass(feeds(cnn, 8, seed=1))
    out = p(cnn).model
    for conv in ("c1_node", "c2_node", "c3_node", "d_node", "c4_node", "c5_node"):
        assert dq_inputs(out, conv) == [0, 1, 2], conv  # activation, weight, int32 bias
    assert dq_inputs(out, "s1_node") == [0, 1]  # residual Add chained in uint8
    assert dq_inputs(out, "action_node") == [0, 1, 2]
    # Weights: int8 per output channel (axis 0 for Conv), activations uint8.
    w_dq = out.graph.node("c2_node").inputs[1].producer()
    assert w_dq.inputs[0].const_value.dtype == ir.DataType.INT8
    assert w_dq.inputs[1].const_value.shape.dims == (16,)
    assert w_dq.attributes.get_int("axis", 1) == 0
    a_dq = out.graph.node("c2_node").inputs[0].producer()
    assert a_dq.inputs[2].const_value.dtype == ir.DataType.UINT8
    assert [v.name for v in out.graph.outputs] == ["action"]
    assert cosine_vs_fp32(cnn, out, feeds(cnn, 4, seed=2)) > 0.999
    rep = p.report
    assert rep["weight_bytes_after"] < 0.35 * rep["weight_bytes_before"]
    assert rep["method"] == "minmax" and rep["per_channel"] is True
    assert "c1_node" in rep["quantized_nodes"] and rep["tool_version"]
    json.dumps(rep)
    assert not any(n.op_type == "QuantizeLinear" for n in cnn.graph)  # input untouched


def test_transformer_safe_keeps_softmax_norm_mask_residual_float(layer_quantized) -> None:
    out, rep = layer_quantized
    for name in ("q0_node", "k0_node", "v0_node", "o0_node", "f0_node", "f3_node"):
        assert dq_inputs(out, name) == [0, 1], name
    for name in ("a_node", "n1_node", "y_node", "s_node", "h_node", "h2_node", "s0_node"):
        assert dq_inputs(out, name) == [], name
    # No Q/DQ wraps the Softmax: its output feeds the float attention MatMul.
    assert dq_inputs(out, "ctx_node") == []
    assert all(
        u.node.op_type != "QuantizeLinear" for u in out.graph.node("a_node").outputs[0].uses()
    )
    reasons = {e["name"]: e["reason"] for e in rep["excluded_nodes"]}
    assert "mask" in reasons["s_node"] and "a_node" in reasons["s_node"]
    assert "residual" in reasons["h_node"] and "n1_node" in reasons["h_node"]
    assert "residual" in reasons["h2_node"]
    assert "constant" in reasons["q_node"]  # bias add
    assert "attention" in reasons["s0_node"] and "attention" in reasons["ctx_node"]
    assert "a_node" in reasons and "n1_node" in reasons
    # Sharp random attention: one held-out token of 64 lands near a softmax tie (0.975 alone).
    assert cosine_vs_fp32(build(TRANSFORMER, 2), out, feeds(out, 4, seed=2)) > 0.995


def test_residual_add_into_a_decomposed_layernorm_stays_float() -> None:
    text = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1,8,32] x, float[32,32] W, float[32] b) => (float[1,8,32] y) {
      m0 = MatMul(x, W)
      m = Add(m0, b)
      h = Add(x, m)
      mu = ReduceMean<axes = [-1]>(h)
      c = Sub(h, mu)
      y = Mul(c, c)
    }
    """
    model = build(text, 1)
    p = OrtStaticInt8Pass(feeds(model, 4, seed=1))
    out = p(model).model
    reasons = {e["name"]: e["reason"] for e in p.report["excluded_nodes"]}
    assert "LayerNorm (ReduceMean/Sub)" in reasons["h_node"]
    assert dq_inputs(out, "h_node") == [] and dq_inputs(out, "m0_node") == [0, 1]


def test_all_ops_placement_quantizes_softmax(layer: ir.Model) -> None:
    p = OrtStaticInt8Pass(feeds(layer, 8, seed=1), transformer_safe=False)
    out = p(layer).model
    assert dq_inputs(out, "a_node") == [0]
    assert dq_inputs(out, "h_node") == [0, 1]
    assert p.report["op_types"] == "all" and p.report["excluded_nodes"] == []
    assert cosine_vs_fp32(layer, out, feeds(layer, 4, seed=2)) < 0.9  # what the safe mode avoids


def test_quantizable_nodes_and_exclude_round_trip(cnn: ir.Model) -> None:
    calib = feeds(cnn, 4, seed=1)
    names = OrtStaticInt8Pass(calib).quantizable_nodes(cnn)
    assert {"c1_node", "c5_node", "s2_node", "action_node"} <= set(names)
    assert len(names) == len(set(names))
    p = OrtStaticInt8Pass(calib, exclude_nodes=["c5_node", "action_node"])
    assert p.quantizable_nodes(cnn) == names  # before exclusions
    out = p(cnn).model
    for name in ("c5_node", "action_node"):  # float weights and float compute
        assert 1 not in dq_inputs(out, name)
        assert out.graph.node(name).inputs[1].const_value.dtype == ir.DataType.FLOAT
    assert {"name": "c5_node", "reason": "excluded by the caller"} in p.report["excluded_nodes"]
    assert "c5_node" not in p.report["quantized_nodes"]
    # d_node shares its input with the quantized c4: it reads the float tensor. c5 is r4's
    # only reader, and r4's Q/DQ is what lets ORT run c4 as an int8 QLinearConv: it stays.
    out = OrtStaticInt8Pass(calib, exclude_nodes=["d_node"])(cnn).model
    assert dq_inputs(out, "d_node") == [] and dq_inputs(out, "c4_node") == [0, 1, 2]


def test_unnamed_nodes_get_report_names() -> None:
    model = build(CNN, 1, names=False)
    names = OrtStaticInt8Pass(feeds(model, 2, 1)).quantizable_nodes(model)
    assert names[0] == "Conv_0"
    p = OrtStaticInt8Pass(feeds(model, 2, 1), exclude_nodes=["Conv_0"])
    out = p(model).model
    assert dq_inputs(out, "Conv_0") == [] and dq_inputs(out, "Conv_3") == [0, 1, 2]


@pytest.fixture
def fast_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer histogram bins: the KL search costs ~1 s a tensor at the default 2048."""
    monkeypatch.setattr(_ort_common, "ENTROPY_BINS", (512, 256))


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(cnn: ir.Model, method: str, fast_entropy: None) -> None:
    p = OrtStaticInt8Pass(feeds(cnn, 4, seed=1), method=method, percentile=99.9)
    out = p(cnn).model
    assert p.report["method"] == method
    assert cosine_vs_fp32(cnn, out, feeds(cnn, 2, seed=2)) > 0.99


def test_entropy_is_not_minmax_in_disguise(cnn: ir.Model, fast_entropy: None) -> None:
    # quantize_static's entropy defaults (128 bins, 128 levels) leave one candidate range, the
    # full one; the pass calibrates with ENTROPY_BINS itself so the method means something.
    def scale(model: ir.Model) -> float:
        return float(model.graph.node("c3_node").inputs[0].producer().inputs[1].const_value.numpy())

    calib = feeds(cnn, 4, seed=1)
    minmax = OrtStaticInt8Pass(calib)(cnn).model
    entropy = OrtStaticInt8Pass(calib, method="entropy")(cnn).model
    assert scale(entropy) < 0.9 * scale(minmax)


def test_external_data_in_and_out(cnn: ir.Model, tmp_path, monkeypatch) -> None:
    path = tmp_path / "cnn.onnx"
    ir.save(cnn, path, external_data="cnn.onnx.data", size_threshold_bytes=0)
    lazy = ir.load(path)
    assert any(
        isinstance(v.const_value, ir.ExternalTensor) for v in lazy.graph.initializers.values()
    )
    monkeypatch.setattr(_ort_common, "EXTERNAL_DATA_LIMIT", 0)  # quantizer writes external data
    out = OrtStaticInt8Pass(feeds(cnn, 2, seed=1))(lazy).model
    assert not any(
        isinstance(v.const_value, ir.ExternalTensor) for v in out.graph.initializers.values()
    )
    assert cosine_vs_fp32(cnn, out, feeds(cnn, 2, seed=2)) > 0.999


def test_errors(cnn: ir.Model) -> None:
    with pytest.raises(PassError, match="needs calibration samples"):
        OrtStaticInt8Pass([])(cnn)
    with pytest.raises(PassError, match="lacks model input"):
        OrtStaticInt8Pass([{"img": np.zeros((1, 3, 16, 16), np.float32)}])(cnn)
    with pytest.raises(UnknownNameError, match="c9_node"):
        OrtStaticInt8Pass(feeds(cnn, 1, 1), exclude_nodes=["c9_node"])(cnn)
    with pytest.raises(UnknownNameError):
        OrtStaticInt8Pass(feeds(cnn, 1, 1), method="kl")
    bad = [{"image": np.zeros((1, 5, 16, 16), np.float32)}]  # ORT fails while calibrating
    with pytest.raises(PassError, match="quantize_static failed") as info:
        OrtStaticInt8Pass(bad)(cnn)
    assert "\n" not in str(info.value)
    with pytest.raises(PassError, match="nothing to quantize"):
        OrtStaticInt8Pass(feeds(cnn, 1, 1), op_types=["LSTM"])(cnn)


def test_spatial_softmax_expectation_stays_float() -> None:
    """softmax(features) @ coordinates (keypoints): the probability map keeps its peak."""
    from robopt_compile.passes.quantize.int8_static_ort import transformer_unsafe

    proto = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 17]>
    kp (float[1,4,16] feat, float[16,2] coords) => (float[1,4,2] keypoints)
    {
      prob = Softmax<axis = -1>(feat)
      keypoints = MatMul(prob, coords)
    }
    """)
    coords = np.linspace(-1, 1, 32, dtype=np.float32).reshape(16, 2)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(coords, "coords"))
    model = ir.from_proto(proto)
    unsafe = transformer_unsafe(model)
    matmul = next(n.name for n in model.graph if n.op_type == "MatMul")
    assert "expectation over the probabilities" in unsafe[matmul]


@pytest.mark.parametrize("reduce_range", [False, True])
def test_reduce_range_keeps_weights_to_seven_bits(cnn: ir.Model, reduce_range: bool) -> None:
    """For x86 CPUs without VNNI (saturating uint8 x int8 products): 7-bit weights, said in
    the report; the default follows this machine."""
    p = OrtStaticInt8Pass(feeds(cnn, 4, seed=1), reduce_range=reduce_range)
    out = p(cnn).model
    w = out.graph.node("c2_node").inputs[1].producer().inputs[0].const_value.numpy()
    assert bool(np.abs(w).max() <= 64) is reduce_range
    assert p.report["reduce_range"] is reduce_range
    assert ("7-bit" in p.report["weights"]) is reduce_range
    from robopt_compile.hwprofiles.host import host_int8_saturates

    assert OrtStaticInt8Pass(feeds(cnn, 1, seed=1)).reduce_range is host_int8_saturates()
