"""ParamsPass: parameters and bytes from initializers and Constant nodes, by dtype."""

from __future__ import annotations

import numpy as np

from robopt_compile.passes.analysis.params import ParamsPass

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,6] y) {
  k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
  f = Constant<value_floats: floats = [1.0, 2.0]>()
  i = Constant<value_int: int = 7>()
  m = MatMul(x, w)
  h = Cast<to = 10>(m)
  a = Add(h, b)
  y = Cast<to = 1>(a)
}
"""


def _model(build):
    return build(
        MODEL,
        w=np.ones((4, 6), np.float32),
        b=np.ones((6,), np.float16),
        shape=np.array([1, 6], np.int64),
    )


def test_counts_initializers_and_constants(build, unchanged) -> None:
    facts = unchanged(ParamsPass(), _model(build))
    # w 24 + b 6 + shape 2 (initializers) + 3 + 2 + 1 (constants)
    assert facts["param_count"] == 24 + 6 + 2 + 3 + 2 + 1
    assert facts["weight_bytes"] == 24 * 4 + 6 * 2 + 2 * 8 + 3 * 4 + 2 * 4 + 1 * 8
    assert facts["initializers"] == 3
    assert facts["constants"] == 3
    assert facts["by_dtype"] == {
        "float32": {"tensors": 3, "params": 29, "bytes": 116},
        "int64": {"tensors": 2, "params": 3, "bytes": 24},
        "float16": {"tensors": 1, "params": 6, "bytes": 12},
    }
    assert facts["unknown"] == []


def test_largest_tensors_first(build, unchanged) -> None:
    facts = unchanged(ParamsPass(top=2), _model(build))
    assert [(t["name"], t["bytes"], t["shape"]) for t in facts["largest"]] == [
        ("w", 96, [4, 6]),
        ("shape", 16, [2]),
    ]
    assert facts["largest"][0]["source"] == "initializer"
    assert facts["largest"][0]["dtype"] == "float32"


def test_int4_weights_are_packed(build, unchanged) -> None:
    import onnx_ir as ir

    model = build(
        """
        <ir_version: 10, opset_import: ["" : 21]>
        g (float[2,4] x) => (float[2,4] y) { y = Identity(x) }
        """
    )
    tensor = ir.Tensor(np.zeros((5,), np.int8), dtype=ir.DataType.INT4, name="q")
    model.graph.initializers["q"] = ir.Value(name="q", const_value=tensor)
    facts = unchanged(ParamsPass(), model)
    assert facts["param_count"] == 5
    assert facts["weight_bytes"] == 3  # five 4-bit values pack into three bytes
