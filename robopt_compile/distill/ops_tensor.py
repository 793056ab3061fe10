"""Torch kernels of the ONNX tensor ops: arithmetic, comparison and logic, reductions, and the
shape and indexing ops (Reshape, Slice, Gather, Pad, ...).

Shape-valued inputs (Reshape's shape, Slice's starts, ...) arrive as int64 tensors and are read
with ``int_list``; ONNX's index conventions (negative indices, clamped slice bounds, negative
steps) are resolved here, since torch's differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from robopt_compile.distill.kernel import Step, Unsupported, int_list, torch_dtype, unary


def _bin(op: Callable[[Any, Any], Any]):
    return lambda s, a, b: op(a, b)


def _binary(fn_name: str):
    def run(s: Step, a, b):
        return getattr(torch, fn_name)(a, b)

    return run


def _variadic(fn_name: str):
    def run(s: Step, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = getattr(torch, fn_name)(out, x)
        return out

    return run


def _div(s: Step, a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(s: Step, a, b):
    return torch.pow(a, b).to(a.dtype)


def _where(s: Step, c, a, b):
    return torch.where(c, a, b)


def _reduce(kind: str):
    def run(s: Step, x, axes=None):
        ax = int_list(axes) if axes is not None else s.get("axes")
        keep = bool(s.get("keepdims", 1))
        if not ax:
            if s.get("noop_with_empty_axes", 0):
                return x
            ax = list(range(x.dim()))
        dims = tuple(a % max(x.dim(), 1) for a in ax)
        if kind == "mean":
            return torch.mean(x, dims, keepdim=keep)
        if kind == "sum":
            return torch.sum(x, dims, keepdim=keep)
        if kind == "max":
            return torch.amax(x, dims, keepdim=keep)
        return torch.amin(x, dims, keepdim=keep)

    return run


def _arg(kind: str):
    def run(s: Step, x):
        if s.get("select_last_index", 0):
            raise Unsupported("select_last_index=1")
        fn = torch.argmax if kind == "max" else torch.argmin
        return fn(x, dim=s.get("axis", 0), keepdim=bool(s.get("keepdims", 1)))

    return run


def _reshape(s: Step, x, shape):
    dims = int_list(shape)
    if not s.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(s: Step, x):
    axis = s.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _transpose(s: Step, x):
    perm = s.get("perm") or list(range(x.dim()))[::-1]
    return x.permute(perm)


def _concat(s: Step, *xs):
    return torch.cat(xs, dim=s.get("axis"))


def _split(s: Step, x, split=None):
    axis = s.get("axis", 0)
    sizes = int_list(split) if split is not None else s.get("split")
    if sizes:
        return torch.split(x, sizes, dim=axis)
    parts = s.get("num_outputs", len(s.outputs))
    return torch.split(x, -(-x.shape[axis] // parts), dim=axis)


def _slice(s: Step, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        st, en, ax = s.get("starts"), s.get("ends"), s.get("axes")
        sp = None
    else:
        st, en, ax, sp = int_list(starts), int_list(ends), int_list(axes), int_list(steps)
    ax = ax if ax is not None else list(range(len(st)))
    sp = sp if sp is not None else [1] * len(st)
    index: list[Any] = [slice(None)] * x.dim()
    for a, b, e, step in zip(ax, st, en, sp, strict=True):
        a %= x.dim()
        dim = x.shape[a]
        b, e = b + dim if b < 0 else b, e + dim if e < 0 else e
        if step > 0:
            index[a] = slice(min(max(b, 0), dim), min(max(e, 0), dim), step)
        else:  # torch has no negative-step slicing: gather the indices instead
            b, e = min(max(b, 0), dim - 1), min(max(e, -1), dim - 1)
            x = x.index_select(a, torch.arange(b, e, step, device=x.device))
    return x[tuple(index)]


def _squeeze(s: Step, x, axes=None):
    ax = int_list(axes) if axes is not None else s.get("axes")
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in ax))


def _unsqueeze(s: Step, x, axes=None):
    ax = int_list(axes) if axes is not None else s.get("axes")
    rank = x.dim() + len(ax)
    for a in sorted(a % rank for a in ax):
        x = x.unsqueeze(a)
    return x


def _gather(s: Step, x, idx):
    axis = s.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _shape(s: Step, x):
    dims = list(x.shape)[s.get("start", 0) : s.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def _cast(s: Step, x):
    return x.to(torch_dtype(s.get("to")))


def _constant_of_shape(s: Step, shape):
    value = s.get("value")
    if value is None:
        return torch.zeros(int_list(shape), dtype=torch.float32)
    return torch.full(int_list(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _expand(s: Step, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(int_list(shape))))


def _tile(s: Step, x, reps):
    return x.repeat(int_list(reps))


def _range(s: Step, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _pad(s: Step, x, pads=None, value=None, axes=None):
    mode = s.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    p = int_list(pads) if pads is not None else s.get("pads")
    ax = [a % x.dim() for a in int_list(axes)] if axes is not None else list(range(x.dim()))
    n = len(ax)
    per_dim = {a: (p[i], p[i + n]) for i, a in enumerate(ax)}
    first = min((a for a, v in per_dim.items() if v != (0, 0)), default=x.dim())
    tp = [v for a in range(x.dim() - 1, first - 1, -1) for v in per_dim.get(a, (0, 0))]
    if not tp:
        return x
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise Unsupported(f"mode={mode}")
    if torch_mode == "constant":
        fill = value.reshape(-1)[0].item() if value is not None and value.numel() else 0.0
        return F.pad(x, tp, value=fill)
    return F.pad(x, tp, mode=torch_mode)


def _einsum(s: Step, *xs):
    eq = s.get("equation")
    return torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *xs)


def _identity(s: Step, x, *_: Any):
    return x


# ONNX op type -> kernel, for the standard domain.
TENSOR_OPS: dict[str, Callable[..., Any]] = {
    "Add": _bin(lambda a, b: a + b),
    "Sub": _bin(lambda a, b: a - b),
    "Mul": _bin(lambda a, b: a * b),
    "Div": _div,
    "Pow": _pow,
    "Sqrt": unary("sqrt"),
    "Reciprocal": unary("reciprocal"),
    "Neg": unary("neg"),
    "Abs": unary("abs"),
    "Exp": unary("exp"),
    "Log": unary("log"),
    "Sin": unary("sin"),
    "Cos": unary("cos"),
    "Floor": unary("floor"),
    "Ceil": unary("ceil"),
    "Round": unary("round"),  # both round half to even
    "Sign": unary("sign"),
    "Erf": unary("erf"),
    "Not": unary("logical_not"),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ArgMax": _arg("max"),
    "ArgMin": _arg("min"),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gather": _gather,
    "Shape": _shape,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Pad": _pad,
    "Where": _where,
    "Equal": _binary("eq"),
    "Less": _binary("lt"),
    "LessOrEqual": _binary("le"),
    "Greater": _binary("gt"),
    "GreaterOrEqual": _binary("ge"),
    "And": _binary("logical_and"),
    "Or": _binary("logical_or"),
    "Min": _variadic("minimum"),
    "Max": _variadic("maximum"),
    "Sum": _variadic("add"),
    "Einsum": _einsum,
    "Identity": _identity,
    "Range": _range,
}
