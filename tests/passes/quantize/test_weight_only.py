"""Weight-only passes (ONNX Runtime MatMulNBits, NNCF compress_weights): structure, numerics."""

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
from robopt_compile.passes.quantize import _nncf_common as common
from robopt_compile.passes.quantize.weight_only_nncf import NncfWeightOnlyPass
from robopt_compile.passes.quantize.weight_only_ort import OrtWeightOnlyPass

needs_nncf = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None, reason="nncf is not installed"
)
# Every data-path weight node of the tiny model; "query" is computed from constants only.
LIVE = ["fc1", "fc2", "state_proj"]


def _tiny_model() -> ir.Model:
    """A transformer-style MLP block plus a Gemm head and a constant-only MatMul.

    fc1/fc2 are MatMul + bias Add (as exporters write nn.Linear on 3-D input); the biases are
    large so that a doubled bias shows. state_proj is a Gemm with transB, alpha and beta.
    "query" multiplies two constants, like ACT's decoder query path.
    """
    rng = np.random.default_rng(0)

    def init(name: str, value: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["query_embed", "Wq"], ["q"], name="query"),
        helper.make_node("Add", ["X", "q"], ["xq"], name="add_query"),
        helper.make_node("MatMul", ["xq", "W1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
        helper.make_node("Add", ["y", "b2"], ["Y"], name="fc2_bias"),
        helper.make_node(
            "Gemm", ["S", "W3", "C3"], ["G"], transB=1, alpha=0.5, beta=2.0, name="state_proj"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 64]),
            helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, 64]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8, 64]),
            helper.make_tensor_value_info("G", TensorProto.FLOAT, [1, 32]),
        ],
        [
            init("query_embed", rng.standard_normal((1, 8, 64))),
            init("Wq", rng.standard_normal((64, 64)) * 0.1),
            init("W1", rng.standard_normal((64, 128)) * 0.1),
            init("b1", np.full(128, 0.5)),
            init("W2", rng.standard_normal((128, 64)) * 0.1),
            init("b2", np.full(64, 1.0)),
            init("W3", rng.standard_normal((32, 64)) * 0.1),
            init("C3", rng.standard_normal(32)),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return _tiny_model()


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    return {
        "X": rng.standard_normal((1, 8, 64)).astype(np.float32),
        "S": rng.standard_normal((1, 64)).astype(np.float32),
    }


def _min_cosine(a: ir.Model, b: ir.Model, feeds: dict[str, np.ndarray]) -> float:
    return min(c["cosine"] for c in compare(run_onnx(a, feeds), run_onnx(b, feeds)).values())


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def test_registered() -> None:
    assert get_pass_class("weight-only-ort") is OrtWeightOnlyPass
    assert get_pass_class("weight-only-nncf") is NncfWeightOnlyPass


def test_weight_nodes_split_data_path_and_constants(model: ir.Model) -> None:
    live, constant = common.weight_nodes(common.prepare(model))
    assert sorted(live) == sorted(LIVE) and constant == ["query"]
    assert sorted(OrtWeightOnlyPass().quantizable_nodes(model)) == sorted(LIVE)


def test_gemm_to_matmul_is_exact(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    rewritten = common.prepare(model)
    common.gemm_to_matmul(rewritten, {"state_proj"})
    assert "Gemm" not in _ops(rewritten)
    assert {n.name for n in rewritten.graph} >= {"state_proj", "state_proj_bias"}
    got, ref = run_onnx(rewritten, feeds), run_onnx(model, feeds)
    np.testing.assert_allclose(got["G"], ref["G"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("bits", "min_cos", "max_ratio"), [(4, 0.99, 0.3), (8, 0.9999, 0.3)])
def test_ort_structure_numerics_and_bytes(
    model: ir.Model, feeds: dict[str, np.ndarray], bits: int, min_cos: float, max_ratio: float
) -> None:
    p = OrtWeightOnlyPass(bits=bits)
    out = p(model).model
    nbits = [n for n in out.graph if n.op_type == "MatMulNBits"]
    assert sorted(n.name for n in nbits) == sorted(f"{n}_Q{bits}" for n in LIVE)
    assert all(n.domain == "com.microsoft" for n in nbits)
    assert all(n.attributes.get_int("bits") == bits for n in nbits)
    assert all(n.attributes.get_int("block_size") == 32 for n in nbits)
    assert "Gemm" not in _ops(out) and p.report["gemm_rewritten_as_matmul_add"] == ["state_proj"]
    assert "query" in {n.name for n in out.graph}  # constant path left for the runtime to fold
    assert p.report["constant_nodes"] == ["query"]
    rep = p.report
    ratio = rep["compressed_weight_bytes_after"] / rep["compressed_weight_bytes_before"]
    assert ratio <= max_ratio, ratio
    assert rep["weight_bytes_after"] < rep["weight_bytes_before"]
    assert [v.name for v in out.graph.outputs] == ["Y", "G"]
    assert _min_cosine(model, out, feeds) > min_cos


def test_ort_exclude_nodes(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    p = OrtWeightOnlyPass(bits=4, block_size=64, exclude_nodes=["fc2", "state_proj"])
    out = p(model).model
    assert sorted(n.name for n in out.graph if n.op_type == "MatMulNBits") == ["fc1_Q4"]
    assert "fc2" in {n.name for n in out.graph if n.op_type == "MatMul"}
    assert "state_proj" in {n.name for n in out.graph if n.op_type == "Gemm"}
    assert p.report["excluded_nodes"] == ["fc2", "state_proj"]
    assert _min_cosine(model, out, feeds) > 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 3}, "bits must be 4 or 8"),
        ({"bits": 2}, "bits must be 4 or 8"),
        ({"block_size": 48}, "block_size"),
        ({"accuracy_level": 7}, "accuracy_level"),
    ],
)
def test_ort_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        OrtWeightOnlyPass(**kwargs)


