"""Fixtures of the backend tests: a tiny torch-exported model for the shared contract, and the
TensorRT tests' environments (helpers in ``tensorrt_helpers.py``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A small conv+gemm ONNX model, its inputs and torch's outputs."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()
    x = torch.rand(2, 3, 20, 20)
    path = tmp_path_factory.mktemp("tiny") / "m.onnx"
    torch.onnx.export(
        m, (x,), str(path), dynamo=True, verbose=False, input_names=["x"], output_names=["y"]
    )
    with torch.no_grad():
        ref = m(x).numpy()
    return path, {"x": x.numpy()}, {"y": ref}


# --- TensorRT ---------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$ROBOPT_CACHE`` (engines, timing caches)."""
    monkeypatch.setenv("ROBOPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_trt(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Neither TensorRT nor cuda-python here, whatever is installed."""
    from tensorrt_helpers import force_no_tensorrt

    force_no_tensorrt(monkeypatch)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, cache: Path) -> SimpleNamespace:
    """The strict fake TensorRT 10.3 and a fake cuda-python with an Orin GPU."""
    from tensorrt_helpers import install_fake

    return install_fake(monkeypatch)


@pytest.fixture
def bundle(tmp_path: Path, cache: Path) -> Path:
    """A bundle laid out as the compile pipeline writes it, holding a deferred TensorRT build."""
    from tensorrt_helpers import conv_policy, write_deferred_bundle

    return write_deferred_bundle(tmp_path / "bundle", conv_policy(tmp_path / "m.onnx"))
