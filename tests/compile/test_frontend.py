"""Frontend: source kinds, exporter fallback, parity checks, ONNX files with external data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopt_compile.compile import frontend
from robopt_compile.errors import CheckFailedError, InputError, ModelLoadError


class DataDependent(torch.nn.Module):
    """torch.export refuses a branch on tensor values; TorchScript tracing records one path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # inputs here are in [0, 1): always this branch
            return torch.tanh(self.fc(x))
        return self.fc(x)


def test_source_kinds(tmp_path):
    assert frontend.source_kind("zoo:state-mlp") == "zoo"
    assert frontend.source_kind("a/b/policy.onnx") == "onnx"
    assert frontend.source_kind("p.pt2") == "pt2"
    assert frontend.source_kind("my_pkg.policies:make_policy") == "factory"
    with pytest.raises(ModelLoadError, match="no such file"):
        frontend.source_kind("not-a-thing")
    assert frontend.source_kind("p.keras") == "keras" and frontend.source_kind("p.h5") == "keras"
    assert frontend.source_kind("p.tflite") == "tflite"
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    assert frontend.source_kind(str(tmp_path / "saved")) == "savedmodel"
    (tmp_path / "x.caffemodel").write_text("x")
    with pytest.raises(InputError, match="unsupported model file type"):
        frontend.source_kind(str(tmp_path / "x.caffemodel"))


def test_dynamo_failure_falls_back_to_torchscript():
    m = DataDependent().eval()
    model, exporter, notes = frontend.export_torch(m, {"x": torch.rand(1, 4)}, ["y"])
    assert exporter == "torchscript"
    assert notes and "dynamo exporter failed" in notes[0]
    fig, _feeds, _ref = frontend.parity(model, m, {"x": torch.rand(1, 4)})
    assert fig["cosine"] > 0.99999


def test_parity_is_recorded_on_fresh_inputs():
    src = frontend.load_source("zoo:state-mlp")
    ex = src.parity["export"]
    assert ex["cosine"] >= 0.99999 and ex["max_abs"] < 1e-4
    assert "not the export's examples" in ex["inputs"]
    from robopt_compile.zoo import load_zoo

    _, examples = load_zoo("state-mlp")
    # reference inputs are fresh: never the example inputs the export traced with
    assert not np.allclose(src.reference_inputs["obs"], examples["obs"].numpy())


def test_parity_failure_is_a_check_error(monkeypatch):
    import robopt_compile.numerics as numerics

    real = numerics.run_onnx

    def wrong(model, feeds, threads=1):
        return {k: v + 0.5 for k, v in real(model, feeds, threads=threads).items()}

    monkeypatch.setattr(numerics, "run_onnx", wrong)
    with pytest.raises(CheckFailedError, match="does not match the torch model"):
        frontend.load_source("zoo:state-mlp")
    src = frontend.load_source("zoo:state-mlp", check_parity=False)  # recorded, not enforced
    assert src.parity["export"]["max_abs"] > 0.4


def test_onnx_with_external_data(tmp_path):
    import onnx_ir as ir

    from robopt_compile import ir as rir

    src = frontend.load_source("zoo:state-mlp")
    path = tmp_path / "ext.onnx"
    ir.save(src.model, path, external_data="ext.onnx.data")
    assert (tmp_path / "ext.onnx.data").stat().st_size > 100_000
    loaded = frontend.load_source(str(path))
    assert loaded.kind == "onnx" and set(loaded.reference_outputs) == {"action"}
    # weights are in memory now: the model survives its side file moving away
    (tmp_path / "ext.onnx.data").rename(tmp_path / "moved.data")
    rir.save(loaded.model, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx").stat().st_size > 100_000


def test_onnx_missing_external_data(tmp_path):
    import onnx_ir as ir

    src = frontend.load_source("zoo:state-mlp")
    path = tmp_path / "ext.onnx"
    ir.save(src.model, path, external_data="ext.onnx.data")
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external weight data"):
        frontend.load_source(str(path))


def test_factory_returning_non_module(tmp_path, monkeypatch):
    (tmp_path / "badfac.py").write_text(
        "import torch\ndef make():\n    return 'model', (torch.zeros(1),)\n"
        "def make_nontensor():\n    return torch.nn.Linear(2, 2), {'input': [1, 2]}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"torch\.nn\.Module"):
        frontend.load_source("badfac:make")
    with pytest.raises(ModelLoadError, match="not tensors"):
        frontend.load_source("badfac:make_nontensor")
