"""TensorFlow sources (issue 22): a Keras model made here, saved as .keras, as a SavedModel and
as .tflite, each converted by tf2onnx, checked against TensorFlow's own execution and built;
without the [tf] extra, one line naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import assert_one_error_line, run_cli

# CI installs the [tf] extra; where its install failed, .ci/run says so and these skip.
pytestmark = pytest.mark.may_skip


MAKE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, tensorflow as tf
d = sys.argv[1]
keras.utils.set_random_seed(0)
image = keras.Input((16, 16, 3), name="image")
state = keras.Input((4,), name="state")
h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(image)
h = keras.layers.GlobalAveragePooling2D()(h)
h = keras.layers.Concatenate()([h, keras.layers.Dense(8, activation="tanh")(state)])
action = keras.layers.Dense(3, name="action")(keras.layers.Dense(32, activation="relu")(h))
model = keras.Model([image, state], action)
model.save(f"{d}/policy.keras")
model.export(f"{d}/saved", verbose=False)
with open(f"{d}/policy.tflite", "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_saved_model(f"{d}/saved").convert())
"""


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory) -> dict[str, Path]:
    """A two-input policy (a 16x16 image through a conv, a 4-d state) as .keras, SavedModel
    and .tflite, made by TensorFlow in a child process (as robopt runs it: TensorFlow beside
    torch and MuJoCo's renderer in one process crashed that process)."""
    import importlib.util
    import subprocess

    for name in ("tensorflow", "tf2onnx"):
        if importlib.util.find_spec(name) is None:
            pytest.skip("the [tf] extra is not installed")
    d = tmp_path_factory.mktemp("tf")
    subprocess.run([sys.executable, "-c", MAKE, str(d)], check=True, capture_output=True)
    return {"keras": d / "policy.keras", "savedmodel": d / "saved", "tflite": d / "policy.tflite"}


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("keras", ["-b", "onnxruntime", "--precision", "int8", "--calibration", "random"]),
     ("savedmodel", ["-b", "openvino"]), ("tflite", ["-b", "onnxruntime"])],
)  # fmt: skip
def test_each_tf_source_converts_checks_and_builds(tf_models, kind, extra, tmp_path, capsys):
    out = tmp_path / kind
    code, stdout, err = run_cli([str(tf_models[kind]), *extra, "-o", str(out)], capsys)
    assert code == 0, err
    assert "(tf2onnx)" in stdout  # the export parity line names the converter
    m = json.loads((out / "manifest.json").read_text())
    exp = m["parity"]["export"]
    assert exp["passed"] and exp["kind"] == kind and exp["converter"].startswith("tf2onnx 1.")
    assert "tensorflow" not in sys.modules  # TensorFlow ran in a child process
    assert exp["opset"] == 17 and exp["max_abs"] < 1e-4
    assert sorted(i["name"] for i in m["inputs"]) == ["image", "state"]
    assert [i["shape"][0] for i in m["inputs"]] == [1, 1]  # batch fixed to 1
    report = json.loads((out / "report.json").read_text())
    assert report["exporter"] == "tf2onnx"
    assert any("converted by tf2onnx" in n for n in report["notes"])


def test_without_tensorflow_one_line_names_the_extra(tf_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow raises
    code, _, err = run_cli([str(tf_models["keras"]), "--no-cache", "-o", str(tmp_path / "x")],
                           capsys)  # fmt: skip
    assert code == 3 and "[tf] extra" in err
    assert_one_error_line(err)
    assert not (tmp_path / "x").exists()
