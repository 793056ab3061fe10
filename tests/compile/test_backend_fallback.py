"""A plain compile falls back to the board's next backend when the first cannot build the
model (a GRU policy for raspberry-pi-5: TVM's Relax frontend has no GRU, ONNX Runtime runs
it); ``--backend`` keeps the strict behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_cli
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm", reason="TVM is not installed")


def _gru_policy(path: Path) -> Path:
    """A GRU over 5 steps of an 8-value observation, then a linear head to 4 actions."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 48, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 48, 16)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 4)).astype(np.float32), "Wo"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("GRU", ["obs", "W", "R"], ["Y", "Yh"], hidden_size=16, name="gru"),
        helper.make_node("Squeeze", ["Yh", "axis0"], ["h"], name="last"),
        helper.make_node("MatMul", ["h", "Wo"], ["action"], name="head"),
    ]
    g = helper.make_graph(
        nodes, "gru", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [5, 1, 8])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 4])], inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_first_backend_that_cannot_build_hands_over_to_the_next(tmp_path, capsys) -> None:
    src = str(_gru_policy(tmp_path / "gru.onnx"))
    out = tmp_path / "pi"
    code, stdout, err = run_cli([src, "--target", "raspberry-pi-5", "-o", str(out)], capsys)
    assert code == 0, err
    assert "backend tvm cannot build this model" in err and "GRU" in err
    assert "falling back to onnxruntime" in err
    manifest = json.loads((out / "manifest.json").read_text())
    choice = manifest["backend_choice"]
    assert manifest["backend"] == "onnxruntime" and choice["chosen"] == "onnxruntime"
    assert choice["order"] == ["tvm", "onnxruntime"]
    assert choice["failed"][0]["backend"] == "tvm" and "GRU" in choice["failed"][0]["reason"]
    assert json.loads((out / "report.json").read_text())["backend_choice"] == choice
    assert "onnxruntime fp32 (after tvm: it could not build this model)" in stdout

    # --backend: today's strict behaviour, one line, nothing written.
    strict = tmp_path / "strict"
    code, _, err = run_cli([src, "--target", "raspberry-pi-5", "-b", "tvm", "-o", str(strict)],
                           capsys)  # fmt: skip
    assert code == 3 and "no converter for operator(s) GRU" in err
    errors = [line for line in err.splitlines() if line.startswith("robopt-compile: error:")]
    assert len(errors) == 1 and "falling back" not in err
    assert not strict.exists()
