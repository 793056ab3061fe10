"""The backend registry: one table of names, each backend imported only when it is used.

Standard library only, so hardware profiles, passes and ``--help`` can read the names without
numpy or any runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from robopt_compile.errors import UnknownNameError

if TYPE_CHECKING:
    from robopt_compile.targets.base import Backend

# name -> "module:Class"
TARGETS: dict[str, str] = {
    "onnxruntime": "robopt_compile.targets.onnxruntime:OnnxRuntimeBackend",
    "openvino": "robopt_compile.targets.openvino:OpenVinoBackend",
    "tensorrt": "robopt_compile.targets.tensorrt:TensorRTBackend",
    "tvm": "robopt_compile.targets.tvm:TvmBackend",
}


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
