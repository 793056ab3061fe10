"""Torch kernels of the ONNX layer ops: convolution, Gemm/MatMul, activations, softmax,
normalisation, pooling.

Each kernel follows the op's ONNX definition at the node's opset (``Step.opset``), including
the padding rules (``auto_pad``, asymmetric pads) torch does not take directly. The interpreter
checks every model against ONNX Runtime before training, so a kernel that drifts from the spec
is caught there, not in the trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from robopt_compile.distill.kernel import Step, Unsupported, spatial_pads, torch_pad, unary


def _conv(s: Step, x, w, b=None):
    n = w.dim() - 2
    kernel = s.get("kernel_shape") or list(w.shape[2:])
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    pads = spatial_pads(s, x, kernel, strides, dil)
    if all(lo == hi for lo, hi in pads):
        padding = [lo for lo, _ in pads]
    else:
        x, padding = F.pad(x, torch_pad(pads)), [0] * n
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return fn(x, w, b, strides, padding, dil, s.get("group", 1))


def _conv_transpose(s: Step, x, w, b=None):
    n = w.dim() - 2
    if s.get("output_shape") or s.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise Unsupported("output_shape/auto_pad")
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    outpad = s.get("output_padding") or [0] * n
    p = s.get("pads") or [0] * (2 * n)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(x, w, b, strides, 0, outpad, s.get("group", 1), dil)
    idx = [slice(None), slice(None)] + [slice(p[i], y.shape[2 + i] - p[i + n]) for i in range(n)]
    return y[tuple(idx)]


def _gemm(s: Step, a, b, c=None):
    if s.get("transA", 0):
        a = a.t()
    if s.get("transB", 0):
        b = b.t()
    alpha, beta = s.get("alpha", 1.0), s.get("beta", 1.0)
    if c is None:
        y = a @ b
        return y * alpha if alpha != 1.0 else y
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


def _matmul(s: Step, a, b):
    return torch.matmul(a, b)


def _clip(s: Step, x, lo=None, hi=None):
    if s.opset < 11:
        lo, hi = s.get("min"), s.get("max")
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


def _softmax_like(fn_name: str):
    def run(s: Step, x):
        fn = getattr(F, fn_name)
        if s.opset >= 13:
            return fn(x, dim=s.get("axis", -1))
        # Before opset 13 the op works on the input flattened to 2D at ``axis``.
        axis = s.get("axis", 1) % max(x.dim(), 1)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


def _leaky_relu(s: Step, x):
    return F.leaky_relu(x, s.get("alpha", 0.01))


def _hard_sigmoid(s: Step, x):
    return (x * s.get("alpha", 0.2) + s.get("beta", 0.5)).clamp(0.0, 1.0)


def _hard_swish(s: Step, x):
    return F.hardswish(x)


def _gelu(s: Step, x):
    approx = s.get("approximate", "none")
    return F.gelu(x, approximate=approx.decode() if isinstance(approx, bytes) else approx)


def _elu(s: Step, x):
    return F.elu(x, s.get("alpha", 1.0))


def _softplus(s: Step, x):
    return F.softplus(x)


def _layer_norm(s: Step, x, scale, bias=None):
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


def _batch_norm(s: Step, x, scale, bias, mean, var):
    if s.get("training_mode", 0):
        raise Unsupported("training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, s.get("epsilon", 1e-5))


def _instance_norm(s: Step, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=s.get("epsilon", 1e-5))


def _max_pool(s: Step, x):
    if s.needed > 1:
        raise Unsupported("Indices output")
    kernel = s.get("kernel_shape")
    n = len(kernel)
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    pads = spatial_pads(s, x, kernel, strides, dil)
    limit = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dil, strict=True)]
    if all(lo == hi and lo <= m for (lo, hi), m in zip(pads, limit, strict=True)):
        padding = [lo for lo, _ in pads]
    else:
        x, padding = F.pad(x, torch_pad(pads), value=float("-inf")), [0] * n
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return fn(x, kernel, strides, padding, dil, ceil_mode=bool(s.get("ceil_mode", 0)))


def _avg_pool(s: Step, x):
    kernel = s.get("kernel_shape")
    n = len(kernel)
    strides = s.get("strides") or [1] * n
    dil = s.get("dilations") or [1] * n
    if any(d != 1 for d in dil):
        raise Unsupported("dilations")
    pads = spatial_pads(s, x, kernel, strides, dil)
    ceil, include = bool(s.get("ceil_mode", 0)), bool(s.get("count_include_pad", 0))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    if all(lo == hi and lo <= k // 2 for (lo, hi), k in zip(pads, kernel, strict=True)):
        return fn(x, kernel, strides, [lo for lo, _ in pads], ceil, include)
    # Asymmetric padding: pool the zero-padded input, then divide by the valid-element share.
    xp = F.pad(x, torch_pad(pads))
    y = fn(xp, kernel, strides, 0, ceil, True)
    if include:
        return y
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pad(pads))
    return y / fn(ones, kernel, strides, 0, ceil, True)


def _global_pool(reduce: str):
    def run(s: Step, x):
        dims = tuple(range(2, x.dim()))
        return x.mean(dims, keepdim=True) if reduce == "mean" else x.amax(dims, keepdim=True)

    return run


def _dropout(s: Step, x, *_: Any):
    if s.needed > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


# ONNX op type -> kernel, for the standard domain.
NN_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Relu": unary("relu"),
    "Sigmoid": unary("sigmoid"),
    "Tanh": unary("tanh"),
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
    "Dropout": _dropout,
}
