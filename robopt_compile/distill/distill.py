"""Recovery fine-tuning: train a pruned ONNX graph's own weights to match its source model.

After structured pruning or low-rank factorisation the student graph has the right structure and
the wrong numbers. ``distill`` runs the student graph in torch (``OnnxModule``: an interpreter of
the ONNX nodes, with the graph's float weights as parameters), fits its outputs to the teacher's
on unlabeled inputs, and writes the trained weights back into a copy of the same graph. Nothing is
re-exported, so every graph check that held before still holds, and any source works (zoo, torch
factory or a bare ONNX file).

This module imports torch at the top: import it inside the function that distils (the pipeline
does), so ``robopt-compile --help`` and the robot-side tools never pay for torch.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from robopt_compile.errors import InputError, PassError

Sample = dict[str, np.ndarray]

# Inputs of these ops whose initializer is a float tensor of more than one element are trained.
# Normalisation statistics (BatchNormalization mean/var), shape tensors and scalar constants stay
# fixed: training them either breaks the op's meaning (a negative variance) or does nothing.
TRAINABLE_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "Add": (0, 1),
    "Mul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
}

# Quantized graphs are refused: their weights are integers behind scales, and the fake-quant
# rounding has no gradient. Distil first, then quantize the recovered fp32 model.
QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
    }
)

# The interpreter must reproduce ONNX Runtime on the student before training starts.
PARITY_COSINE_MIN = 0.9999
# Gaussian noise std as a fraction of each input element's spread over the samples. On state-mlp
# with i.i.d. normal inputs more noise kept helping (held-out relative L2 after 300 steps: 0.23
# at 0.05, 0.19 at 0.2, 0.16 at 1.0), but such inputs have no manifold to leave; real
# observations do, so the default stays small and mixup does the exploring.
NOISE_SCALE = 0.1
_LOG_EVERY = 10  # progress() is called every this many steps, and at the last

# Measured on the 2-core build machine, 1 thread, batch 8, student = teacher with gaussian noise
# on every trained weight; held-out relative L2 to the teacher, untrained, then after training:
#   model           steps samples  untrained  lr 1e-4  3e-4   1e-3   3e-3
#   state-mlp        300    32      0.437       0.232  0.207  0.266* 0.35*
#   visuomotor-cnn    40    16      0.169       0.059  0.057  0.064  0.197
#   act-policy        30    16      0.157       0.053  0.067  0.067
#   (* with NOISE_SCALE 0.05, the rest 0.1)
# 1e-4 is never more than 12% off the best; 3e-4 is 26% off on the transformer and 3e-3
# diverges on the CNN, so the default is 1e-4.
# Speed: visuomotor-cnn (11.4M trained parameters) runs 0.81 steps/s at batch 8 on 1 thread
# when exported with a static batch (8 batch-1 passes a step) and 1.0 steps/s with a dynamic
# batch (one batch-8 pass): 1000 steps take about 17-20 minutes on one core. state-mlp: ~140/s.


class _Unsupported(Exception):
    """An op, or an attribute value of a supported op, the interpreter does not implement."""


def _unsupported(op: str, node: str) -> PassError:
    return PassError(
        f"distillation cannot train this model: ONNX op {op!r} (node {node}) has no torch "
        "implementation in robopt's trainer; drop --distill or report it"
    )


# ----------------------------------------------------------------------------------------------
# The interpreter: one small function per op, found through ``_OPS``.


@dataclass(frozen=True)
class _Step:
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


def _torch_dtype(dtype: Any) -> torch.dtype:
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
        raise _Unsupported(f"dtype {ir.DataType(dtype).name}")
    return dt


def _to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def _attr_value(attr: Any) -> Any:
    if attr.type == ir.AttributeType.TENSOR:
        return _to_torch(attr.value.numpy())
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise _Unsupported("subgraph attribute")
    if attr.type in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(attr.value)
    return attr.value


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _pads(s: _Step, x: torch.Tensor, kernel: Sequence[int], strides, dilations):
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
        raise _Unsupported(f"auto_pad={auto}")
    out = []
    for i in range(n):
        size = x.shape[2 + i]
        o = -(-size // strides[i])
        total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return out


def _torch_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    return [v for lo, hi in reversed(pads) for v in (lo, hi)]


def _conv(s: _Step, x, w, b=None):
    n = w.dim() - 2
    kernel = s.get("kernel_shape") or list(w.shape[2:])
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    pads = _pads(s, x, kernel, strides, dil)
    if all(lo == hi for lo, hi in pads):
        padding = [lo for lo, _ in pads]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * n
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return fn(x, w, b, strides, padding, dil, s.get("group", 1))


def _conv_transpose(s: _Step, x, w, b=None):
    n = w.dim() - 2
    if s.get("output_shape") or s.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise _Unsupported("output_shape/auto_pad")
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    outpad = s.get("output_padding") or [0] * n
    p = s.get("pads") or [0] * (2 * n)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(x, w, b, strides, 0, outpad, s.get("group", 1), dil)
    idx = [slice(None), slice(None)] + [slice(p[i], y.shape[2 + i] - p[i + n]) for i in range(n)]
    return y[tuple(idx)]


def _gemm(s: _Step, a, b, c=None):
    if s.get("transA", 0):
        a = a.t()
    if s.get("transB", 0):
        b = b.t()
    alpha, beta = s.get("alpha", 1.0), s.get("beta", 1.0)
    if c is None:
        y = a @ b
        return y * alpha if alpha != 1.0 else y
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


def _div(s: _Step, a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _clip(s: _Step, x, lo=None, hi=None):
    if s.opset < 11:
        lo, hi = s.get("min"), s.get("max")
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def _softmax_like(fn_name: str):
    def run(s: _Step, x):
        fn = getattr(F, fn_name)
        if s.opset >= 13:
            return fn(x, dim=s.get("axis", -1))
        # Before opset 13 the op works on the input flattened to 2D at ``axis``.
        axis = s.get("axis", 1) % max(x.dim(), 1)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


def _layer_norm(s: _Step, x, scale, bias=None):
    axis = s.get("axis", -1) % x.dim()
    eps = s.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    want_stats = s.needed > 1
    if not want_stats and tuple(scale.shape) == shape and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


def _batch_norm(s: _Step, x, scale, bias, mean, var):
    if s.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, s.get("epsilon", 1e-5))


def _instance_norm(s: _Step, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=s.get("epsilon", 1e-5))


def _max_pool(s: _Step, x):
    if s.needed > 1:
        raise _Unsupported("Indices output")
    kernel = s.get("kernel_shape")
    n = len(kernel)
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    pads = _pads(s, x, kernel, strides, dil)
    limit = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dil, strict=True)]
    if all(lo == hi and lo <= m for (lo, hi), m in zip(pads, limit, strict=True)):
        padding = [lo for lo, _ in pads]
    else:
        x, padding = F.pad(x, _torch_pad(pads), value=float("-inf")), [0] * n
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return fn(x, kernel, strides, padding, dil, ceil_mode=bool(s.get("ceil_mode", 0)))


def _avg_pool(s: _Step, x):
    kernel = s.get("kernel_shape")
    n = len(kernel)
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    if any(d != 1 for d in dil):
        raise _Unsupported("dilations")
    pads = _pads(s, x, kernel, strides, dil)
    ceil, include = bool(s.get("ceil_mode", 0)), bool(s.get("count_include_pad", 0))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    if all(lo == hi and lo <= k // 2 for (lo, hi), k in zip(pads, kernel, strict=True)):
        return fn(x, kernel, strides, [lo for lo, _ in pads], ceil, include)
    # Asymmetric padding: pool the zero-padded input, then divide by the valid-element share.
    xp = F.pad(x, _torch_pad(pads))
    y = fn(xp, kernel, strides, 0, ceil, True)
    if include:
        return y
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return y / fn(ones, kernel, strides, 0, ceil, True)


def _global_pool(reduce: str):
    def run(s: _Step, x):
        dims = tuple(range(2, x.dim()))
        return x.mean(dims, keepdim=True) if reduce == "mean" else x.amax(dims, keepdim=True)

    return run


def _reduce(kind: str):
    def run(s: _Step, x, axes=None):
        ax = _ints(axes) if axes is not None else s.get("axes")
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


def _reshape(s: _Step, x, shape):
    dims = _ints(shape)
    if not s.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(s: _Step, x):
    axis = s.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _transpose(s: _Step, x):
    perm = s.get("perm") or list(range(x.dim()))[::-1]
    return x.permute(perm)


def _concat(s: _Step, *xs):
    return torch.cat(xs, dim=s.get("axis"))


def _split(s: _Step, x, split=None):
    axis = s.get("axis", 0)
    sizes = _ints(split) if split is not None else s.get("split")
    if sizes:
        return torch.split(x, sizes, dim=axis)
    parts = s.get("num_outputs", len(s.outputs))
    return torch.split(x, -(-x.shape[axis] // parts), dim=axis)


def _slice(s: _Step, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        st, en, ax = s.get("starts"), s.get("ends"), s.get("axes")
        sp = None
    else:
        st, en, ax, sp = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
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


def _squeeze(s: _Step, x, axes=None):
    ax = _ints(axes) if axes is not None else s.get("axes")
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in ax))


def _unsqueeze(s: _Step, x, axes=None):
    ax = _ints(axes) if axes is not None else s.get("axes")
    rank = x.dim() + len(ax)
    for a in sorted(a % rank for a in ax):
        x = x.unsqueeze(a)
    return x


def _gather(s: _Step, x, idx):
    axis = s.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


def _shape(s: _Step, x):
    dims = list(x.shape)[s.get("start", 0) : s.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def _cast(s: _Step, x):
    return x.to(_torch_dtype(s.get("to")))


def _constant_of_shape(s: _Step, shape):
    value = s.get("value")
    if value is None:
        return torch.zeros(_ints(shape), dtype=torch.float32)
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _expand(s: _Step, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _range(s: _Step, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _pad(s: _Step, x, pads=None, value=None, axes=None):
    mode = s.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    p = _ints(pads) if pads is not None else s.get("pads")
    ax = [a % x.dim() for a in _ints(axes)] if axes is not None else list(range(x.dim()))
    n = len(ax)
    per_dim = {a: (p[i], p[i + n]) for i, a in enumerate(ax)}
    first = min((a for a, v in per_dim.items() if v != (0, 0)), default=x.dim())
    tp = [v for a in range(x.dim() - 1, first - 1, -1) for v in per_dim.get(a, (0, 0))]
    if not tp:
        return x
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise _Unsupported(f"mode={mode}")
    if torch_mode == "constant":
        fill = value.reshape(-1)[0].item() if value is not None and value.numel() else 0.0
        return F.pad(x, tp, value=fill)
    return F.pad(x, tp, mode=torch_mode)


def _unary(fn_name: str):
    def run(s: _Step, x):
        return getattr(torch, fn_name)(x)

    return run


def _binary(fn_name: str):
    def run(s: _Step, a, b):
        return getattr(torch, fn_name)(a, b)

    return run


def _variadic(fn_name: str):
    def run(s: _Step, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = getattr(torch, fn_name)(out, x)
        return out

    return run


def _leaky_relu(s: _Step, x):
    return F.leaky_relu(x, s.get("alpha", 0.01))


def _hard_sigmoid(s: _Step, x):
    return (x * s.get("alpha", 0.2) + s.get("beta", 0.5)).clamp(0.0, 1.0)


def _hard_swish(s: _Step, x):
    return F.hardswish(x)


def _gelu(s: _Step, x):
    approx = s.get("approximate", "none")
    return F.gelu(x, approximate=approx.decode() if isinstance(approx, bytes) else approx)


def _elu(s: _Step, x):
    return F.elu(x, s.get("alpha", 1.0))


def _softplus(s: _Step, x):
    return F.softplus(x)


def _pow(s: _Step, a, b):
    return torch.pow(a, b).to(a.dtype)


def _where(s: _Step, c, a, b):
    return torch.where(c, a, b)


def _tile(s: _Step, x, reps):
    return x.repeat(_ints(reps))


def _arg(kind: str):
    def run(s: _Step, x):
        if s.get("select_last_index", 0):
            raise _Unsupported("select_last_index=1")
        fn = torch.argmax if kind == "max" else torch.argmin
        return fn(x, dim=s.get("axis", 0), keepdim=bool(s.get("keepdims", 1)))

    return run


def _einsum(s: _Step, *xs):
    eq = s.get("equation")
    return torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *xs)


def _identity(s: _Step, x, *_: Any):
    return x


def _dropout(s: _Step, x, *_: Any):
    if s.needed > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _bin(op: Callable[[Any, Any], Any]):
    return lambda s, a, b: op(a, b)


def _matmul(s: _Step, a, b):
    return torch.matmul(a, b)


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _bin(lambda a, b: a + b),
    "Sub": _bin(lambda a, b: a - b),
    "Mul": _bin(lambda a, b: a * b),
    "Div": _div,
    "Pow": _pow,
    "Sqrt": _unary("sqrt"),
    "Reciprocal": _unary("reciprocal"),
    "Neg": _unary("neg"),
    "Abs": _unary("abs"),
    "Exp": _unary("exp"),
    "Log": _unary("log"),
    "Sin": _unary("sin"),
    "Cos": _unary("cos"),
    "Floor": _unary("floor"),
    "Ceil": _unary("ceil"),
    "Round": _unary("round"),  # both round half to even
    "Sign": _unary("sign"),
    "Erf": _unary("erf"),
    "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "Not": _unary("logical_not"),
    "LeakyRelu": _leaky_relu,
    "Elu": _elu,
    "Softplus": _softplus,
    "Clip": _clip,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Gelu": _gelu,
    "Softmax": _softmax_like("softmax"),
    "LogSoftmax": _softmax_like("log_softmax"),
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_pool("mean"),
    "GlobalMaxPool": _global_pool("max"),
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
    "Dropout": _dropout,
    "Range": _range,
}

_DOMAINS = ("", "ai.onnx")
_TRAINABLE_DTYPES = ("FLOAT", "DOUBLE")  # Adam on fp16 weights loses the updates


def _constant_node_value(node: Any) -> np.ndarray:
    attrs = node.attributes
    if "value" in attrs:
        return attrs["value"].value.numpy()
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key].value, dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key].value), dtype)
    raise _Unsupported("Constant without a numeric value")


class OnnxModule(torch.nn.Module):
    """An ``onnx_ir.Model`` executed with torch ops, its weights as trainable parameters.

    Float initializers of more than one element that feed a weight slot of Conv, Gemm, MatMul,
    Add, Mul, BatchNormalization (scale, bias) or LayerNormalization become ``nn.Parameter``s;
    every other constant (initializers, ``Constant`` nodes) is a buffer. ONNX names may hold
    dots and slashes, which torch refuses as attribute names, so parameters are stored under
    ``p0, p1, ...`` and ``param_names`` maps ONNX initializer name to that key.

    Raises:
        PassError: the graph holds an op the interpreter does not implement, a quantization
            op (distil before quantizing) or an op from a non-standard domain.
    """

    def __init__(self, model: ir.Model) -> None:
        super().__init__()
        graph = model.graph
        self.opset = int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self.params = torch.nn.ParameterDict()
        self.param_names: dict[str, str] = {}
        self._buffer_names: dict[str, str] = {}

        trainable: set[str] = set()
        for node in graph:
            for slot in TRAINABLE_SLOTS.get(node.op_type, ()) if node.domain in _DOMAINS else ():
                v = node.inputs[slot] if slot < len(node.inputs) else None
                init = graph.initializers.get(v.name) if v is not None else None
                if init is None or init.const_value is None:
                    continue
                t = init.const_value
                if t.dtype.name in _TRAINABLE_DTYPES and math.prod(t.shape.numpy()) > 1:
                    trainable.add(init.name)
        for name, init in graph.initializers.items():
            if init.const_value is None:
                continue
            array = init.const_value.numpy()
            if name in trainable:
                key = f"p{len(self.param_names)}"
                self.params[key] = torch.nn.Parameter(_to_torch(array))
                self.param_names[name] = key
            else:
                self._add_buffer(name, array)

        self._steps: list[_Step] = []
        for i, node in enumerate(graph):
            label = node.name or f"#{i}"
            op = node.op_type if node.domain in _DOMAINS else f"{node.domain}::{node.op_type}"
            if node.op_type in QUANT_OPS:
                raise PassError(
                    f"distillation cannot train this model: ONNX op {op!r} (node {label}) is a "
                    "quantization op; distil before quantizing, or drop --distill"
                )
            try:
                if node.domain in _DOMAINS and node.op_type == "Constant":
                    self._add_buffer(node.outputs[0].name, _constant_node_value(node))
                    continue
                fn = _OPS.get(node.op_type) if node.domain in _DOMAINS else None
                if fn is None:
                    raise _Unsupported(op)
                attrs = {k: _attr_value(a) for k, a in node.attributes.items()}
            except _Unsupported:
                raise _unsupported(op, label) from None
            ins = tuple(v.name if v is not None else None for v in node.inputs)
            outs = tuple(v.name or "" for v in node.outputs)
            used = [k for k, v in enumerate(node.outputs) if v.uses() or v.is_graph_output()]
            needed = max(used, default=-1) + 1
            self._steps.append(_Step(op, label, fn, ins, outs, attrs, self.opset, needed))

        # Drop each intermediate after its last use (keeps teacher passes lean).
        last: dict[str, int] = {}
        for i, st in enumerate(self._steps):
            for name in st.inputs:
                if name:
                    last[name] = i
        keep = set(self.output_names)
        self._free: list[list[str]] = [[] for _ in self._steps]
        for name, i in last.items():
            if name not in keep and name not in self.param_names:
                self._free[i].append(name)

    def _add_buffer(self, onnx_name: str, array: np.ndarray) -> None:
        key = f"c{len(self._buffer_names)}"
        self.register_buffer(key, _to_torch(array), persistent=False)
        self._buffer_names[onnx_name] = key

    def named_onnx_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters keyed by ONNX initializer name."""
        return {name: self.params[key] for name, key in self.param_names.items()}

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the graph on named input tensors; returns the outputs by name."""
        env: dict[str, Any] = {n: getattr(self, k) for n, k in self._buffer_names.items()}
        env.update({n: self.params[k] for n, k in self.param_names.items()})
        for name in self.input_names:
            if name not in inputs:
                raise InputError(f"input {name!r} is missing; the model takes {self.input_names}")
            env[name] = inputs[name]
        for st, free in zip(self._steps, self._free, strict=True):
            args = [env[n] if n else None for n in st.inputs]
            while args and args[-1] is None:  # trailing optional inputs left out
                args.pop()
            try:
                result = st.fn(st, *args)
            except _Unsupported as exc:
                raise _unsupported(f"{st.op} ({exc})", st.label) from None
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise PassError(
                    f"distillation cannot train this model: ONNX op {st.op!r} (node {st.label}) "
                    f"failed in robopt's trainer ({type(exc).__name__}: {str(exc)[:160]}); "
                    "drop --distill or report it"
                ) from exc
            if not isinstance(result, (tuple, list)):
                result = (result,)
            if len(result) < st.needed:
                raise _unsupported(f"{st.op} (output {st.needed - 1})", st.label)
            for name, value in zip(st.outputs, result, strict=False):
                if name:
                    env[name] = value
            for name in free:
                env.pop(name, None)
        return {name: env[name] for name in self.output_names}


# ----------------------------------------------------------------------------------------------
# Training.


@dataclass(frozen=True)
class DistillResult:
    """The student with trained weights (a new model) and what the training did."""

    model: ir.Model
    report: dict[str, Any]


class _OrtRunner:
    """One ONNX Runtime session for the teacher, kept across steps.

    ORT, not the interpreter under ``no_grad``: on visuomotor-cnn at 1 thread a teacher batch of
    8 took 0.20 s in ORT vs 0.41 s in the interpreter (batch-1 export, 8 runs) and 0.27 s vs
    0.38 s (dynamic-batch export, one run). It also lets the teacher hold ops the trainer lacks.
    """

    def __init__(self, model: ir.Model, threads: int | None) -> None:
        import onnxruntime as ort

        from robopt_compile import ir as rir

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Through a file: handles weights past protobuf's 2 GiB and external tensors alike.
        with tempfile.TemporaryDirectory(prefix="robopt-distill-") as tmp:
            path = Path(tmp) / "teacher.onnx"
            rir.save(model, path)
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))


def _batch_dim_symbolic(model: ir.Model) -> bool:
    graph = model.graph
    for v in graph.inputs:
        if v.name in graph.initializers:
            continue
        if v.shape is None or len(v.shape) == 0 or isinstance(v.shape[0], int):
            return False
    return True


def _stack(samples: Sequence[Sample], names: Sequence[str]) -> Sample:
    return {n: np.concatenate([s[n] for s in samples], axis=0) for n in names}


def _same(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    for name, x in a.items():
        y = b[name]
        if np.shape(x) != np.shape(y):
            return False
        scale = float(np.max(np.abs(x))) if np.size(x) else 0.0
        if not np.allclose(x, y, rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
            return False
    return True


def _runs_batched(run: Callable[[Sample], dict[str, np.ndarray]], samples, names) -> bool:
    """Whether stacking samples along axis 0 gives the per-sample outputs stacked.

    A graph whose inputs say "dynamic batch" can still hard-code the batch in a Reshape; this
    catches both errors and silent mixing of samples.
    """
    if len(samples) < 2:
        return False
    pair = samples[:2]
    try:
        together = run(_stack(pair, names))
    except Exception:
        return False
    apart = [run(s) for s in pair]
    stacked = {k: np.concatenate([np.asarray(o[k]) for o in apart], axis=0) for k in together}
    return _same(stacked, together)


@dataclass(frozen=True)
class _Augment:
    """Mixup of random pairs plus gaussian noise; see ``distill``'s docstring."""

    float_names: tuple[str, ...]
    noise_std: dict[str, np.ndarray]

    def draw(self, samples: Sequence[Sample], rng: np.random.Generator) -> Sample:
        i, j = rng.integers(len(samples), size=2)
        lam = float(rng.random())
        out = {}
        for name, a in samples[i].items():
            b = samples[j][name]
            if name in self.float_names and a.shape == b.shape:
                mixed = lam * a + (1.0 - lam) * b
                noise = rng.standard_normal(a.shape).astype(a.dtype) * self.noise_std[name]
                out[name] = (mixed + noise).astype(a.dtype)
            else:  # ids, flags: take the dominant sample's value
                out[name] = a if lam >= 0.5 else b
        return out


