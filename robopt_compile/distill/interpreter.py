"""The ONNX->torch interpreter: an ``onnx_ir`` graph run with torch ops, its float weights as
trainable parameters (``OnnxModule``).

Distillation trains the pruned graph itself rather than a re-export of it, so every graph check
that held before training still holds after. The kernels live in ``ops_nn`` and
``ops_tensor``; ``OPS`` is the one table the interpreter looks them up in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from robopt_compile.distill.kernel import (
    Step,
    Unsupported,
    attr_value,
    to_torch,
    unsupported_error,
)
from robopt_compile.distill.ops_nn import NN_OPS
from robopt_compile.distill.ops_tensor import TENSOR_OPS
from robopt_compile.errors import InputError, PassError

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


# ONNX op type -> torch kernel (standard domain only).
OPS: dict[str, Callable[..., Any]] = {**NN_OPS, **TENSOR_OPS}


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
    raise Unsupported("Constant without a numeric value")


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
                self.params[key] = torch.nn.Parameter(to_torch(array))
                self.param_names[name] = key
            else:
                self._add_buffer(name, array)

        self._steps: list[Step] = []
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
                fn = OPS.get(node.op_type) if node.domain in _DOMAINS else None
                if fn is None:
                    raise Unsupported(op)
                attrs = {k: attr_value(a) for k, a in node.attributes.items()}
            except Unsupported:
                raise unsupported_error(op, label) from None
            ins = tuple(v.name if v is not None else None for v in node.inputs)
            outs = tuple(v.name or "" for v in node.outputs)
            used = [k for k, v in enumerate(node.outputs) if v.uses() or v.is_graph_output()]
            needed = max(used, default=-1) + 1
            self._steps.append(Step(op, label, fn, ins, outs, attrs, self.opset, needed))

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
        self.register_buffer(key, to_torch(array), persistent=False)
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
            except Unsupported as exc:
                raise unsupported_error(f"{st.op} ({exc})", st.label) from None
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise PassError(
                    f"distillation cannot train this model: ONNX op {st.op!r} (node {st.label}) "
                    f"failed in robopt's trainer ({type(exc).__name__}: {str(exc)[:160]}); "
                    "drop --distill or report it"
                ) from exc
            if not isinstance(result, (tuple, list)):
                result = (result,)
            if len(result) < st.needed:
                raise unsupported_error(f"{st.op} (output {st.needed - 1})", st.label)
            for name, value in zip(st.outputs, result, strict=False):
                if name:
                    env[name] = value
            for name in free:
                env.pop(name, None)
        return {name: env[name] for name in self.output_names}
