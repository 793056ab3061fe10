"""What an op kernel of the ONNX->torch interpreter receives, and the helpers kernels share.

A kernel is ``fn(step, *inputs) -> tensor | tuple of tensors``: ``step`` (a ``Step``) is its
node prepared once (attributes, opset, how many outputs something reads). Kernels live in
``ops_nn`` (layers) and ``ops_tensor`` (arithmetic, shapes, indexing); ``interpreter`` finds them
through one table. A kernel that meets an attribute value it cannot honour raises
``Unsupported``; the interpreter turns that into a one-line ``PassError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from robopt_compile.errors import PassError


class Unsupported(Exception):
    """An op, or an attribute value of a supported op, the interpreter does not implement."""


def unsupported_error(op: str, node: str) -> PassError:
    return PassError(
        f"distillation cannot train this model: ONNX op {op!r} (node {node}) has no torch "
        "implementation in robopt's trainer; drop --distill or report it"
    )


@dataclass(frozen=True)
class Step:
    """One node, prepared once: its kernel, input/output names and attributes."""

    op: str
    label: str  # node name for messages
    fn: Callable[..., Any]
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]  # "" for an unused optional output
    attrs: Mapping[str, Any]
    opset: int
    needed: int  # outputs up to the last one something reads

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def torch_dtype(dtype: Any) -> torch.dtype:
    table = {
        ir.DataType.FLOAT: torch.float32,
        ir.DataType.DOUBLE: torch.float64,
        ir.DataType.FLOAT16: torch.float16,
        ir.DataType.BFLOAT16: torch.bfloat16,
        ir.DataType.INT8: torch.int8,
        ir.DataType.INT16: torch.int16,
        ir.DataType.INT32: torch.int32,
        ir.DataType.INT64: torch.int64,
        ir.DataType.UINT8: torch.uint8,
        ir.DataType.BOOL: torch.bool,
    }
    dt = table.get(ir.DataType(dtype))
    if dt is None:
        raise Unsupported(f"dtype {ir.DataType(dtype).name}")
    return dt


def to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def attr_value(attr: Any) -> Any:
    if attr.type == ir.AttributeType.TENSOR:
        return to_torch(attr.value.numpy())
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise Unsupported("subgraph attribute")
    if attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(attr.value)
    return attr.value


def int_list(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def spatial_pads(s: Step, x: torch.Tensor, kernel: Sequence[int], strides, dilations):
    """Per-spatial-dim (begin, end) padding, including ``auto_pad`` SAME_*/VALID."""
    n = len(kernel)
    auto = s.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "NOTSET":
        p = s.get("pads") or [0] * (2 * n)
        return [(p[i], p[i + n]) for i in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto}")
    out = []
    for i in range(n):
        size = x.shape[2 + i]
        o = -(-size // strides[i])
        total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return out


def torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    return [v for lo, hi in reversed(pads) for v in (lo, hi)]


def unary(fn_name: str):
    def run(s: Step, x):
        return getattr(torch, fn_name)(x)

    return run
