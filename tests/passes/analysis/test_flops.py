"""FlopsPass: MACs/FLOPs per node checked against hand-computed numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robopt_compile.passes.analysis.flops import FlopsPass


def _nodes(facts):
    return {n["name"]: n for n in facts["nodes"]}


def _single(build, unchanged, text, batch=1, **inits):
    facts = unchanged(FlopsPass(batch=batch), build(text, **inits))
    assert len(facts["nodes"]) >= 1
    return facts


def test_conv_3_to_8_k3(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,16,16] x) => (float[1,8,16,16] y) {
          y = Conv<pads: ints = [1, 1, 1, 1]>(x, w, b)
        }
        """,
        w=(8, 3, 3, 3),
        b=(8,),
    )
    node = facts["nodes"][0]
    assert node["macs"] == 8 * 16 * 16 * 3 * 3 * 3
    assert node["flops"] == 2 * node["macs"] + 8 * 16 * 16  # + bias add
    assert node["input_bytes"] == 3 * 16 * 16 * 4
    assert node["weight_bytes"] == (8 * 3 * 3 * 3 + 8) * 4
    assert node["output_bytes"] == 8 * 16 * 16 * 4
    assert facts["totals"]["macs"] == node["macs"]
    assert facts["unknown"] == []


def test_grouped_and_depthwise_conv(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,16,16] x) => (float[1,16,16,16] y) {
          d = Conv<pads: ints = [1, 1, 1, 1], group: int = 8, name: string = "dw">(x, wd)
          y = Conv<pads: ints = [1, 1, 1, 1], group: int = 2>(d, wg)
        }
        """,
        wd=(8, 1, 3, 3),
        wg=(16, 4, 3, 3),
    )
    dw, grouped = facts["nodes"]
    assert dw["macs"] == 8 * 16 * 16 * 1 * 3 * 3  # one input channel per output channel
    assert grouped["macs"] == 16 * 16 * 16 * 4 * 3 * 3  # 8 inputs / 2 groups
    assert dw["flops"] == 2 * dw["macs"]  # no bias


def test_conv_transpose(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,8,8] x) => (float[1,2,17,17] y) {
          y = ConvTranspose<strides: ints = [2, 2]>(x, w)
        }
        """,
        w=(4, 2, 3, 3),
    )
    node = facts["nodes"][0]
    assert node["macs"] == 4 * 8 * 8 * 2 * 3 * 3  # every input pixel scatters a 2x3x3 kernel
    assert node["output_bytes"] == 2 * 17 * 17 * 4


def test_batched_matmul_broadcasts(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,1,4,5] a, float[3,5,6] b, float[5] v) => (float[2,3,4,6] y, float[3,6] z) {
          y = MatMul(a, b)
          z = MatMul(v, b)
        }
        """,
    )
    batched, vector = facts["nodes"]
    assert batched["macs"] == (2 * 3) * 4 * 5 * 6
    assert batched["flops"] == 2 * batched["macs"]
    assert vector["macs"] == 3 * 1 * 5 * 6  # 1-D left operand is a row vector


def test_gemm_trans_b_with_bias(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4,5] a) => (float[4,6] y) {
          y = Gemm<transB: int = 1>(a, w, c)
        }
        """,
        w=(6, 5),
        c=(6,),
    )
    node = facts["nodes"][0]
    assert node["macs"] == 4 * 5 * 6
    assert node["flops"] == 2 * 4 * 5 * 6 + 4 * 6
    assert node["weight_bytes"] == (30 + 6) * 4


def test_transposed_operands(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17, "com.microsoft": 1]>
        g (float[5,4] a, float[2,5,4] p, float[2,6,5] q) => (float[4,6] y, float[2,4,6] z) {
          y = Gemm<transA: int = 1>(a, w)
          z = com.microsoft.FusedMatMul<transA: int = 1, transB: int = 1>(p, q)
        }
        """,
        w=(5, 6),
    )
    gemm, fused = facts["nodes"]
    assert gemm["macs"] == 4 * 5 * 6
    assert fused["macs"] == 2 * 4 * 5 * 6


def test_attention_as_matmul_pair_and_softmax(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,4,8] q, float[1,2,8,4] kt, float[1,2,4,8] v) => (float[1,2,4,8] o) {
          s = MatMul(q, kt)
          p = Softmax<axis: int = -1>(s)
          o = MatMul(p, v)
        }
        """,
    )
    qk, softmax, av = facts["nodes"]
    assert qk["macs"] == 2 * 4 * 8 * 4
    assert softmax["flops"] == 5 * 2 * 4 * 4
    assert av["macs"] == 2 * 4 * 4 * 8
    assert facts["totals"]["flops"] == 2 * (256 + 256) + 160


