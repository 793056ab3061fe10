"""Shared builders for the analysis pass tests: tiny models from ONNX text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from robopt_compile.hwprofiles import HardwareProfile, parse_profile
from robopt_compile.passes.base import AnalysisPass


def build_model(text: str, **initializers: np.ndarray | tuple[int, ...]) -> ir.Model:
    """Parse ONNX text; each keyword becomes an initializer (a shape gives float32 noise)."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, value in initializers.items():
        array = (
            value
            if isinstance(value, np.ndarray)
            else rng.standard_normal(value).astype(np.float32)
        )
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.serde.deserialize_model(proto)


def snapshot(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


def run_unchanged(p: AnalysisPass, model: ir.Model) -> dict[str, Any]:
    """Run an analysis pass and check the model is byte-for-byte the same afterwards."""
    before = snapshot(model)
    result = p(model)
    assert result.modified is False
    assert result.model is model
    assert snapshot(model) == before, f"{type(p).__name__} changed the model"
    return p.facts


def make_profile(
    fp32_gops: float = 10.0, bandwidth_gbs: float = 10.0, cores: int = 4, **extra: Any
) -> HardwareProfile:
    data: dict[str, Any] = {
        "schema": 1,
        "name": "test-board",
        "arch": "x86_64",
        "cpu": {"cores": cores},
        "memory": {
            "size_gb": {"value": 8, "source": "test"},
            "bandwidth_gbs": {"value": bandwidth_gbs, "source": "test"},
        },
        "compute": {"scope": "core", "fp32": {"value": fp32_gops, "source": "test"}},
        "backends": ["onnxruntime"],
        "precisions": ["fp32", "int8"],
    }
    data.update(extra)
    return parse_profile(data, "test")


@pytest.fixture
def build() -> Callable[..., ir.Model]:
    return build_model


@pytest.fixture
def unchanged() -> Callable[[AnalysisPass, ir.Model], dict[str, Any]]:
    return run_unchanged


@pytest.fixture
def snapshot_of() -> Callable[[ir.Model], bytes]:
    return snapshot


@pytest.fixture
def profile_factory() -> Callable[..., HardwareProfile]:
    return make_profile
