"""What every quantization pass shares.

A quantization pass is an ``onnx_ir`` ``FunctionalPass`` configured by its constructor. Those
that need data take ``calibration``: a list of feed dicts (input name -> array, one sample each,
batch as the model takes it) drawn ONLY from the calibration split; held-out samples never
reach a pass (``robopt_compile.compile.calibration`` enforces the split).

Mixed precision works through two hooks every quantizer implements:
``quantizable_nodes(model)`` lists the node names the pass would quantize, and the constructor
argument ``exclude_nodes`` keeps named nodes in floating point. After ``call`` the pass leaves
``self.report``: JSON-serialisable facts (tool and version, method, quantized and excluded
nodes, weight bytes before/after) that end up in the bundle's report.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from robopt_compile.errors import PassError, UnknownNameError

Sample = dict[str, np.ndarray]


class QuantizePass(ir.passes.FunctionalPass):
    """Base of the quantizers; subclasses set ``name`` and implement the two hooks."""

    name: str = "quantize"
    needs_calibration: bool = False

    def __init__(
        self,
        calibration: Sequence[Sample] | None = None,
        exclude_nodes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.calibration = list(calibration or [])
        self.exclude_nodes = tuple(exclude_nodes)
        self.report: dict[str, Any] = {}

    @abc.abstractmethod
    def quantizable_nodes(self, model: ir.Model) -> list[str]:
        """Names of the nodes this pass would quantize in ``model`` (before exclusions)."""


class UnknownNodeError(UnknownNameError, PassError):
    """``exclude_nodes`` names a node the model does not have (suggests the closest)."""


def unique_node_names(model: ir.Model) -> ir.Model:
    """A copy whose nodes and values all have unique, non-empty names.

    The quantizers address nodes by name (exclusions, mixed precision), so names must exist and
    be unique. Unnamed nodes get ``<op_type>_<index>``, the name every robopt report uses.
    """
    from onnx_ir.passes.common import NameFixPass

    from robopt_compile.passes.analysis.flops import node_name

    out = model.clone()
    seen: set[str] = set()
    for i, node in enumerate(out.graph):
        base = node.name or node_name(node, i)
        name, k = base, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        seen.add(name)
    NameFixPass()(out)  # values, and nodes inside subgraphs
    return out


def check_exclude(model: ir.Model, names: Sequence[str], pass_name: str) -> None:
    """Raise ``UnknownNodeError`` for an excluded name that is not a node of ``model``."""
    known = [n.name for n in model.graph if n.name]
    missing = [n for n in names if n not in set(known)]
    if missing:
        raise UnknownNodeError(f"node in {pass_name} exclude_nodes", missing[0], known)


def input_dependent(model: ir.Model) -> set[ir.Value]:
    """Values that change with the model's inputs; the rest are weights and constants."""
    dep = {v for v in model.graph.inputs if not v.is_initializer()}
    for node in model.graph:  # ONNX graphs are topologically sorted
        if any(v in dep for v in node.inputs if v is not None):
            dep.update(node.outputs)
    return dep
