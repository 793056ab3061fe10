"""Float16Pass: fp32 I/O kept, sensitive ops kept fp32, numerics with ORT and fp16 semantics."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from robopt_compile.errors import PassError
from robopt_compile.numerics import compare, run_onnx
from robopt_compile.passes import get_pass_class
from robopt_compile.passes.quantize.float16 import DEFAULT_OP_BLOCK_LIST, Float16Pass


def _rms_norm_model() -> ir.Model:
    """x*300 -> RMSNorm written as primitives -> MatMul -> Softmax.

    (x*300)^2 ~ 1e5 overflows fp16 (max 65504): only a model that keeps Pow..Sqrt in fp32
    computes it.
    """
    rng = np.random.default_rng(0)

    def init(name: str, value: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    nodes = [
        helper.make_node("Mul", ["X", "scale"], ["xs"], name="scale_up"),
        helper.make_node("Pow", ["xs", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1, name="mean_sq"),
        helper.make_node("Add", ["ms", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="rms"),
        helper.make_node("Div", ["xs", "sd"], ["nx"], name="normalize"),
        helper.make_node("MatMul", ["nx", "W"], ["Z"], name="proj"),
        helper.make_node("Softmax", ["Z"], ["Y"], axis=-1, name="probs"),
    ]
    graph = helper.make_graph(
        nodes,
        "rms",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4, 64])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4, 32]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 4, 32]),
        ],
        [
            init("scale", 300.0),
            init("two", 2.0),
            init("eps", 1e-5),
            init("W", rng.standard_normal((64, 32)) * 0.2),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return _rms_norm_model()


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {"X": np.random.default_rng(1).standard_normal((2, 4, 64)).astype(np.float32)}


def _input_dtypes(model: ir.Model) -> dict[str, list[ir.DataType | None]]:
    return {n.name: [v.dtype if v is not None else None for v in n.inputs] for n in model.graph}


def _fp16_semantics(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run with onnx's reference evaluator: every op computes in its declared dtype, as a GPU
    fp16 kernel does (ORT's x86 CPU provider falls back to fp32 and would hide overflow)."""
    from onnx.reference import ReferenceEvaluator

    proto = ir.serde.serialize_model(model)
    names = [o.name for o in proto.graph.output]
    with np.errstate(all="ignore"):
        return dict(zip(names, ReferenceEvaluator(proto).run(None, feeds), strict=True))


def test_registered() -> None:
    assert get_pass_class("float16") is Float16Pass


def test_converts_to_fp16_and_keeps_io_float32(model: ir.Model) -> None:
    p = Float16Pass()
    out = p(model).model
    for v in (*out.graph.inputs, *out.graph.outputs):
        assert v.dtype == ir.DataType.FLOAT, v.name
    assert [v.name for v in out.graph.inputs] == ["X"]
    assert [v.name for v in out.graph.outputs] == ["Y", "Z"]
    dtypes = _input_dtypes(out)
    assert dtypes["proj"] == [ir.DataType.FLOAT16, ir.DataType.FLOAT16]
    assert out.graph.initializers["W"].const_value.dtype == ir.DataType.FLOAT16
    assert p.report["weight_bytes_after"] < p.report["weight_bytes_before"]
    assert p.report["dtype"] == "fp16" and p.report["keep_io_types"] is True


def test_block_listed_ops_and_their_island_stay_fp32(model: ir.Model) -> None:
    p = Float16Pass()
    out = p(model).model
    dtypes = _input_dtypes(out)
    for name in ("square", "mean_sq", "add_eps", "rms", "probs"):
        assert all(d == ir.DataType.FLOAT for d in dtypes[name]), (name, dtypes[name])
    # add_eps is not block-listed: it stays fp32 because it sits between ReduceMean and Sqrt.
    assert p.report["fp32_island_nodes"] == ["add_eps"]
    assert {"square", "mean_sq", "rms", "probs"} <= set(p.report["fp32_nodes"])
    # No value makes a fp32 -> fp16 -> fp32 round trip between two fp32 nodes.
    for node in out.graph:
        if node.op_type == "Cast" and node.attributes.get_int("to") == ir.DataType.FLOAT:
            producer = node.inputs[0].producer()
            assert not (producer is not None and producer.op_type == "Cast"), node.name


def test_numerics_ort_and_fp16_semantics(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    ref = run_onnx(model, feeds)
    out = Float16Pass()(model).model
    for got in (run_onnx(out, feeds), _fp16_semantics(out, feeds)):
        for name, c in compare(ref, got, rtol=1e-2, atol=1e-2).items():
            assert c["nonfinite_mismatch"] == 0 and c["cosine"] > 0.999, (name, c)


def test_without_block_list_fp16_overflows(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    """Why the block list exists: (x*300)^2 is inf in fp16, the RMS is inf and Z collapses."""
    ref = run_onnx(model, feeds)
    got = _fp16_semantics(Float16Pass(op_block_list=())(model).model, feeds)
    assert compare(ref, got)["Z"]["cosine"] < 0.5


def test_exclude_nodes_kept_fp32(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    p = Float16Pass(exclude_nodes=["proj"])
    out = p(model).model
    assert _input_dtypes(out)["proj"] == [ir.DataType.FLOAT, ir.DataType.FLOAT]
    assert out.graph.initializers["W"].const_value.dtype == ir.DataType.FLOAT
    assert "proj" in p.report["fp32_nodes"] and p.report["excluded_nodes"] == ["proj"]
    assert "proj" in p.quantizable_nodes(model)  # listed before exclusions
    assert compare(run_onnx(model, feeds), run_onnx(out, feeds))["Z"]["cosine"] > 0.9999


def test_quantizable_nodes_skip_block_list(model: ir.Model) -> None:
    names = Float16Pass().quantizable_nodes(model)
    assert {"scale_up", "add_eps", "normalize", "proj"} <= set(names)
    assert not {"square", "mean_sq", "rms", "probs"} & set(names)


def test_keep_io_types_false_makes_fp16_io(model: ir.Model) -> None:
    out = Float16Pass(keep_io_types=False)(model).model
    assert out.graph.inputs[0].dtype == ir.DataType.FLOAT16


def test_bf16_raises_pass_error_pointing_to_openvino() -> None:
    with pytest.raises(PassError, match="OpenVINO"):
        Float16Pass(dtype="bf16")
    with pytest.raises(PassError, match="dtype"):
        Float16Pass(dtype="fp8")


def test_unknown_exclude_node(model: ir.Model) -> None:
    with pytest.raises(PassError, match="projj"):
        Float16Pass(exclude_nodes=["projj"])(model)


def test_default_block_list_covers_onnxruntimes() -> None:
    """ORT has no fp16 kernels for the ops in its own list: ours must keep all of them."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST as ORT_LIST

    assert set(ORT_LIST) <= set(DEFAULT_OP_BLOCK_LIST)


def test_reports_weights_fp16_cannot_hold(model: ir.Model) -> None:
    big = model.clone()
    w = big.graph.initializers["W"]
    arr = w.const_value.numpy().copy()
    arr[0, 0], arr[0, 1] = 1e5, 1e-9  # above fp16's max, below its smallest subnormal
    w.const_value = ir.tensor(arr, name="W")
    p = Float16Pass()
    p(big)
    assert p.report["weights_clamped_to_fp16_range"] == 2
