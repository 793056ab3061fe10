"""What a model file is, from the checks every compile runs on it first (``api.inspect``; the
web service checks each upload with it before keeping anything)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is, from the checks every compile runs on it first."""

    name: str
    kind: str  # onnx
    inputs: tuple[dict[str, Any], ...]  # {name, shape, dtype}
    outputs: tuple[dict[str, Any], ...]
    parameters: int
    weight_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "parameters": self.parameters,
                "weight_bytes": self.weight_bytes}  # fmt: skip


def inspect_onnx(path: Path) -> ModelInfo:
    """Load and check an ``.onnx`` file (the ONNX checker and strict shape inference, as a
    compile does before anything else) and describe it; external data must sit beside it.

    Raises:
        ModelLoadError: not a readable, valid ONNX model.
    """
    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import check_model
    from robopt_compile.errors import ModelLoadError

    try:
        model = rir.load(path)
    except ModelLoadError:
        raise
    except Exception as exc:  # onnx's parser raises several unrelated types: one line
        raise ModelLoadError(f"{path.name}: not a readable ONNX model ({exc}).") from exc
    check_model(model, path.name)
    params = sum(int(v.const_value.size) for v in model.graph.initializers.values()
                 if v.const_value is not None)  # fmt: skip
    return ModelInfo(path.stem, "onnx", tuple(s.to_json() for s in rir.input_specs(model)),
                     tuple(s.to_json() for s in rir.output_specs(model)), params,
                     rir.weight_bytes(model))  # fmt: skip