def test_ort_unknown_exclude_and_nothing_to_do(model: ir.Model) -> None:
    with pytest.raises(PassError, match="fc3"):
        OrtWeightOnlyPass(exclude_nodes=["fc3"])(model)
    with pytest.raises(PassError, match="nothing to compress"):
        OrtWeightOnlyPass(exclude_nodes=LIVE)(model)


@needs_nncf
def test_nncf_int4_structure_numerics_and_bias_fix(
    model: ir.Model, feeds: dict[str, np.ndarray]
) -> None:
    p = NncfWeightOnlyPass(bits=4, group_size=32)
    out = p(model).model
    rep = p.report
    assert set(rep["compressed_nodes"]) == set(LIVE)
    assert any(v.startswith("int4 group 32") for v in rep["compressed_nodes"].values())
    assert rep["constant_nodes"] == ["query"] and "query" in {n.name for n in out.graph}
    assert "com.microsoft::MatMulNBits" in rep["op_delta"]
    # NNCF 3.4 adds the bias of fc1/fc2 a second time inside MatMulNBits; the pass removes it.
    assert rep["nncf_duplicate_bias_removed"] >= 1
    for node in out.graph:
        if node.op_type == "MatMulNBits":
            assert len(node.inputs) <= 4 or node.inputs[5] is None
    ratio = rep["compressed_weight_bytes_after"] / rep["compressed_weight_bytes_before"]
    assert ratio <= 0.3, ratio
    assert _min_cosine(model, out, feeds) > 0.99


@needs_nncf
def test_nncf_int8_per_channel(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    p = NncfWeightOnlyPass(bits=8, exclude_nodes=["fc1"])
    out = p(model).model
    assert set(p.report["compressed_nodes"]) == {"fc2", "state_proj"}
    assert set(p.report["compressed_nodes"].values()) == {"int8 per-channel"}
    assert p.report["mode"] == "int8_sym"
    fc1 = next(n for n in out.graph if n.name == "fc1")
    assert fc1.inputs[1].producer() is None  # still the fp32 initializer
    assert _min_cosine(model, out, feeds) > 0.9999


@needs_nncf
def test_nncf_output_runs_in_openvino(model: ir.Model, feeds: dict[str, np.ndarray], tmp_path):
    ov = pytest.importorskip("openvino")
    out = NncfWeightOnlyPass(bits=4, group_size=32)(model).model
    path = tmp_path / "w4.onnx"
    ir.save(out, path)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    got = {o.get_any_name(): np.asarray(result[o]) for o in compiled.outputs}
    cmp = compare(run_onnx(model, feeds), got)
    assert min(c["cosine"] for c in cmp.values()) > 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 3}, "bits must be 4 or 8"),
        ({"bits": 8, "group_size": 64}, "per output channel"),
        ({"bits": 8, "ratio": 0.5}, "per output channel"),
        ({"bits": 4, "group_size": 100}, "group_size"),
        ({"bits": 4, "ratio": 0.0}, "ratio"),
    ],
)
def test_nncf_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(PassError, match=match):
        NncfWeightOnlyPass(**kwargs)
