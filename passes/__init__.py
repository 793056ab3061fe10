"""Passes over the ONNX IR: one class per file, found through the ``PASSES`` table.

Analysis passes write facts and never change the model; transform passes return the new model
and whether they changed it. Modules are imported only when a pass is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from robopt_compile.errors import UnknownNameError

# name -> "module:Class". One table, no import-time registration magic.
PASSES: dict[str, str] = {
    # analysis
    "op-histogram": "robopt_compile.passes.analysis.op_histogram:OpHistogramPass",
    "params": "robopt_compile.passes.analysis.params:ParamsPass",
    "flops": "robopt_compile.passes.analysis.flops:FlopsPass",
    "memory": "robopt_compile.passes.analysis.memory:ActivationMemoryPass",
    "roofline": "robopt_compile.passes.analysis.roofline:RooflinePass",
    "backend-support": "robopt_compile.passes.analysis.backend_support:BackendSupportPass",
    # simplify
    "simplify": "robopt_compile.passes.simplify.simplify:SimplifyPass",
}


def get_pass_class(name: str) -> type[Any]:
    """Import and return the pass class registered as ``name``."""
    try:
        target = PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, list(PASSES)) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
