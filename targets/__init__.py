"""Target backends, one per file, found through the ``TARGETS`` table and imported on use.

This module imports nothing but the error types, so hardware profiles and ``--help`` can read
the table without numpy or any runtime; the interface types load from ``targets.base`` on first
use (``from robopt_compile.targets import Artifact`` works as usual).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from robopt_compile.errors import UnknownNameError

if TYPE_CHECKING:
    from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

__all__ = ["TARGETS", "Artifact", "Backend", "BuildOptions", "Runner", "get_backend"]

# name -> "module:Class"
TARGETS: dict[str, str] = {
    "onnxruntime": "robopt_compile.targets.onnxruntime:OnnxRuntimeBackend",
    "openvino": "robopt_compile.targets.openvino:OpenVinoBackend",
    "tensorrt": "robopt_compile.targets.tensorrt:TensorRTBackend",
    "tvm": "robopt_compile.targets.tvm:TvmBackend",
}
_BASE = ("Artifact", "Backend", "BuildOptions", "Runner")


def get_backend(name: str) -> Backend:
    """A fresh instance of the backend registered as ``name``.

    Raises:
        UnknownNameError: no such backend (the message lists them).
    """
    try:
        target = TARGETS[name]
    except KeyError:
        raise UnknownNameError("backend", name, list(TARGETS)) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from robopt_compile.targets import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
