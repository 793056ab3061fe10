"""NncfInt8Pass: Q/DQ structure, numerics in ONNX Runtime and OpenVINO, exclusions, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import PassError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None, reason="nncf is not installed"
)
CNN_LINEAR = ["conv1", "conv2", "fc", "head"]


def _init(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


def _tiny_cnn() -> ir.Model:
    """image -> Conv -> Relu -> Conv + residual -> Relu -> GAP ++ state -> Gemm -> Relu -> Gemm."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["image", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["feat"], name="flatten"),
        helper.make_node("Concat", ["feat", "state"], ["z"], axis=1, name="concat"),
        helper.make_node("Gemm", ["z", "W3", "B3"], ["f"], transB=1, name="fc"),
        helper.make_node("Relu", ["f"], ["rf"], name="relu3"),
        helper.make_node("Gemm", ["rf", "W4", "B4"], ["action"], transB=1, name="head"),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 3])],
        [
            _init("W1", rng.standard_normal((16, 3, 3, 3)) * 0.3),
            _init("B1", rng.standard_normal(16) * 0.1),
            _init("W2", rng.standard_normal((16, 16, 3, 3)) * 0.1),
            _init("B2", rng.standard_normal(16) * 0.1),
            _init("W3", rng.standard_normal((32, 20)) * 0.3),
            _init("B3", rng.standard_normal(32) * 0.1),
            _init("W4", rng.standard_normal((3, 32)) * 0.3),
            _init("B4", np.zeros(3)),
        ],
    )


