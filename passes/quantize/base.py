"""What every quantization pass shares.

A quantization pass is an ``onnx_ir`` ``FunctionalPass`` configured by its constructor. Those
that need data take ``calibration``: a list of feed dicts (input name -> array, one sample each,
batch as the model takes it) drawn ONLY from the calibration split; held-out samples never
reach a pass (``robopt_compile.calibration`` enforces the split).

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