def test_fused_attention_ops(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 10, opset_import: ["" : 23, "com.microsoft": 1]>
        g (float[N,4,8] x, float[1,2,4,8] q, float[1,2,6,8] k, float[1,2,6,8] v)
          => (float[N,4,8] y, float[1,2,4,8] o) {
          y = com.microsoft.Attention<num_heads: int = 2>(x, w, b)
          o = Attention(q, k, v)
        }
        """,
        w=(8, 24),
        b=(24,),
    )
    ms, onnx_attention = facts["nodes"]
    # QKV projection 4x8 @ 8x24, then QK^T and AV over 4x4 scores at hidden 8.
    assert ms["macs"] == 4 * 8 * 24 + 4 * 4 * (8 + 8)
    assert ms["flops"] == 2 * ms["macs"] + 4 * 24 + 5 * 2 * 4 * 4
    assert onnx_attention["macs"] == 2 * 4 * 6 * (8 + 8)
    assert onnx_attention["flops"] == 2 * onnx_attention["macs"] + 5 * 2 * 4 * 6


def test_norms_elementwise_pooling_reductions(build, unchanged) -> None:
    facts = _single(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,16,16] x, float[2,4,8] t) => (float[1,8] r, float[2,4,8] n) {
          bn = BatchNormalization(x, s, b, m, var)
          a = Add(bn, x)
          p = MaxPool<kernel_shape: ints = [2, 2], strides: ints = [2, 2]>(a)
          r = ReduceMean<keepdims: int = 0>(p, axes)
          n = LayerNormalization<axis: int = -1>(t, g, be)
          e = Sum(t, t, t)
        }
        """,
        s=(8,),
        b=(8,),
        m=(8,),
        var=(8,),
        g=(8,),
        be=(8,),
        axes=np.array([2, 3], "int64"),
    )
    by = {n["op_type"]: n for n in facts["nodes"]}
    numel = 8 * 16 * 16
    assert by["BatchNormalization"]["flops"] == 2 * numel
    assert by["BatchNormalization"]["macs"] == 0
    assert by["Add"]["flops"] == numel
    assert by["MaxPool"]["flops"] == 8 * 8 * 8 * 4
    assert by["ReduceMean"]["flops"] == 8 * 8 * 8
    assert by["LayerNormalization"]["flops"] == 7 * 64
    assert by["Sum"]["flops"] == 2 * 64  # three inputs: two adds per element


def test_batch_replaces_symbolic_dims(build, unchanged) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,5] a) => (float[N,6] y) {
      y = MatMul(a, w)
    }
    """
    one = unchanged(FlopsPass(batch=1), build(text, w=(5, 6)))
    four = unchanged(FlopsPass(batch=4), build(text, w=(5, 6)))
    assert one["nodes"][0]["macs"] == 30
    assert four["nodes"][0]["macs"] == 4 * 30
    assert four["batch"] == 4


def test_unknown_shapes_are_listed_not_guessed(build, unchanged) -> None:
    facts = unchanged(
        FlopsPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
            g (float[1,8] x) => (float[1,8] y, float[1,8] d) {
              a = custom.x.Foo(x)
              z = Relu(a)
              y = Relu(x)
              c = custom.x.Bar(x)
              d = Relu(c)
            }
            """
        ),
    )
    nodes = _nodes(facts)
    assert nodes["Foo_0"]["flops"] is None and not nodes["Foo_0"]["known"]
    assert "unknown" in nodes["Relu_1"]["reason"]  # downstream of an op with no shape
    assert nodes["Relu_2"]["flops"] == 8
    assert {u["name"] for u in facts["unknown"]} == {"Foo_0", "Relu_1", "Bar_3", "Relu_4"}
    assert facts["totals"] == {
        "nodes": 5,
        "known_nodes": 1,
        "unknown_nodes": 4,
        "macs": 0,
        "flops": 8,
        "input_bytes": 32,
        "weight_bytes": 0,
        "output_bytes": 32,
    }


def test_custom_op_with_declared_shape_has_no_formula(build, unchanged) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
        g (float[N,8] x) => (float[N,8] y) {
          a = custom.x.Foo(x)
          y = Relu(a)
        }
        """
    )
    import onnx_ir as ir

    model.graph[0].outputs[0].shape = ir.Shape(["N", 8])
    model.graph[0].outputs[0].dtype = ir.DataType.FLOAT
    facts = unchanged(FlopsPass(batch=2), model)
    foo, relu = facts["nodes"]
    assert foo["reason"] == "no FLOP formula for custom.x::Foo"
    assert foo["input_bytes"] == 2 * 8 * 4  # bytes are still known
    assert relu["flops"] == 16  # shapes flow on from the declared output


def test_data_dependent_shape_is_unknown(build, unchanged) -> None:
    facts = unchanged(
        FlopsPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[4,8] x) => (int64[2,M] y) {
              y = NonZero(x)
              z = Relu(x)
            }
            """
        ),
    )
    nonzero, relu = facts["nodes"]
    assert not nonzero["known"]
    assert relu["flops"] == 32


def test_views_are_metadata_only(build, unchanged) -> None:
    facts = unchanged(
        FlopsPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[2,8] x) => (float[16] y) {
              y = Reshape(x, s)
            }
            """,
            s=np.array([16], "int64"),
        ),
    )
    node = facts["nodes"][0]
    assert node["metadata_only"] is True
    assert node["flops"] == 0
    assert node["output_bytes"] == 64


def test_control_flow_is_unknown(build, unchanged) -> None:
    facts = unchanged(
        FlopsPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[4] x, bool c) => (float[4] y) {
              y = If(c) <
                then_branch: graph = g1 () => (float[4] a) { a = Relu(x) },
                else_branch: graph = g2 () => (float[4] b) { b = Neg(x) }
              >
            }
            """
        ),
    )
    assert "control flow" in facts["nodes"][0]["reason"]
    json.dumps(facts)


def test_bad_batch() -> None:
    with pytest.raises(ValueError):
        FlopsPass(batch=0)