def _make_augment(samples: Sequence[Sample], names: Sequence[str]) -> _Augment:
    floats, noise = [], {}
    for n in names:
        first = samples[0][n]
        if first.dtype.kind != "f":
            continue
        floats.append(n)
        same_shape = all(s[n].shape == first.shape for s in samples)
        if same_shape and len(samples) > 1:
            spread = np.stack([s[n] for s in samples]).std(axis=0)
        else:
            spread = np.full(first.shape, np.concatenate([s[n].ravel() for s in samples]).std())
        noise[n] = (NOISE_SCALE * spread).astype(first.dtype)
    return _Augment(tuple(floats), noise)


def _loss_fn(kind: str, norm: Mapping[str, float]):
    def loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]):
        terms = []
        for name, t in teacher.items():
            s = student[name]
            if kind == "mse":
                terms.append(torch.mean((s - t) ** 2) / norm[name])
            else:
                logp = torch.log_softmax(s, dim=-1)
                logq = torch.log_softmax(t, dim=-1)
                kl = (logq.exp() * (logq - logp)).sum(-1)
                terms.append(kl.mean())
        return torch.stack(terms).mean()

    return loss


def _check_trainer(
    student: ir.Model,
    run: Callable[[Sample], dict[str, np.ndarray]],
    sample: Sample,
    threads: int | None,
) -> dict[str, np.ndarray]:
    """ONNX Runtime's student outputs on ``sample``, after checking the trainer reproduces
    them: a trainer bug must never silently train the wrong graph."""
    from robopt_compile.numerics import compare, run_onnx

    ref = run_onnx(student, sample, threads)
    fig = compare(ref, run(sample))
    bad = {k: c for k, c in fig.items() if not c["cosine"] >= PARITY_COSINE_MIN}
    if bad:
        name, c = next(iter(bad.items()))
        raise PassError(
            f"distillation: robopt's trainer does not reproduce the student on output "
            f"{name!r} (cosine {c['cosine']:.6f} < {PARITY_COSINE_MIN}, max abs "
            f"{c['max_abs']:.3g} vs ONNX Runtime); drop --distill and report it"
        )
    return ref


