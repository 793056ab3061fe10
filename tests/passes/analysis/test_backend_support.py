"""BackendSupportPass: ops each runtime lacks are found and explained."""

from __future__ import annotations

import json
import sys

import pytest

from robopt_compile.errors import UnknownNameError
from robopt_compile.passes.analysis.backend_support import BackendSupportPass

PLAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,8] y) {
  c = Conv(x, w)
  r = Relu(c)
  p = GlobalAveragePool(r)
  y = Flatten(p)
}
"""
CUSTOM = """
<ir_version: 8, opset_import: ["" : 17, "custom.x": 1]>
g (float[2,4] x) => (float[2,4] y) {
  a = Relu(x)
  b = custom.x.Foo<name: string = "foo">(a)
  y = Sigmoid(b)
}
"""


def _ort(build, unchanged, text, **inits):
    facts = unchanged(BackendSupportPass(backends=("onnxruntime",)), build(text, **inits))
    assert list(facts) == ["onnxruntime"]
    return facts["onnxruntime"]


def test_onnxruntime_supports_a_plain_cnn(build, unchanged) -> None:
    ort = _ort(build, unchanged, PLAIN, w=(8, 3, 3, 3))
    assert ort["available"] is True
    assert ort["supported"] is True
    assert ort["unsupported"] == []


def test_onnxruntime_flags_a_custom_domain_op(build, unchanged) -> None:
    ort = _ort(build, unchanged, CUSTOM)
    assert ort["supported"] is False
    assert ort["unsupported_ops"] == {"custom.x::Foo": 1}
    (row,) = ort["unsupported"]
    assert row["node"] == "Foo_1"
    assert (row["domain"], row["op_type"], row["opset"]) == ("custom.x", "Foo", 1)
    assert "custom.x::Foo" in row["reason"]


def test_onnxruntime_checks_the_op_version(build, unchanged) -> None:
    # Relu-1 (selected by opset 5) has no CPU kernel; ORT starts at Relu-6.
    ort = _ort(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 5]>
        g (float[2,4] x) => (float[2,4] y) { y = Relu(x) }
        """,
    )
    (row,) = ort["unsupported"]
    assert "Relu version 1" in row["reason"]


def test_onnxruntime_checks_dtypes(build, unchanged) -> None:
    ort = _ort(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[2,4] i, float16[2,4] h) => (int64[2,4] a, float16[2,4] b) {
          a = Relu(i)
          b = Relu(h)
        }
        """,
    )
    (row,) = ort["unsupported"]  # int64 Relu has no kernel; float16 runs through Casts
    assert row["node"] == "Relu_0"
    assert "tensor(int64)" in row["reason"]
    assert any("float16" in note for note in ort["notes"])


def test_onnxruntime_function_ops_are_expanded(build, unchanged) -> None:
    ort = _ort(
        build,
        unchanged,
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2,4] x) => (float[2,4] y) { y = Mish(x) }
        """,
    )
    assert ort["supported"] is True


def test_openvino_flags_a_custom_domain_op(build, unchanged) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    facts = unchanged(BackendSupportPass(backends=("openvino",)), build(CUSTOM))
    ov = facts["openvino"]
    assert ov["available"] is True and ov["supported"] is False
    (row,) = ov["unsupported"]
    assert (row["node"], row["domain"], row["op_type"]) == ("Foo_1", "custom.x", "Foo")
    assert "no conversion rule" in row["reason"]


def test_openvino_supports_a_plain_cnn(build, unchanged) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    facts = unchanged(BackendSupportPass(backends=("openvino",)), build(PLAIN, w=(8, 3, 3, 3)))
    assert facts["openvino"]["supported"] is True
    assert facts["openvino"]["device"] == "CPU"


def test_openvino_reports_conversion_failures(build, unchanged) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    facts = unchanged(
        BackendSupportPass(backends=("openvino",)),
        build(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[2,4] x) => (float[2,4] y) { y = Mod<fmod: int = 0>(x, x) }
            """
        ),
    )
    (row,) = facts["openvino"]["unsupported"]
    assert row["op_type"] == "Mod"
    assert row["reason"].startswith("conversion failed")


def test_missing_runtime_is_reported_not_raised(build, unchanged, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    facts = unchanged(BackendSupportPass(), build(CUSTOM))
    for backend in ("onnxruntime", "openvino"):
        assert facts[backend]["available"] is False
        assert "not installed" in facts[backend]["reason"]
    json.dumps(facts)


def test_backends_without_a_check(build, unchanged) -> None:
    facts = unchanged(BackendSupportPass(backends=("tvm",)), build(CUSTOM))
    assert facts["tvm"]["available"] is None
    assert facts["tvm"]["checked"] is False
    assert facts["tvm"]["supported"] is None


def test_unknown_backend_name() -> None:
    with pytest.raises(UnknownNameError):
        BackendSupportPass(backends=("onnxruntim",))
