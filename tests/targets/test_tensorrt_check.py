"""TensorRT pre-flight: the static check of an ONNX model against TensorRT's ONNX parser, on tiny
graphs (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tensorrt_helpers import conv_policy, errors, onnx_model

from robopt_compile.errors import BuildError, InputError
from robopt_compile.targets.tensorrt.check import check_model, require_buildable
from robopt_compile.targets.tensorrt.support import ERROR, WARNING, dla_supported


def test_clean_models_pass(tmp_path: Path) -> None:
    assert errors(check_model(conv_policy(tmp_path / "a.onnx"))) == []
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16")
    assert errors(check_model(fp16, precision="fp16")) == []
    int8 = conv_policy(tmp_path / "c.onnx", precision="int8")
    assert errors(check_model(int8, precision="int8")) == []


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    m = onnx_model(
        [
            helper.make_node("Relu", ["x"], ["r"], "relu"),
            helper.make_node("Unique", ["r"], ["y"], "dedupe"),
            helper.make_node("Det", ["r"], ["d"], "determinant"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
        ],
    )
    findings = check_model(m)
    assert [(f.node, f.op, f.rule) for f in errors(findings)] == [
        ("dedupe", "Unique", "operator"),
        ("determinant", "Det", "operator"),
    ]
    with pytest.raises(BuildError) as info:
        require_buildable(findings)
    msg = str(info.value)
    assert "node 'dedupe' (Unique)" in msg and "not supported" in msg
    assert "(and 1 other blocking finding)" in msg and "\n" not in msg


def test_custom_domain_and_unknown_ops(tmp_path: Path) -> None:
    m = onnx_model(
        [
            helper.make_node("FusedGemm", ["x", "x"], ["a"], "ms_op", domain="com.microsoft"),
            helper.make_node("RMSNormalization", ["a"], ["y"], "rms"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = {f.node: f.reason for f in errors(check_model(m))}
    assert "plugin" in found["ms_op"] and "not in TensorRT's operator table" in found["rms"]


def test_int64_out_of_int32_range(tmp_path: Path) -> None:
    big = 2**33
    inits = [
        numpy_helper.from_array(np.array([1, big], np.int64), "shape"),
        numpy_helper.from_array(np.array([big], np.int64), "offset"),
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([2**63 - 1], np.int64), "ends"),
    ]
    m = onnx_model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"], "reshape_big"),
            helper.make_node("Add", ["i", "offset"], ["j"], "add_big"),
            helper.make_node("Slice", ["x", "starts", "ends"], ["s"], "slice_to_end"),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("j", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
        ],
        inits,
    )
    findings = [f for f in check_model(m) if f.rule == "int64-range"]
    by_node = {f.node: f for f in findings}
    assert set(by_node) == {"reshape_big", "add_big"}  # Slice's INT64_MAX end is the idiom
    assert by_node["reshape_big"].severity == ERROR and str(big) in by_node["reshape_big"].reason
    assert by_node["add_big"].severity == WARNING and "8.6" in by_node["add_big"].reason
    with pytest.raises(BuildError, match=r"node 'reshape_big' \(Reshape\): INT64 constant 'shape'"):
        require_buildable(findings)


def test_asymmetric_qdq_is_refused(tmp_path: Path) -> None:
    path = conv_policy(tmp_path / "m.onnx", precision="int8", zero_point=3)
    findings = check_model(path, precision="int8")
    assert {(f.node, f.rule) for f in errors(findings)} == {
        ("q_x", "qdq-zero-point"),
        ("dq_x", "qdq-zero-point"),
    }
    with pytest.raises(
        BuildError, match=r"node 'q_x' \(QuantizeLinear\): asymmetric.*zero point 3"
    ):
        require_buildable(findings)


def test_weight_scale_must_run_along_output_channels(tmp_path: Path) -> None:
    path = conv_policy(tmp_path / "m.onnx", precision="int8", weight_axis=1)  # input channels
    found = [f for f in check_model(path, precision="int8") if f.rule == "qdq-granularity"]
    assert found and "axis 1" in found[0].reason and "'conv' are axis 0" in found[0].reason


def test_per_channel_activation_scale_is_refused() -> None:
    inits = [
        numpy_helper.from_array(np.full(3, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.zeros(3, np.int8), "z"),
    ]
    m = onnx_model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], "q", axis=1),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq", axis=1),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    found = {f.node: f.reason for f in errors(check_model(m, precision="int8"))}
    assert "activations per-tensor only" in found["q"]


def test_qdq_pairs_and_strong_types() -> None:
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    m = onnx_model(
        [
            helper.make_node("Cast", ["x"], ["h"], "to_half", to=TensorProto.FLOAT16),
            helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"], "q_half"),
            helper.make_node("Cast", ["q"], ["y"], "not_a_dq", to=TensorProto.FLOAT),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    rules = {(f.node, f.rule) for f in errors(check_model(m, precision="int8"))}
    assert ("q_half", "qdq-pair") in rules
    assert ("q_half", "qdq-strongly-typed") in rules


def test_dynamic_dims(tmp_path: Path) -> None:
    batch = conv_policy(tmp_path / "b.onnx", batch="batch")
    no_profile = errors(check_model(batch))
    assert len(no_profile) == 1 and "no dynamic_batch" in no_profile[0].reason
    assert errors(check_model(batch, dynamic_batch=(1, 4, 8))) == []
    other = conv_policy(tmp_path / "h.onnx", batch="batch", height="h")
    found = errors(check_model(other, dynamic_batch=(1, 4, 8)))
    assert [(f.node, f.op) for f in found] == [("x", "input")]
    assert "dim 2 ('h') is dynamic" in found[0].reason
    with pytest.raises(BuildError, match=r"input 'x': dim 2 \('h'\) is dynamic"):
        require_buildable(found)
    static = conv_policy(tmp_path / "s.onnx")
    assert (
        "no input has a symbolic dim 0"
        in errors(check_model(static, dynamic_batch=(1, 2, 4)))[0].reason
    )
    with pytest.raises(InputError, match="min <= opt <= max"):
        check_model(batch, dynamic_batch=(4, 2, 8))


def test_precision_must_match_the_onnx_types(tmp_path: Path) -> None:
    fp32 = conv_policy(tmp_path / "a.onnx")
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16")
    int8 = conv_policy(tmp_path / "c.onnx", precision="int8")
    assert "float16 pass" in errors(check_model(fp32, precision="fp16"))[0].reason
    assert "int8-static-trt" in errors(check_model(fp32, precision="int8"))[0].reason
    assert "computes in float16" in errors(check_model(fp16, precision="fp32"))[0].reason
    assert "build it as int8" in errors(check_model(int8, precision="fp32"))[0].reason


def test_dla_rules(tmp_path: Path) -> None:
    fp32 = conv_policy(tmp_path / "a.onnx")
    fp16 = conv_policy(tmp_path / "b.onnx", precision="fp16", batch="n")
    assert "FP16 and INT8 only" in errors(check_model(fp32, dla_core=0))[0].reason
    assert errors(check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(2, 2, 2))) == []
    warn = check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(1, 2, 4))
    assert [f.rule for f in warn if f.severity == WARNING] == ["dla"]
    gone = errors(
        check_model(fp16, precision="fp16", dla_core=0, dynamic_batch=(2, 2, 2), trt_version="11.1")
    )
    assert "not available in TensorRT 11.1" in gone[0].reason
    assert dla_supported("10.3.0") and dla_supported("10.7") and not dla_supported("10.8")
    assert not dla_supported("11.3.0") and dla_supported("11.4.1")


def test_corrupt_model_is_a_build_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BuildError, match="cannot read"):
        check_model(bad)


def test_local_functions_are_checked_through_their_bodies() -> None:
    fn = helper.make_function(
        "robopt.local",
        "Block",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["t"]), helper.make_node("Unique", ["t"], ["b"], "inner")],
        [helper.make_opsetid("", 17)],
    )
    m = onnx_model(
        [helper.make_node("Block", ["x"], ["y"], "call", domain="robopt.local")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("robopt.local", 1))
    assert [(f.node, f.op) for f in errors(check_model(m))] == [("inner", "Unique")]