def _write_back(student: ir.Model, module: OnnxModule) -> ir.Model:
    """A deep copy of ``student`` holding the module's trained weights, same dtypes and shapes."""
    from robopt_compile import ir as rir

    out = rir.from_proto(rir.to_proto(student))
    for name, param in module.named_onnx_parameters().items():
        init = out.graph.initializers[name]
        old = init.const_value
        array = param.detach().numpy().astype(old.dtype.numpy(), copy=True)
        init.const_value = ir.tensor(array.reshape(old.shape.numpy()), name=name)
    return out


def distill(
    student: ir.Model,
    teacher: ir.Model,
    inputs: Sequence[Sample],
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 8,
    loss: str = "mse",
    augment: bool = True,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> DistillResult:
    """Fine-tune the student graph's weights so its outputs match the teacher's on ``inputs``.

    Why augment: calibration data is a few tens of unlabeled samples, and fitting the teacher on
    exactly those overfits within a few hundred steps (the student learns the samples, not the
    function). The teacher labels any input for free, so each training sample is a mixup of a
    random pair (lambda ~ U(0, 1)) plus gaussian noise of ``NOISE_SCALE`` times each input
    element's spread over the data: new points inside the data's hull that keep the student
    matching the teacher *between* the calibration samples, where the robot's inputs will be.
    Integer and bool inputs are not mixed; a sample takes the dominant side's value.

    Args:
        student: the pruned/factorised model; left unchanged.
        teacher: the source model whose outputs are the targets (run in ONNX Runtime).
        inputs: unlabeled samples, each a dict of the model's inputs at its exported batch.
        steps: optimizer steps (Adam, cosine decay of ``lr`` to 0).
        lr: peak learning rate; the table above ``_Unsupported`` shows how 1e-4 was picked.
        batch_size: samples per step.
        loss: ``mse``, each output's squared error over the teacher output's variance on the
            data (outputs of different scales weigh equally), or ``kl``, softmax KL on the last
            axis (logits, discrete actions).
        augment: mixup + noise as above; without it, batches cycle through ``inputs``.
        seed: the same seed gives the same weights.
        threads: torch and ONNX Runtime threads (restored after); None keeps the defaults.
        progress: called as ``progress(step, steps, loss)`` every few steps and at the end.

    Returns:
        The trained copy and a report; its ``initial_loss``/``final_loss`` are the loss on the
        given samples (not augmented) before and after training.

    Raises:
        InputError: bad arguments or inputs that do not fit the model.
        PassError: an op the trainer cannot run, or the trainer disagrees with ONNX Runtime.
    """
    if steps < 1:
        raise InputError(f"distillation steps must be >= 1, not {steps}")
    if batch_size < 1:
        raise InputError(f"distillation batch size must be >= 1, not {batch_size}")
    if loss not in ("mse", "kl"):
        raise InputError(f"distillation loss must be 'mse' or 'kl', not {loss!r}")
    if not inputs:
        raise InputError("distillation needs at least one input sample (calibration data)")

    module = OnnxModule(student)
    names = module.input_names
    samples = []
    for k, s in enumerate(inputs):
        missing = [n for n in names if n not in s]
        if missing:
            raise InputError(f"distillation sample {k} lacks input(s) {missing}; it has {list(s)}")
        samples.append({n: np.asarray(s[n]) for n in names})

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t_runner = _OrtRunner(teacher, threads)
        missing_out = [o for o in module.output_names if o not in t_runner.output_names]
        if missing_out:
            raise PassError(
                f"distillation: student output(s) {missing_out} are not outputs of the teacher "
                f"({t_runner.output_names}); the student must keep the source's output names"
            )
        for n in t_runner.input_names:
            if n not in samples[0]:
                raise InputError(f"the teacher takes input {n!r}, which the samples lack")
        t_samples = [{**s, **{n: np.asarray(inputs[k][n]) for n in t_runner.input_names}}
                     for k, s in enumerate(samples)]  # fmt: skip

        def student_np(feeds: Sample) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = module(**{n: torch.from_numpy(feeds[n]) for n in names})
            return {k: v.numpy() for k, v in out.items()}

        ref = _check_trainer(student, student_np, samples[0], threads)
        float_out = [o for o in module.output_names if np.asarray(ref[o]).dtype.kind == "f"]
        if not float_out:
            raise PassError("distillation needs a float output to match; this model has none")
        t_all = [t_runner(s) for s in t_samples]
        norm = {}
        for o in float_out:
            var = float(np.concatenate([np.ravel(t[o]) for t in t_all]).astype(np.float64).var())
            norm[o] = var if var > 1e-12 else 1.0
        # Samples stack along axis 0 only where both graphs take it and give the same answer.
        all_names = sorted(set(names) | set(t_runner.input_names))
        batched = (
            _batch_dim_symbolic(student)
            and _batch_dim_symbolic(teacher)
            and _runs_batched(student_np, samples, names)
            and _runs_batched(t_runner, t_samples, t_runner.input_names)
        )
        aug = _make_augment(t_samples, all_names) if augment else None
        rng = np.random.default_rng(seed)
        order: list[int] = []

        def next_batch() -> list[Sample]:
            if aug is not None:
                return [aug.draw(t_samples, rng) for _ in range(batch_size)]
            out = []
            for _ in range(batch_size):
                if not order:
                    order.extend(rng.permutation(len(t_samples)).tolist())
                out.append(t_samples[order.pop()])
            return out

        def chunks(batch: list[Sample]) -> list[Sample]:
            return [_stack(batch, all_names)] if batched else batch

        loss_of = _loss_fn(loss, norm)

        def to_t(d: Mapping[str, np.ndarray], keys: Sequence[str]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(d[k])) for k in keys}

        def data_loss() -> float:
            with torch.no_grad():
                vals = [
                    float(loss_of(module(**to_t(s, names)), to_t(t, float_out)))
                    for s, t in zip(samples, t_all, strict=True)
                ]
            return float(np.mean(vals))

        params = list(module.params.values())
        n_params = sum(p.numel() for p in params)
        initial = data_loss()
        start = time.perf_counter()
        last = float("nan")
        if params:
            opt = torch.optim.Adam(params, lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            for step in range(1, steps + 1):
                parts = chunks(next_batch())
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for part in parts:
                    target = to_t(t_runner(part), float_out)
                    value = loss_of(module(**to_t(part, names)), target) / len(parts)
                    value.backward()
                    total += float(value.detach())
                opt.step()
                sched.step()
                last = total
                if progress is not None and (step % _LOG_EVERY == 0 or step == steps):
                    progress(step, steps, total)
        seconds = time.perf_counter() - start
        final = data_loss()
    finally:
        torch.set_num_threads(old_threads)

    report = {
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_second": round(steps / seconds, 3) if seconds > 0 else None,
        "lr": lr,
        "batch_size": batch_size,
        "batched": batched,
        "loss": loss,
        "initial_loss": initial,
        "final_loss": final,
        "last_batch_loss": last,
        "normalisation": {o: norm[o] for o in float_out} if loss == "mse" else None,
        "augment": (
            f"mixup of random sample pairs (lambda ~ U(0,1)) + gaussian noise "
            f"{NOISE_SCALE} x per-element std of float inputs"
            if augment
            else "none: batches cycle through the samples"
        ),
        "samples": len(samples),
        "teacher_runtime": "onnxruntime",
        "trainable_parameters": n_params,
        "trainable_tensors": len(params),
        "seed": seed,
    }
    return DistillResult(_write_back(student, module), report)
