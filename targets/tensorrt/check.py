"""Static pre-flight check of an ONNX model against TensorRT's ONNX parser, without TensorRT.

It runs on the build machine (it needs only ``onnx``) before every TensorRT build and before a
deferred build is written, so a model TensorRT would reject fails here, naming the node and the
reason, instead of on the robot minutes into an engine build. ``check_model`` runs the rules in a
fixed order (opset, operators, INT64 ranges, Q/DQ in ``qdq.py``, input dims, precision, DLA) and
returns their findings; ``require_buildable`` turns the first error into one line. The tables
the rules read, and the sources behind them, are in ``support.py``.

A model without TensorRT proof is still only checked: the real parse happens on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robopt_compile.errors import BuildError, InputError
from robopt_compile.targets.tensorrt.context import CheckContext
from robopt_compile.targets.tensorrt.qdq import check_qdq
from robopt_compile.targets.tensorrt.support import (
    DLA_MAX_BATCH,
    DLA_MAX_DIM,
    ERROR,
    FLOAT16,
    INT32_MAX,
    INT32_MIN,
    INT64,
    OPERATOR_TABLE,
    OPSET_RANGE,
    SENTINEL_INPUTS,
    SHAPE_INPUTS,
    SUPPORTED_OPS,
    TARGET_TRT,
    UNSUPPORTED_OPS,
    WARNING,
    Finding,
    dla_supported,
)


def check_dynamic_batch(value: Sequence[int] | None) -> tuple[int, int, int] | None:
    """Validate ``BuildOptions.dynamic_batch``: ``(min, opt, max)`` with 1 <= min <= opt <= max."""
    if value is None:
        return None
    try:
        lo, opt, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(
            f"dynamic_batch must be (min, opt, max) integers, got {value!r}."
        ) from None
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"dynamic_batch must satisfy 1 <= min <= opt <= max, got {value!r}.")
    return lo, opt, hi


def load_model(model_path: Path) -> Any:
    """The ONNX model (``onnx.ModelProto``) or a one-line ``BuildError``.

    External data is not loaded: the checks read only small constants (INT64 values, Q/DQ
    scales), each loaded on demand, so a multi-GB policy is not read into memory here.
    """
    import onnx
    from google.protobuf import json_format, message, text_format

    # OSError; each serialization's parse error (.onnx protobuf, .json, .textproto, .onnxtxt);
    # ValueError for an unknown format
    unreadable = (
        OSError,
        ValueError,
        message.Error,
        json_format.Error,
        text_format.Error,
        onnx.parser.ParseError,
    )
    try:
        return onnx.load(str(model_path), load_external_data=False)
    except unreadable as exc:
        lines = str(exc).strip().splitlines()
        first = (lines[0] if lines else type(exc).__name__)[:200]
        raise BuildError(f"TensorRT pre-flight cannot read {model_path}: {first}.") from exc


def check_model(
    model: Any,
    *,
    precision: str = "fp32",
    dynamic_batch: Sequence[int] | None = None,
    dla_core: int | None = None,
    trt_version: str = TARGET_TRT,
    base_dir: Path | None = None,
) -> list[Finding]:
    """Everything TensorRT ``trt_version`` would reject or silently change, node by node.

    Args:
        model: an ``onnx.ModelProto`` or the path of an ONNX file.
        base_dir: the folder of the ONNX file, for external data (a path ``model`` sets it).
        precision: the requested robopt precision (``fp32``, ``fp16``, ``int8``); with strongly
            typed networks it must match the ONNX's own types.
        dynamic_batch: ``(min, opt, max)`` of the optimization profile over a symbolic batch.
        dla_core: the DLA core the build will use, or ``None`` for GPU only.
        trt_version: the TensorRT version the engine will be built with.

    Returns:
        Findings in graph order; ``require_buildable`` raises on the first error.
    """
    if isinstance(model, str | Path):
        base_dir = Path(model).parent
        model = load_model(Path(model))
    batch = check_dynamic_batch(dynamic_batch)
    return _run(CheckContext(model, precision, batch, dla_core, trt_version, base_dir))


def require_buildable(findings: Sequence[Finding]) -> None:
    """Raise one ``BuildError`` line naming the first blocking finding and how many others."""
    errors = [f for f in findings if f.severity == ERROR]
    if not errors:
        return
    first, more = errors[0], len(errors) - 1
    tail = f" (and {more} other blocking finding{'s' if more != 1 else ''})" if more else ""
    raise BuildError(f"TensorRT pre-flight: {first.where()}: {first.reason}{tail}.")


def _run(c: CheckContext) -> list[Finding]:
    _opset(c)
    _operators(c)
    _int64(c)
    check_qdq(c)
    _inputs(c)
    _precision(c)
    if c.dla_core is not None:
        _dla(c)
    return c.findings


# --- rules ------------------------------------------------------------------------------------


def _opset(c: CheckContext) -> None:
    for imp in c.model.opset_import:
        if imp.domain not in ("", "ai.onnx"):
            continue
        lo, hi = OPSET_RANGE
        if imp.version < lo:
            c.add("", "model", f"opset {imp.version} is older than TensorRT's opset {lo}")
        elif imp.version > hi:
            c.add(
                "",
                "model",
                f"opset {imp.version} is newer than the opset {lo}-{hi} of {OPERATOR_TABLE}; "
                "an operator whose semantics changed since may be rejected on the device",
                WARNING,
                "opset",
            )


def _operators(c: CheckContext) -> None:
    # Calls of model-local functions are inlined by the parser: check their bodies instead.
    local = {(f.domain, f.name): f for f in c.model.functions}
    body = [n for f in c.model.functions for n in f.node]
    for i, n in enumerate(body):
        c.names.setdefault(id(n), n.name or f"{n.op_type}#f{i}")
    for n in [*c.nodes, *body]:
        if (n.domain, n.op_type) in local:
            continue
        if n.domain not in ("", "ai.onnx"):
            c.add(
                c.name(n),
                n.op_type,
                f"op domain {n.domain!r} has no TensorRT importer; it needs a TensorRT "
                "plugin registered under that name",
                rule="operator",
            )
        elif n.op_type in UNSUPPORTED_OPS:
            c.add(
                c.name(n),
                n.op_type,
                f"{n.op_type} is not supported by TensorRT's ONNX parser ({OPERATOR_TABLE})",
                rule="operator",
            )
        elif n.op_type not in SUPPORTED_OPS:
            c.add(
                c.name(n),
                n.op_type,
                f"{n.op_type} is not in TensorRT's operator table ({OPERATOR_TABLE})",
                rule="operator",
            )


def _int64(c: CheckContext) -> None:
    for value, tensor in c.constants.items():
        if tensor.data_type != INT64:
            continue
        arr = c.array(value)
        if arr.size == 0:
            continue
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= INT32_MIN and hi <= INT32_MAX:
            continue
        bad = hi if hi > INT32_MAX else lo
        uses = c.consumers.get(value, [])
        exempt = [i in SENTINEL_INPUTS.get(n.op_type, ()) for n, i in uses]
        if uses and all(exempt) and abs(bad) >= INT32_MAX:
            continue  # INT64_MAX "to the end" / "no limit": the parser clamps it
        shape_use = next(((n, i) for n, i in uses if i in SHAPE_INPUTS.get(n.op_type, ())), None)
        where = shape_use[0] if shape_use else (uses[0][0] if uses else None)
        node, op = (c.name(where), where.op_type) if where is not None else (value, "model")
        if shape_use:
            c.add(
                node,
                op,
                f"INT64 constant {value!r} holds {bad}, outside int32, and TensorRT turns "
                f"input {shape_use[1]} of {op} into int32 dimensions",
                rule="int64-range",
            )
        else:
            c.add(
                node,
                op,
                f"INT64 constant {value!r} holds {bad}, outside int32: TensorRT 10 keeps "
                "INT64 here, but TensorRT <= 8.6 clamped it to INT32 and INT32-only layers "
                "will not take it",
                WARNING,
                "int64-range",
            )


# inputs and shapes


def _inputs(c: CheckContext) -> None:
    batch = c.dynamic_batch
    dynamic_batch_inputs = 0
    for v in c.model.graph.input:
        if v.name in c.constants:
            continue
        tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            c.add(
                v.name,
                "input",
                "has no shape; TensorRT needs the rank and the non-batch dims",
                rule="dynamic-dim",
            )
            continue
        dims = list(tt.shape.dim)
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            label = d.dim_param or "?"
            if i == 0 and batch is not None:
                dynamic_batch_inputs += 1
            elif i == 0:
                c.add(
                    v.name,
                    "input",
                    f"dim 0 ({label!r}) is symbolic but no dynamic_batch (min, opt, max) was "
                    "given for the optimization profile; pass one or export a fixed batch",
                    rule="dynamic-dim",
                )
            else:
                c.add(
                    v.name,
                    "input",
                    f"dim {i} ({label!r}) is dynamic: robopt's optimization profile covers "
                    "only a batch dim 0; export this dim with a fixed size",
                    rule="dynamic-dim",
                )
    if batch is not None and dynamic_batch_inputs == 0:
        c.add(
            "",
            "model",
            f"dynamic_batch {batch} was given but no input has a symbolic dim 0 (export the "
            "model with a dynamic batch)",
            rule="dynamic-dim",
        )


# precision (strongly typed: the ONNX types are the engine's precision)


def _precision(c: CheckContext) -> None:
    fp16 = _first_fp16(c)
    qdq = next((n for n in c.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")), None)
    p = c.precision
    if p == "fp16" and fp16 is None:
        c.add(
            "",
            "model",
            "precision fp16, but this ONNX has no float16 tensor and a "
            "strongly typed engine computes in the ONNX's own types: run robopt's "
            "float16 pass first (TensorRT 11 has no FP16 builder flag)",
            rule="precision",
        )
    if p == "int8" and qdq is None:
        c.add(
            "",
            "model",
            "precision int8, but this ONNX has no QuantizeLinear/"
            "DequantizeLinear: run robopt's int8-static-trt pass (TensorRT 11 removed "
            "implicit INT8 calibration)",
            rule="precision",
        )
    if p in ("fp32", "fp16") and qdq is not None:
        c.add(
            c.name(qdq),
            qdq.op_type,
            f"precision {p}, but this ONNX is quantized (Q/DQ): build it as int8",
            rule="precision",
        )
    if p == "fp32" and fp16 is not None:
        c.add(
            "",
            "model",
            f"precision fp32, but this ONNX computes in float16 ({fp16}): "
            "a strongly typed engine would run that in fp16; build it as fp16",
            rule="precision",
        )


def _first_fp16(c: CheckContext) -> str | None:
    for name, t in c.constants.items():
        if t.data_type == FLOAT16:
            return f"constant {name!r}"
    for n in c.nodes:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in n.attribute):
            return f"Cast {c.name(n)!r}"
    for v in c.model.graph.input:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == FLOAT16:
            return f"input {v.name!r}"
    return None


# DLA


def _dla(c: CheckContext) -> None:
    if not dla_supported(c.trt_version):
        c.add(
            "",
            "model",
            f"DLA is not available in TensorRT {c.trt_version} on "
            "Jetson (10.7 was the last 10.x with DLA; 11.x has it from 11.4.1 on "
            "JetPack 7.2.2)",
            rule="dla",
        )
    if c.precision == "fp32":
        c.add(
            "",
            "model",
            "DLA runs FP16 and INT8 only: at fp32 every layer would fall "
            "back to the GPU; build fp16 or int8 for DLA",
            rule="dla",
        )
    b = c.dynamic_batch
    if b is not None and b[0] != b[2]:
        c.add(
            "",
            "model",
            f"DLA takes no dynamic dims but dynamic_batch is {b}: the "
            "layers would run on the GPU (fallback); use min = opt = max for DLA",
            WARNING,
            "dla",
        )
    for v in c.model.graph.input:
        if v.name in c.constants or not v.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        batch = b[2] if b is not None else (dims[0] if dims else 1)
        if batch > DLA_MAX_BATCH:
            c.add(
                v.name,
                "input",
                f"batch {batch} exceeds DLA's {DLA_MAX_BATCH}; those layers fall back to the GPU",
                WARNING,
                "dla",
            )
        big = [d for d in dims[1:] if d > DLA_MAX_DIM]
        if big:
            c.add(
                v.name,
                "input",
                f"dim {big[0]} exceeds DLA's {DLA_MAX_DIM} for "
                "non-batch dims; those layers fall back to the GPU",
                WARNING,
                "dla",
            )
