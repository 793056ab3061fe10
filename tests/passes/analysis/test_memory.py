"""ActivationMemoryPass: liveness peak on small chains and diamonds, computed by hand.

Every tensor below is float[1,250]: 1000 bytes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from robopt_compile.passes.analysis.memory import ActivationMemoryPass, topological_order

KB = 1000


def test_chain_peak_is_two_tensors(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1,250] x) => (float[1,250] y) {
              a = Relu(x)
              b = Neg(a)
              y = Exp(b)
            }
            """
        ),
    )
    assert facts["estimate"] is True and "liveness" in facts["method"]
    assert facts["peak_live_bytes"] == 2 * KB  # each step holds its input and its output
    assert facts["input_bytes"] == KB
    assert facts["output_bytes"] == KB
    assert facts["intermediate_bytes"] == 2 * KB
    assert facts["activation_bytes_total"] == 4 * KB
    assert facts["unknown_tensors"] == []


def test_diamond_keeps_the_shared_tensor_alive(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1,250] x) => (float[1,250] y) {
              a = Relu(x)
              b = Neg(a)
              c = Exp(a)
              y = Add(b, c)
            }
            """
        ),
    )
    # At Exp: a (still needed), b (waiting for Add) and c are live.
    assert facts["peak_live_bytes"] == 3 * KB
    assert facts["peak_at_node"] == "Exp_2"
    assert sorted(t["name"] for t in facts["peak_live_tensors"]) == ["a", "b", "c"]


def test_graph_outputs_live_to_the_end(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1,250] x) => (float[1,250] o, float[1,250] y) {
              o = Relu(x)
              b = Neg(x)
              c = Neg(b)
              y = Neg(c)
            }
            """
        ),
    )
    # o has no consumer but is an output: it stays live next to x and b, then b and c...
    assert facts["peak_live_bytes"] == 3 * KB


def test_views_share_their_input_buffer(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1,250] x) => (float[1,250] y) {
              r = Reshape(x, s)
              y = Add(x, r)
            }
            """,
            s=np.array([1, 250], np.int64),
        ),
    )
    # Without aliasing x, r and y would be 3 KB at the Add.
    assert facts["peak_live_bytes"] == 2 * KB
    assert facts["buffers"] == 2


def test_batch_weights_and_footprint(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(batch=4),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[N,250] x) => (float[N,10] y) {
              y = MatMul(x, w)
            }
            """,
            w=(250, 10),
        ),
    )
    assert facts["batch"] == 4
    assert facts["peak_live_bytes"] == 4 * KB + 4 * 40
    assert facts["weight_bytes"] == 250 * 10 * 4
    assert facts["footprint_bytes"] == facts["weight_bytes"] + facts["peak_live_bytes"]


def test_unknown_sizes_make_the_peak_a_lower_bound(build, unchanged) -> None:
    facts = unchanged(
        ActivationMemoryPass(),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
            g (float[1,250] x) => (float[1,250] y) {
              a = custom.x.Foo(x)
              y = Relu(x)
            }
            """
        ),
    )
    assert facts["unknown_tensors"] == ["a"]
    assert facts["peak_is_lower_bound"] is True


def test_topological_order_fixes_an_unsorted_graph() -> None:
    x = ir.Value(name="x", shape=ir.Shape([1, 250]), type=ir.TensorType(ir.DataType.FLOAT))
    first = ir.Node("", "Relu", [x], num_outputs=1, name="first")
    second = ir.Node("", "Neg", first.outputs, num_outputs=1, name="second")
    graph = ir.Graph([x], second.outputs, nodes=[second, first], opset_imports={"": 17})
    assert [n.name for n in topological_order(graph)] == ["first", "second"]
    assert [n.name for n in graph] == ["second", "first"]  # the graph itself is not sorted
