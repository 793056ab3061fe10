"""The device farm's fixtures: a small compiled bundle (target host) and a fresh store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.test_service_api import tiny_onnx


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real compile of a 2-layer MLP for ``host`` with ONNX Runtime (seconds)."""
    from robopt_compile.compile.options import CompileOptions
    from robopt_compile.compile.pipeline import compile_model

    work = tmp_path_factory.mktemp("farm")
    out = work / "bundle"
    compile_model(str(tiny_onnx(work / "p.onnx")), out,
                  CompileOptions(target="host", backend="onnxruntime", threads=1))  # fmt: skip
    return out


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"
