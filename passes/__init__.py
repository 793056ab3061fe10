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
    # quantize
    "int8-static-ort": "robopt_compile.passes.quantize.int8_static_ort:OrtStaticInt8Pass",
    "int8-static-trt": "robopt_compile.passes.quantize.int8_static_trt:TensorRTInt8Pass",
    "int8-dynamic": "robopt_compile.passes.quantize.int8_dynamic:DynamicInt8Pass",
    "int8-nncf": "robopt_compile.passes.quantize.int8_nncf:NncfInt8Pass",
    "float16": "robopt_compile.passes.quantize.float16:Float16Pass",
    "weight-only-ort": "robopt_compile.passes.quantize.weight_only_ort:OrtWeightOnlyPass",
    "weight-only-nncf": "robopt_compile.passes.quantize.weight_only_nncf:NncfWeightOnlyPass",
    # prune / compress
    "prune-channels": "robopt_compile.passes.prune.channels:ChannelPrunePass",
    "prune-2of4": "robopt_compile.passes.prune.semi_structured:SemiStructuredSparsityPass",
    "prune-magnitude": "robopt_compile.passes.prune.magnitude:MagnitudePrunePass",
    "low-rank": "robopt_compile.passes.prune.lowrank:LowRankPass",
}


def get_pass_class(name: str) -> type[Any]:
    """Import and return the pass class registered as ``name``."""
    try:
        target = PASSES[name]
    except KeyError:
        raise UnknownNameError("pass", name, list(PASSES)) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
