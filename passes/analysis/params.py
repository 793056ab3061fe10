"""Parameter count and weight bytes, from initializers and ``Constant`` nodes.

Weights decide whether a policy fits a board's memory and how much a quantization pass can
save, so they are counted by dtype (int64 shape constants apart from float weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from robopt_compile.passes.base import AnalysisPass


@dataclass(frozen=True, slots=True)
class WeightInfo:
    """One stored tensor: an initializer or the value of a ``Constant`` node."""

    name: str
    source: str  # "initializer" | "constant"
    dtype: str
    shape: tuple[int, ...] | None
    numel: int | None
    nbytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
            "params": self.numel,
            "bytes": self.nbytes,
        }


def dtype_name(dtype: ir.DataType | None) -> str:
    """Numpy-style name (``float32``) that reads the same in every report."""
    if dtype is None:
        return "unknown"
    try:
        return str(dtype.numpy().name)
    except (TypeError, ValueError, AttributeError):
        return dtype.name.lower()


def tensor_nbytes(shape: tuple[int, ...] | None, dtype: ir.DataType | None) -> int | None:
    """Bytes of a dense tensor; sub-byte types (int4) round up, unknowns give None."""
    if shape is None or dtype is None or dtype == ir.DataType.UNDEFINED:
        return None
    if dtype == ir.DataType.STRING:
        return None
    return math.ceil(math.prod(shape) * dtype.itemsize)


def is_weight(value: ir.Value) -> bool:
    """True for initializers and ``Constant`` outputs: data stored in the model, not computed."""
    if value.is_initializer():
        return True
    producer = value.producer()
    return (
        producer is not None
        and producer.op_type == "Constant"
        and producer.domain in ("", "ai.onnx")
    )


def _static_dims(shape: ir.Shape | None) -> tuple[int, ...] | None:
    if shape is None or not shape.is_static():
        return None
    return tuple(int(d) for d in shape.dims)


def _initializer_info(value: ir.Value) -> WeightInfo:
    tensor = value.const_value
    if tensor is not None:
        shape = tuple(int(d) for d in tensor.shape.dims)
        return WeightInfo(
            value.name or "",
            "initializer",
            dtype_name(tensor.dtype),
            shape,
            math.prod(shape),
            int(tensor.nbytes),
        )
    shape = _static_dims(value.shape)
    numel = math.prod(shape) if shape is not None else None
    return WeightInfo(
        value.name or "",
        "initializer",
        dtype_name(value.dtype),
        shape,
        numel,
        tensor_nbytes(shape, value.dtype),
    )


# Scalar/list attributes of Constant and the dtype ONNX gives them.
_CONSTANT_LIST_ATTRS = {
    "value_float": ir.DataType.FLOAT,
    "value_floats": ir.DataType.FLOAT,
    "value_int": ir.DataType.INT64,
    "value_ints": ir.DataType.INT64,
}


def _constant_info(node: ir.Node) -> WeightInfo:
    name = node.outputs[0].name or node.name or ""
    attr = next(iter(node.attributes.values()), None)
    if attr is None:
        return WeightInfo(name, "constant", "unknown", None, None, None)
    if attr.name == "value":
        tensor = attr.value
        shape = tuple(int(d) for d in tensor.shape.dims)
        return WeightInfo(
            name,
            "constant",
            dtype_name(tensor.dtype),
            shape,
            math.prod(shape),
            int(tensor.nbytes),
        )
    if attr.name in _CONSTANT_LIST_ATTRS:
        dtype = _CONSTANT_LIST_ATTRS[attr.name]
        n = len(attr.value) if attr.name.endswith("s") else 1
        shape = (n,) if attr.name.endswith("s") else ()
        return WeightInfo(name, "constant", dtype_name(dtype), shape, n, n * int(dtype.itemsize))
    if attr.name in ("value_string", "value_strings"):
        strings = attr.value if attr.name.endswith("s") else [attr.value]
        nbytes = sum(len(s.encode() if isinstance(s, str) else s) for s in strings)
        shape = (len(strings),) if attr.name.endswith("s") else ()
        return WeightInfo(name, "constant", "string", shape, len(strings), nbytes)
    return WeightInfo(name, "constant", "unknown", None, None, None)  # sparse_value


def iter_weights(model: ir.Model) -> Iterator[WeightInfo]:
    """Every stored tensor of the main graph and its subgraphs (If/Loop bodies)."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            yield _initializer_info(value)
    for node in model.graph.all_nodes():
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            yield _constant_info(node)


class ParamsPass(AnalysisPass):
    """Counts parameters and weight bytes, by dtype, and lists the largest tensors."""

    name = "params"

    def __init__(self, top: int = 10) -> None:
        super().__init__()
        self.top = top

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        weights = list(iter_weights(model))
        known = [w for w in weights if w.numel is not None and w.nbytes is not None]
        by_dtype: dict[str, dict[str, int]] = {}
        for w in known:
            entry = by_dtype.setdefault(w.dtype, {"tensors": 0, "params": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["params"] += w.numel or 0
            entry["bytes"] += w.nbytes or 0
        largest = sorted(known, key=lambda w: (-(w.nbytes or 0), w.name))[: self.top]
        return {
            "param_count": sum(w.numel or 0 for w in known),
            "weight_bytes": sum(w.nbytes or 0 for w in known),
            "initializers": sum(1 for w in weights if w.source == "initializer"),
            "constants": sum(1 for w in weights if w.source == "constant"),
            "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
            "largest": [w.to_json() for w in largest],
            "unknown": [w.name for w in weights if w.numel is None or w.nbytes is None],
        }
