"""Loading, saving, hashing and describing ONNX models held as ``onnx_ir`` models.

The model lives as an ``onnx_ir.Model`` between passes (see DESIGN.md). This module is the only
place that touches files; passes never read or write disk.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robopt_compile.errors import ModelLoadError

if TYPE_CHECKING:
    import onnx_ir as ir

# Models above this size are written with their weights in a side file (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a model input or output; symbolic dims are strings."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every symbolic dim replaced by ``batch`` (dims are batch-like here)."""
        return tuple(d if isinstance(d, int) else batch for d in self.shape)


def _numpy_dtype_name(dtype: ir.DataType) -> str:
    try:
        return str(dtype.numpy().name)
    except (TypeError, ValueError, AttributeError):
        return dtype.name.lower()


def value_spec(value: ir.Value) -> TensorSpec:
    shape: tuple[int | str, ...] = ()
    if value.shape is not None:
        shape = tuple(d if isinstance(d, int) else str(d.value or "?") for d in value.shape)
    dtype = _numpy_dtype_name(value.dtype) if value.dtype is not None else "unknown"
    return TensorSpec(value.name or "", shape, dtype)


def input_specs(model: ir.Model) -> list[TensorSpec]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = model.graph.initializers
    return [value_spec(v) for v in model.graph.inputs if v.name not in inits]


def output_specs(model: ir.Model) -> list[TensorSpec]:
    return [value_spec(v) for v in model.graph.outputs]


def load(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX file (external data is resolved next to it) with a clear error."""
    import onnx
    import onnx_ir as ir
    from google.protobuf import json_format, message, text_format

    # OSError; each format's parse error (.onnx protobuf, .json, .textproto, .onnxtxt);
    # onnx_ir's SerdeError for a proto it cannot turn into a graph; ValueError for bad fields.
    unreadable = (
        OSError,
        ValueError,
        ir.serde.SerdeError,
        message.Error,
        json_format.Error,
        text_format.Error,
        onnx.parser.ParseError,
    )

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}. Check the path.")
    if p.is_dir():
        raise ModelLoadError(f"{p} is a folder; give the path of an .onnx file.")
    try:
        model = ir.load(p)
    except unreadable as exc:
        raise ModelLoadError(
            f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:160]}). "
            "Re-export it, or check the file is complete."
        ) from exc
    # Read external data now, so a missing side file fails here and not inside a pass, and
    # the model no longer depends on where it was loaded from. Only giant models stay on disk.
    try:
        if weight_bytes(model) < EXTERNAL_DATA_THRESHOLD:
            ir.external_data.load_to_model(model)
        else:
            for init in model.graph.initializers.values():
                if init.const_value is not None:
                    init.const_value.raw  # noqa: B018 - opens the file, maps the tensor
    # OSError: missing or unreadable file; ValueError: offset, length or path out of bounds;
    # TypeError: a dtype with no byte size (onnx_ir's nbytes raises it)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"{p}: external weight data cannot be read ({type(exc).__name__}: {str(exc)[:160]}). "
            "Keep the .onnx file next to its external data file."
        ) from exc
    if len(model.graph) == 0:
        raise ModelLoadError(f"{p} holds an ONNX model with no nodes. Re-export it.")
    return model


def save(model: ir.Model, path: str | os.PathLike[str]) -> list[Path]:
    """Save the model; weights go to ``<name>.data`` beside it when the model is large.

    Returns the files written (the .onnx and, if any, its external data file).
    """
    import onnx_ir as ir

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    size = weight_bytes(model)
    if size >= EXTERNAL_DATA_THRESHOLD:
        data_name = p.name + ".data"
        ir.save(model, p, external_data=data_name)
        return [p, p.parent / data_name]
    ir.save(model, p)
    return [p]


def to_proto(model: ir.Model):
    import onnx_ir as ir

    return ir.serde.serialize_model(model)


def from_proto(proto) -> ir.Model:
    import onnx_ir as ir

    return ir.serde.deserialize_model(proto)


def duplicate_names(model: ir.Model) -> list[str]:
    """What breaks ONNX's single-assignment rule or ONNX Runtime's loader: two nodes with one
    (non-empty) name, or one value name produced twice (by nodes, inputs or initializers),
    in the main graph. Empty list: none."""
    from collections import Counter

    nodes = Counter(n.name for n in model.graph if n.name)
    values = Counter(v.name for v in model.graph.inputs if v.name)
    values.update(n for n in model.graph.initializers if n not in values)
    values.update(v.name for n in model.graph for v in n.outputs if v.name)
    return [f"two nodes named {k!r}" for k, c in nodes.items() if c > 1] + [
        f"value {k!r} defined {c} times" for k, c in values.items() if c > 1
    ]


def check_graph(model: ir.Model, where: str) -> None:
    """Unique node and value names, then the ONNX checker (models under 1 GiB of weights, the
    in-memory checker's limit is 2 GiB): a pass output that fails here never reaches a
    runtime. Raises ``PassError`` naming ``where``."""
    import onnx

    from robopt_compile.errors import PassError

    dups = duplicate_names(model)
    problem = "; ".join(dups[:3]) if dups else None
    if problem is None and weight_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        try:
            onnx.checker.check_model(to_proto(model), full_check=False)
        except Exception as exc:  # onnx's C++ checker raises several types: one line
            problem = str(exc).splitlines()[0][:200]
    if problem:
        raise PassError(
            f"{where} produced an invalid ONNX graph ({problem}); this is a robopt bug: "
            "re-run with --debug and report it, or skip that optimization."
        )


def weight_bytes(model: ir.Model) -> int:
    total = 0
    for init in model.graph.initializers.values():
        if init.const_value is not None:
            total += init.const_value.nbytes
    return total


def clone(model: ir.Model) -> ir.Model:
    """A deep copy (through the proto), so a candidate rewrite never touches its input."""
    return from_proto(to_proto(model))


def fix_batch(model: ir.Model, n: int = 1) -> list[str]:
    """Give every graph input whose first dim is symbolic the batch ``n``, and every value
    whose first dim is the same symbol too; the names of the inputs changed."""
    import onnx_ir as ir

    symbols = set()
    changed = []
    for v in model.graph.inputs:
        if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int):
            symbols.add(str(v.shape[0]))
            changed.append(v.name)
    if not symbols:
        return []
    values = [*model.graph.inputs, *model.graph.outputs]
    values += [o for node in model.graph for o in node.outputs]
    for v in values:
        if v.shape is not None and len(v.shape) and str(v.shape[0]) in symbols:
            v.shape = ir.Shape([n, *list(v.shape)[1:]])
    return changed
