"""Fixtures of the backend tests."""

from __future__ import annotations

from pathlib import Path

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
