"""Static shapes of every value, from ONNX shape inference on a copy of the model with the batch
dim fixed: what the cost formulas (flops.py), the backend-support check and the TensorRT
quantizer read. A value whose shape stays symbolic has ``shape`` None; never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from robopt_compile.passes.analysis.op_histogram import norm_domain
from robopt_compile.passes.analysis.params import tensor_nbytes


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Static shape and dtype of one value; ``shape`` is None when not fully known."""

    shape: tuple[int, ...] | None
    dtype: ir.DataType | None

    @property
    def nbytes(self) -> int | None:
        return tensor_nbytes(self.shape, self.dtype)


def _static(shape: ir.Shape | None) -> tuple[int, ...] | None:
    if shape is None or not shape.is_static():
        return None
    return tuple(int(d) for d in shape.dims)


@dataclass
class StaticShapes:
    """Shapes of every named value after inference on a copy; ``error`` if inference failed."""

    tensors: dict[str, TensorInfo]
    batch: int
    error: str | None = None

    def of(self, value: ir.Value | None) -> TensorInfo:
        """Shape and dtype of ``value``: from its tensor if stored, else from inference."""
        if value is None:
            return TensorInfo(None, None)
        tensor = value.const_value
        if tensor is not None:
            return TensorInfo(tuple(int(d) for d in tensor.shape.dims), tensor.dtype)
        info = self.tensors.get(value.name or "")
        if info is not None and info.shape is not None:
            return info
        return TensorInfo(_static(value.shape), value.dtype or (info.dtype if info else None))


def _substitute(shape: ir.Shape | None, batch: int) -> ir.Shape | None:
    if shape is None:
        return None
    return ir.Shape([d if isinstance(d, int) else batch for d in shape.dims])


def _onnx_knows(node: ir.Node) -> bool:
    import onnx.defs

    try:
        return bool(onnx.defs.has(node.op_type, norm_domain(node.domain)))
    except TypeError:  # an op type or domain that is not valid UTF-8 loads as bytes
        return False


# Initializers above this size are passed to shape inference as typed inputs, not data, so the
# proto stays small (the onnx C API serialises it and has a 2 GB limit).
_INLINE_INITIALIZER_LIMIT = 1024


def infer_static_shapes(model: ir.Model, batch: int = 1) -> StaticShapes:
    """Run ONNX shape inference (with data propagation) on a clone; the model is not touched.

    Symbolic or unknown dims of the graph inputs (and of outputs of ops ONNX cannot infer,
    such as custom ops) are replaced by ``batch``. Dims still symbolic after inference are
    data-dependent and stay unknown.
    """
    import onnx
    import onnx.shape_inference

    clone = model.clone()  # new nodes and values; tensors are shared and never written
    graph = clone.graph
    for value in graph.inputs:
        if not value.is_initializer():
            value.shape = _substitute(value.shape, batch)
    for node in graph.all_nodes():
        known = _onnx_knows(node)
        for out in node.outputs:
            out.shape = None if known else _substitute(out.shape, batch)
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is not None and tensor.nbytes <= _INLINE_INITIALIZER_LIMIT:
            continue
        if tensor is not None:
            value.shape = ir.Shape(list(tensor.shape.dims))
            value.dtype = tensor.dtype
        graph.initializers.pop(value.name)
        value.const_value = None
        if value not in graph.inputs:
            graph.inputs.append(value)
    error = None
    proto = ir.serde.serialize_model(clone)
    try:
        proto = onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=False, data_prop=True
        )
    # Broad: onnx's C++ inference raises InferenceError, ValidationError, ValueError or
    # RuntimeError (no common base); inference is best effort, so the error is reported.
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    inferred = ir.serde.deserialize_model(proto)
    tensors: dict[str, TensorInfo] = {}
    for g in inferred.graphs():
        for name, value in ir.convenience.create_value_mapping(g).items():
            tensors[name] = TensorInfo(_static(value.shape), value.dtype)
    return StaticShapes(tensors, batch, error)
