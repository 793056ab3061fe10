"""What every frontend returns and the checks every source passes (``frontend.py`` for torch
and ONNX sources, ``tf_frontend.py`` for TensorFlow ones): :class:`SourceModel`, the ONNX
checker with strict shape inference, and the parity rule (``PARITY_TOLERANCE``, exit 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from robopt_compile import ir as rir
from robopt_compile.errors import CheckFailedError, ModelLoadError

if TYPE_CHECKING:
    import onnx_ir as ir

# Export parity outside this tolerance fails the compile (exit 4). fp32 exports agree to
# ~1e-6 in practice; the bound leaves room for reordered float sums, not for wrong graphs.
PARITY_TOLERANCE = {"cosine_min": 0.99999, "atol": 1e-4, "rtol": 1e-3}
REFERENCE_SEED_OFFSET = 1000  # reference inputs never equal the export's example inputs


@dataclass
class SourceModel:
    """A loaded source: the ONNX model plus reference data from the original model."""

    model: ir.Model
    name: str
    source: str
    kind: str  # "zoo" | "onnx" | "pt2" | "factory" | "module" | "savedmodel" | "keras" | "tflite"
    exporter: str | None  # "dynamo" | "torchscript" | None for ONNX sources
    reference_inputs: dict[str, np.ndarray]
    reference_outputs: dict[str, np.ndarray]
    parity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_model(model: ir.Model, where: str) -> None:
    """ONNX checker + strict shape inference; raises ``ModelLoadError`` naming the problem."""
    import onnx

    if rir.weight_bytes(model) >= rir.EXTERNAL_DATA_THRESHOLD:
        return  # the in-memory checker cannot take >2 GB protos; ORT still loads it later
    proto = rir.to_proto(model)
    try:
        onnx.checker.check_model(proto, full_check=False)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx's C++ checker raises several types: one line
        raise ModelLoadError(
            f"{where}: the ONNX model is invalid ({str(exc).splitlines()[0][:200]})."
        ) from exc


NO_PARITY_ADVICE = "Re-run with --debug; --no-parity-check skips this check at your own risk."


def parity_failed(
    fig: dict[str, Any], source: str, original: str, advice: str = NO_PARITY_ADVICE
) -> NoReturn:
    """Exit 4: the converted ONNX does not compute what ``original`` computes."""
    bad = fig["outputs"][fig["output"]]
    raise CheckFailedError(
        f"{source}: the converted ONNX does not match {original} on output {fig['output']!r} "
        f"({bad['reason']}). {advice}"
    )
