"""robopt: an edge-deployment compiler toolchain for robot policies.

The Python API is :mod:`robopt_compile.api` (``import robopt_compile.api as robopt``, or
``from robopt_compile import api``): compile, plan, analyze, evaluate, bench. It is not
re-exported here as functions: ``robopt_compile.compile`` is the compile stages' package.

The runtime API, for robot code, is ``from robopt_compile import load_bundle``
(``robopt_compile.bench.runtime``: numpy and the bundle's runtime only; docs/DEPLOY.md).

This package is imported on the robot by ``robopt-bench``: keep it free of heavy imports
(torch, onnx, openvino). Everything heavy is imported inside the function that needs it, and
``robopt_compile.api`` itself is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "api":  # ``import robopt_compile; robopt_compile.api.compile(...)``
        import importlib

        return importlib.import_module("robopt_compile.api")
    if name in ("load_bundle", "Policy"):  # the runtime API, for robot code
        from robopt_compile.bench import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'robopt_compile' has no attribute {name!r}")
