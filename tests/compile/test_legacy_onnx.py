"""Old ONNX files (issue 22): an IR-3, opset-9 file lists its weights among its inputs and has a
Gemm whose bias later passes may drop; robopt treats those inputs as constants, upgrades the
opset, checks the result against the original file in ONNX Runtime and builds every backend.
Also: graph surgery that would reach a runtime with duplicate names is stopped, naming the pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

from robopt_compile import ir as rir
from robopt_compile.errors import PassError


def _old_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "conv_W": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "conv_B": rng.standard_normal(8).astype(np.float32) * 0.1,
        "fc__SHAPE": np.array([1, -1], dtype=np.int64),
        "fc_W": rng.standard_normal((8 * 6 * 6, 4)).astype(np.float32) * 0.05,
        "fc_B": np.zeros(4, np.float32),  # a zero bias: opset 9's Gemm still needs it
    }
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "fc__SHAPE"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_W", "fc_B"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    model = helper.make_model(helper.make_graph(nodes, "old", inputs, out, inits),
                              opset_imports=[helper.make_opsetid("", 9)])  # fmt: skip
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return _old_model(tmp_path_factory.mktemp("legacy") / "old.onnx")


INT8 = ["-b", "onnxruntime", "--precision", "int8", "--calibration", "random"]


@pytest.mark.parametrize(
    "args", [["-b", "onnxruntime"], INT8, ["-b", "openvino"]], ids=["ort-fp32", "ort-int8", "ov"]
)
def test_an_ir3_opset9_file_compiles(old, args, tmp_path, capsys):
    out = tmp_path / "b"
    code, stdout, err = run_cli([str(old), *args, "-o", str(out)], capsys)
    assert code == 0, err
    assert "old ONNX upgraded  IR 3 -> 8, opset 9 -> 17, 5 inputs made constants" in stdout
    m = json.loads((out / "manifest.json").read_text())
    mod = m["parity"]["modernize"]
    assert mod["passed"] and mod["modernized"]["constant_inputs"][0] == "conv_W"
    assert [i["name"] for i in m["inputs"]] == ["x"]
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any("treated as constants" in n for n in notes)
    assert any("opset 9 upgraded to 17" in n for n in notes)
    shipped = onnx.load(str(out / "model.onnx"))
    assert shipped.opset_import[0].version >= 13 and len(shipped.graph.input) == 1


def test_a_current_file_is_left_as_it_is(tmp_path, capsys):
    src = tmp_path / "new.onnx"
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(src))  # fmt: skip
    code, stdout, err = run_cli([str(src), "-b", "onnxruntime", "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "old ONNX" not in stdout
    assert "modernize" not in json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"]


def _dup_model() -> ir.Model:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Neg", ["a"], ["y"], name="r")]  # fmt: skip
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    proto = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    return rir.from_proto(proto)


def test_duplicate_node_names_never_reach_a_runtime():
    model = _dup_model()
    assert rir.duplicate_names(model) == ["two nodes named 'r'"]
    with pytest.raises(PassError, match="the passes produced an invalid ONNX graph"):
        rir.check_graph(model, "the passes")


def test_the_pass_runner_names_the_pass_that_broke_the_graph():
    from robopt_compile.passes.base import PassRunner

    class Renamer(ir.passes.InPlacePass):
        def call(self, model):
            for n in model.graph:
                n.name = "same"
            return ir.passes.PassResult(model, modified=True)

    good = _dup_model()
    for i, n in enumerate(good.graph):
        n.name = f"n{i}"
    with pytest.raises(PassError, match=r"pass 'renamer' made an invalid graph \(two nodes") as e:
        PassRunner().run([Renamer()], good)
    assert len(str(e.value).splitlines()) == 1