def _tiny_attention() -> ir.Model:
    """One attention head on X plus a query computed from constants (folded by runtimes)."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["pos", "Wp"], ["p"], name="pos_proj"),
        helper.make_node("Add", ["X", "p"], ["xp"], name="add_pos"),
        helper.make_node("MatMul", ["xp", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["xp", "Wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["xp", "Wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale"),
        helper.make_node("Softmax", ["ss"], ["a"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["a", "v"], ["o"], name="attn_v"),
        helper.make_node("MatMul", ["o", "Wo"], ["Y"], name="out_proj"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 6, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 6, 16])],
        [
            _init("pos", rng.standard_normal((1, 6, 16))),
            *(_init(n, rng.standard_normal((16, 16)) * 0.3) for n in ("Wp", "Wq", "Wk", "Wv")),
            _init("Wo", rng.standard_normal((16, 16)) * 0.3),
            _init("scale", 0.25),
        ],
    )


def _samples(model: ir.Model, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    from robopt_compile import ir as rir
    from robopt_compile.numerics import random_feeds

    specs = rir.input_specs(model)
    out = []
    for i in range(n):
        feed = random_feeds(specs, seed=seed * 1000 + i)
        if "image" in feed:
            feed["image"] = np.abs(feed["image"]) / 3  # a camera image is non-negative
        out.append(feed)
    return out


@pytest.fixture(scope="module")
def cnn() -> ir.Model:
    return _tiny_cnn()


@pytest.fixture(scope="module")
def quantized(cnn: ir.Model):
    """The CNN quantized once with 16 calibration samples (seed 1); held-out uses seed 2."""
    p = get_pass_class("int8-nncf")(calibration=_samples(cnn, 16, seed=1))
    result = p(cnn)
    return result, p.report


def _dq_fed(model: ir.Model) -> set[str]:
    return {
        n.name
        for n in model.graph
        if any(
            v is not None and v.producer() is not None
            and v.producer().op_type == "DequantizeLinear"
            for v in n.inputs
        )
    }  # fmt: skip


def test_structure_and_report(cnn: ir.Model, quantized) -> None:
    result, rep = quantized
    assert result.modified
    out = result.model
    assert set(CNN_LINEAR) <= _dq_fed(out)
    assert sorted(rep["quantized_nodes"]) == sorted(CNN_LINEAR)
    assert rep["op_delta"]["QuantizeLinear"] > 0 and rep["op_delta"]["DequantizeLinear"] > 0
    assert rep["tool_version"] and rep["preset"] == "performance"
    assert rep["model_type"] is None and rep["model_type_source"].startswith("auto")
    assert rep["calibration_samples"] == 16 and rep["subset_size"] == 16
    # Weights are stored as int8: about a quarter of the fp32 bytes.
    assert rep["weight_bytes_after"] < 0.5 * rep["weight_bytes_before"]
    assert [v.name for v in out.graph.inputs] == ["image", "state"]
    assert [v.name for v in out.graph.outputs] == ["action"]
    assert out.graph.outputs[0].dtype == ir.DataType.FLOAT


def test_numerics_onnxruntime_held_out(cnn: ir.Model, quantized) -> None:
    out = quantized[0].model
    for feed in _samples(cnn, 4, seed=2):
        assert compare(run_onnx(cnn, feed), run_onnx(out, feed))["action"]["cosine"] > 0.99


def test_openvino_runs_it_in_int8(cnn: ir.Model, quantized, tmp_path) -> None:
    ov = pytest.importorskip("openvino")
    path = tmp_path / "int8.onnx"
    ir.save(quantized[0].model, path)
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert precisions <= {"u8", "i8"}, precisions
    for feed in _samples(cnn, 2, seed=2):
        got = np.asarray(compiled(feed)[compiled.outputs[0]])
        assert compare(run_onnx(cnn, feed), {"action": got})["action"]["cosine"] > 0.99


def test_exclude_nodes_stay_float(cnn: ir.Model) -> None:
    P = get_pass_class("int8-nncf")
    p = P(calibration=_samples(cnn, 4, seed=1), exclude_nodes=["head", "conv1"])
    out = p(cnn).model
    fed = _dq_fed(out)
    assert "head" not in fed and "conv1" not in fed and "conv2" in fed
    assert p.report["excluded_nodes"] == ["head", "conv1"]
    assert "head" not in p.report["quantized_nodes"]


def test_quantizable_nodes(cnn: ir.Model) -> None:
    P = get_pass_class("int8-nncf")
    assert sorted(P().quantizable_nodes(cnn)) == sorted(CNN_LINEAR)
    # pos_proj multiplies two constants: not on the data path, so not a candidate.
    names = P().quantizable_nodes(_tiny_attention())
    assert "pos_proj" not in names and {"q_proj", "scores", "attn_v", "out_proj"} <= set(names)


def test_transformer_auto_detected() -> None:
    model = _tiny_attention()
    p = get_pass_class("int8-nncf")(calibration=_samples(model, 8, seed=1))
    out = p(model).model
    assert p.report["model_type"] == "transformer"
    assert "softmax" in p.report["model_type_source"] and "auto" in p.report["model_type_source"]
    assert "pos_proj" not in p.report["quantized_nodes"]
    assert p.report["constant_nodes_folded"] == ["pos_proj"]  # NNCF's SmoothQuant asserts on it
    feed = _samples(model, 1, seed=2)[0]
    assert compare(run_onnx(model, feed), run_onnx(out, feed))["Y"]["cosine"] > 0.98


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "fast"}, "preset"),
        ({"model_type": "cnn"}, "model_type"),
        ({"subset_size": 0}, "subset_size"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        get_pass_class("int8-nncf")(calibration=[{"x": np.zeros(1)}], **kwargs)


def test_calibration_errors(cnn: ir.Model) -> None:
    P = get_pass_class("int8-nncf")
    with pytest.raises(PassError, match="calibration data"):
        P()(cnn)
    with pytest.raises(PassError, match="calibration data"):
        P(calibration=[])(cnn)
    sample = _samples(cnn, 1, seed=1)[0]
    with pytest.raises(PassError, match="no input 'state'"):
        P(calibration=[{"image": sample["image"]}])(cnn)
    with pytest.raises(PassError, match="float64"):
        P(calibration=[{**sample, "state": sample["state"].astype(np.float64)}])(cnn)
    with pytest.raises(PassError, match="shape"):
        P(calibration=[{**sample, "image": np.zeros((1, 3, 8, 8), np.float32)}])(cnn)


def test_exclude_a_folded_constant_node() -> None:
    model = _tiny_attention()
    P = get_pass_class("int8-nncf")
    p = P(calibration=_samples(model, 2, seed=1), exclude_nodes=["pos_proj", "out_proj"])
    p(model)
    assert "out_proj" not in p.report["quantized_nodes"]


def test_unknown_exclude_node(cnn: ir.Model) -> None:
    P = get_pass_class("int8-nncf")
    with pytest.raises(PassError, match="conv3"):
        P(calibration=_samples(cnn, 1, seed=1), exclude_nodes=["conv3"])(cnn)


def test_overflow_fix_enable_keeps_every_weight_to_seven_bits(cnn: ir.Model) -> None:
    """OpenVINO's int8 kernels saturate on x86 without VNNI: "enable" halves every Conv/MatMul
    weight range, NNCF's default only the first layer's; an unknown value is one line."""
    P = get_pass_class("int8-nncf")
    widest = {}
    for fix in ("enable", "first_layer"):
        p = P(calibration=_samples(cnn, 4, seed=1), overflow_fix=fix)
        out = p(cnn).model
        assert p.report["overflow_fix"] == fix
        widest[fix] = max(
            int(np.abs(n.inputs[0].const_value.numpy().astype(np.int32)).max())
            for n in out.graph
            if n.op_type == "DequantizeLinear"
            and n.inputs[0].const_value is not None
            and n.inputs[0].const_value.dtype == ir.DataType.INT8
        )
    assert widest["enable"] <= 64 < widest["first_layer"]
    with pytest.raises(PassError, match="overflow_fix must be one of"):
        P(calibration=_samples(cnn, 1, seed=1), overflow_fix="on")
