"""The Q/DQ rules of the pre-flight check: what TensorRT's explicit quantization takes.

Explicit Q/DQ is the only INT8 path in TensorRT 11. The rules rest on the operator table's
"``x_zero_point`` / ``y_zero_point`` must be zero" and the ``IQuantizeLayer`` contract in
``NvInfer.h`` (TensorRT tags v10.3.0 and v11.1): symmetric only; the scale is a positive
build-time constant, a scalar (per-tensor) or 1-D (per-channel); "Per-channel quantization is
supported only for weight inputs"; "For strongly typed networks, input data type must match the
scale data type". A per-channel weight scale must run along the consumer's output-channel axis
(Conv axis 0, ConvTranspose 1, MatMul the last, Gemm by ``transB``: NVIDIA's KCRS example), or it
cannot be factored out of the dot product. Every QuantizeLinear must feed DequantizeLinear nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from robopt_compile.targets.tensorrt.context import CheckContext, dtype_name
from robopt_compile.targets.tensorrt.support import OUTPUT_AXIS, QUANT_TYPES, WARNING


def check_qdq(c: CheckContext) -> None:
    """Every QuantizeLinear / DequantizeLinear against TensorRT's explicit quantization."""
    for n in c.nodes:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name, op = c.name(n), n.op_type
        scale = n.input[1] if len(n.input) > 1 else ""
        zero = n.input[2] if len(n.input) > 2 else ""
        if scale not in c.constants:
            c.add(
                name,
                op,
                f"scale {scale!r} is not a constant (TensorRT needs a build-time constant scale)",
                rule="qdq-scale",
            )
            continue
        s = c.array(scale)
        if (s <= 0).any():
            c.add(name, op, f"scale {scale!r} has non-positive values", rule="qdq-scale")
        qtype = _quant_type(c, n, zero)
        if qtype is not None and qtype not in QUANT_TYPES:
            c.add(
                name,
                op,
                f"quantizes to {dtype_name(qtype)}: TensorRT quantizes to INT8, INT4 or FP8 "
                "(UINT8 only as a network input/output type); use int8 symmetric",
                rule="qdq-type",
            )
        if zero:
            if zero not in c.constants:
                c.add(name, op, f"zero point {zero!r} is not a constant", rule="qdq-zero-point")
            elif (z := c.array(zero)).any():
                nz = z.reshape(-1)[z.reshape(-1) != 0][0]
                c.add(
                    name,
                    op,
                    f"asymmetric quantization: zero point {int(nz)} (TensorRT quantization is "
                    "symmetric: the zero point must be 0)",
                    rule="qdq-zero-point",
                )
        elif op == "QuantizeLinear" and qtype is None:
            c.add(
                name,
                op,
                "no zero point: ONNX then means uint8, TensorRT builds int8; add an int8 "
                "zero point of 0 so both agree",
                WARNING,
                "qdq-zero-point",
            )
        _qdq_granularity(c, n, s)
        _qdq_pairing(c, n, s)
        if op == "QuantizeLinear":
            xt = c.types.get(n.input[0])
            st = c.constants[scale].data_type
            if xt and st and xt != st:
                c.add(
                    name,
                    op,
                    f"input is {dtype_name(xt)} but its scale is {dtype_name(st)}: in a "
                    "strongly typed network the input type must match the scale type",
                    rule="qdq-strongly-typed",
                )


def _quant_type(c: CheckContext, node: Any, zero: str) -> int | None:
    if zero and zero in c.constants:
        return c.constants[zero].data_type
    if node.op_type == "DequantizeLinear" and node.input[0] in c.types:
        return c.types[node.input[0]]
    attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    return attr or None


def _qdq_granularity(c: CheckContext, node: Any, scale: Any) -> None:
    name, op = c.name(node), node.op_type
    if scale.size <= 1:
        return
    if scale.ndim >= 2:
        c.add(
            name,
            op,
            "block quantization (a 2-D scale) is INT4-weight only in TensorRT",
            rule="qdq-granularity",
        )
        return
    if not _is_weight(c, node):
        c.add(
            name,
            op,
            f"per-channel scale ({scale.size} values) on an activation: TensorRT quantizes "
            "activations per-tensor only",
            rule="qdq-granularity",
        )
        return
    src = node.input[0]
    data = src if src in c.constants else c.producer[src].input[0]
    rank = len(c.constants[data].dims)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    axis = axis + rank if axis < 0 else axis
    for consumer, index in _weight_consumers(c, node):
        expected = _expected_axis(consumer, index, rank)
        if expected is not None and axis != expected:
            c.add(
                name,
                op,
                f"per-channel weight scale along axis {axis}, but the output channels of "
                f"{consumer.op_type} {c.name(consumer)!r} are axis {expected}: the scale "
                "cannot be factored out of the dot product",
                rule="qdq-granularity",
            )
            return


def _qdq_pairing(c: CheckContext, node: Any, scale: Any) -> None:
    import numpy as np

    name, op = c.name(node), node.op_type
    if op == "QuantizeLinear":
        users = c.consumers.get(node.output[0], [])
        if node.output[0] in c.graph_outputs or any(
            u.op_type != "DequantizeLinear" for u, _ in users
        ):
            c.add(
                name,
                op,
                "its output feeds something other than DequantizeLinear: TensorRT's "
                "explicit quantization works on QuantizeLinear/DequantizeLinear pairs",
                rule="qdq-pair",
            )
        for u, _ in users:
            other = u.input[1] if len(u.input) > 1 else ""
            same = other in c.constants and np.array_equal(c.array(other), scale)
            if u.op_type == "DequantizeLinear" and other in c.constants and not same:
                c.add(
                    name,
                    op,
                    f"its DequantizeLinear {c.name(u)!r} uses a different scale: the "
                    "pair re-scales instead of fake-quantizing",
                    WARNING,
                    "qdq-pair",
                )
    else:
        src = node.input[0]
        p = c.producer.get(src)
        if src not in c.constants and (p is None or p.op_type != "QuantizeLinear"):
            c.add(
                name,
                op,
                f"its input {src!r} comes from neither a QuantizeLinear nor a quantized "
                "constant weight",
                rule="qdq-pair",
            )


def _is_weight(c: CheckContext, node: Any) -> bool:
    """Whether a Q/DQ node's data input is a constant (a weight), possibly behind a Q."""
    src = node.input[0]
    if src in c.constants:
        return True
    p = c.producer.get(src)
    return p is not None and p.op_type == "QuantizeLinear" and p.input[0] in c.constants


def _weight_consumers(c: CheckContext, node: Any) -> Iterator[tuple[Any, int]]:
    outs = [node.output[0]]
    if node.op_type == "QuantizeLinear":
        outs = [d.output[0] for d, _ in c.consumers.get(node.output[0], [])]
    for out in outs:
        yield from c.consumers.get(out, [])


def _expected_axis(consumer: Any, index: int, rank: int) -> int | None:
    if (consumer.op_type, index) in OUTPUT_AXIS:
        return OUTPUT_AXIS[(consumer.op_type, index)]
    if consumer.op_type == "MatMul" and index == 1:
        return rank - 1
    if consumer.op_type == "Gemm" and index == 1:
        trans = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans else 1
    return None
