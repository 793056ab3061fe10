"""Target backends, one per file, found through the ``TARGETS`` table and imported on use."""

from __future__ import annotations

import importlib

from robopt_compile.errors import UnknownNameError
from robopt_compile.targets.base import Artifact, Backend, BuildOptions, Runner

__all__ = ["TARGETS", "Artifact", "Backend", "BuildOptions", "Runner", "get_backend"]

# name -> "module:Class"
TARGETS: dict[str, str] = {
    "onnxruntime": "robopt_compile.targets.onnxruntime:OnnxRuntimeBackend",
    "openvino": "robopt_compile.targets.openvino:OpenVinoBackend",
    "tensorrt": "robopt_compile.targets.tensorrt:TensorRTBackend",
    "tvm": "robopt_compile.targets.tvm:TvmBackend",
}


def get_backend(name: str) -> Backend:
    try:
        target = TARGETS[name]
    except KeyError:
        raise UnknownNameError("backend", name, list(TARGETS)) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()
