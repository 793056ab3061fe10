"""MACs and FLOPs per node, from shapes inferred on a copy of the model with a fixed batch.

Counting conventions (so that numbers can be checked by hand):
    * a multiply-accumulate (MAC) is 2 FLOPs; a bias add is 1 FLOP per output element;
    * Conv: ``MACs = numel(Y) * prod(W.shape[1:])`` (covers groups and depthwise);
      ConvTranspose: ``MACs = numel(X) * prod(W.shape[1:])``;
    * MatMul: ``MACs = prod(broadcast batch dims) * M * K * N``; Gemm: ``M * K * N``;
    * attention ops: QK^T and AV contractions (plus the QKV projection for com.microsoft
      Attention) as MACs, and the softmax at 5 FLOPs per score;
    * elementwise ops: 1 FLOP per output element; norms a fixed FLOPs per element
      (``NORM_FLOPS_PER_ELEMENT``); pooling ``numel(Y) * prod(kernel)``; reductions ``numel(X)``;
    * data movement (Transpose, Concat, Gather, ...) 0 FLOPs; views (Reshape, Squeeze, ...)
      are ``metadata_only`` and move no bytes in a runtime.

A node whose shapes cannot be determined, or whose op has no formula here, is reported as
unknown with the reason; it is never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from robopt_compile.passes.analysis.op_histogram import norm_domain, op_key
from robopt_compile.passes.analysis.params import is_weight
from robopt_compile.passes.analysis.shapes import StaticShapes, infer_static_shapes
from robopt_compile.passes.base import AnalysisPass

SOFTMAX_FLOPS_PER_ELEMENT = 5  # max, subtract, exp, sum, divide
NORM_FLOPS_PER_ELEMENT = {
    # Inference BatchNorm folds into one scale and one shift per element.
    "BatchNormalization": 2,
    # mean, centre, square, variance sum, scale by 1/std, gamma, beta.
    "LayerNormalization": 7,
    "InstanceNormalization": 7,
    "GroupNormalization": 7,
    "MeanVarianceNormalization": 5,
    # square, sum, scale by 1/rms, gamma.
    "RMSNormalization": 4,
    "SimplifiedLayerNormalization": 4,
    # the residual add (and bias) before the norm.
    "SkipLayerNormalization": 9,
    "SkipSimplifiedLayerNormalization": 6,
    "LpNormalization": 3,
}
# fmt: off
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Relu",
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus",
    "Softsign", "HardSwish", "Mish", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Sin",
    "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor",
    "Ceil", "Round", "Sign", "Clip", "Where", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "Mod", "BitShift", "IsNaN", "IsInf",
    "ThresholdedRelu", "Shrink", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BiasAdd",
    "Swish",
})
VARIADIC_ELEMENTWISE = frozenset({
    "Sum", "Max", "Min", "Mean",
})
REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum", "TopK",
    "Hardmax", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
})
DATA_MOVEMENT = frozenset({
    "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Scatter",
    "ScatterND", "ScatterElements", "Expand", "Tile", "Pad", "Cast", "CastLike", "ConstantOfShape",
    "Range", "Trilu", "DepthToSpace", "SpaceToDepth", "OneHot", "NonZero", "EyeLike",
    "ReverseSequence", "Compress",
})
# Views: runtimes alias the input buffer, so they cost no time and no bytes.
METADATA_ONLY = frozenset({
    "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Dropout",
    "Constant",
})
# fmt: on
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_KNOWN_DOMAINS = ("", "com.microsoft")


class _Unknown(Exception):
    """Raised inside a formula when the node's cost cannot be determined."""


@dataclass(frozen=True, slots=True)
class NodeCost:
    """Cost of one node; ``flops is None`` means unknown and ``reason`` says why."""

    name: str
    op_type: str
    domain: str
    macs: int | None
    flops: int | None
    input_bytes: int | None
    weight_bytes: int | None
    output_bytes: int | None
    metadata_only: bool = False
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.flops is not None and self.bytes_moved is not None

    @property
    def bytes_moved(self) -> int | None:
        """Activation inputs + weights + outputs; 0 for views, None when a size is unknown."""
        if self.metadata_only:
            return 0
        parts = (self.input_bytes, self.weight_bytes, self.output_bytes)
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "macs": self.macs,
            "flops": self.flops,
            "input_bytes": self.input_bytes,
            "weight_bytes": self.weight_bytes,
            "output_bytes": self.output_bytes,
            "metadata_only": self.metadata_only,
            "known": self.known,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


class _Shapes:
    """Shape lookups for one node that raise ``_Unknown`` instead of returning None."""

    def __init__(self, shapes: StaticShapes) -> None:
        self.shapes = shapes

    def shape(self, value: ir.Value | None) -> tuple[int, ...]:
        if value is None:
            raise _Unknown("a required input is missing")
        shape = self.shapes.of(value).shape
        if shape is None:
            raise _Unknown(f"shape of {value.name!r} unknown after shape inference")
        return shape

    def numel(self, value: ir.Value | None) -> int:
        return math.prod(self.shape(value))


Formula = Callable[[ir.Node, _Shapes], tuple[int, int]]


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    pa, pb = (1,) * (len(b) - len(a)) + a, (1,) * (len(a) - len(b)) + b
    for x, y in zip(reversed(pa), reversed(pb), strict=True):
        if x != y and 1 not in (x, y):
            raise _Unknown(f"batch dims {a} and {b} do not broadcast")
        out.append(max(x, y))
    return tuple(reversed(out))


def matmul_macs(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """MACs of ``numpy.matmul(a, b)``: 1-D operands are promoted, batch dims broadcast."""
    if not a or not b:
        raise _Unknown("MatMul on a scalar")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _Unknown(f"inner dims differ: {a} @ {b}")
    return math.prod(_broadcast(a2[:-2], b2[:-2])) * a2[-2] * a2[-1] * b2[-1]


def _bias(node: ir.Node, s: _Shapes, index: int) -> int:
    return s.numel(node.outputs[0]) if _input(node, index) is not None else 0


def _conv(weight: int, bias: int | None) -> Formula:
    def cost(node: ir.Node, s: _Shapes) -> tuple[int, int]:
        w = s.shape(node.inputs[weight])
        macs = s.numel(node.outputs[0]) * math.prod(w[1:])
        return macs, 2 * macs + (_bias(node, s, bias) if bias is not None else 0)

    return cost


def _conv_transpose(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    w = s.shape(node.inputs[1])
    macs = s.numel(node.inputs[0]) * math.prod(w[1:])
    return macs, 2 * macs + _bias(node, s, 2)


def _gemm(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    a, b = s.shape(node.inputs[0]), s.shape(node.inputs[1])
    if len(a) != 2 or len(b) != 2:
        raise _Unknown(f"Gemm needs 2-D inputs, got {a} and {b}")
    m, k = (a[1], a[0]) if node.attributes.get_int("transA", 0) else a
    kb, n = (b[1], b[0]) if node.attributes.get_int("transB", 0) else b
    if k != kb:
        raise _Unknown(f"inner dims differ: {a} and {b}")
    macs = m * k * n
    return macs, 2 * macs + (m * n if _input(node, 2) is not None else 0)


def _matmul(a_index: int, b_index: int) -> Formula:
    def cost(node: ir.Node, s: _Shapes) -> tuple[int, int]:
        a, b = s.shape(node.inputs[a_index]), s.shape(node.inputs[b_index])
        if node.attributes.get_int("transA", 0) and len(a) >= 2:
            a = (*a[:-2], a[-1], a[-2])
        if node.attributes.get_int("transB", 0) and len(b) >= 2:
            b = (*b[:-2], b[-1], b[-2])
        macs = matmul_macs(a, b)
        return macs, 2 * macs

    return cost


def _matmul_nbits(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    a = s.shape(node.inputs[0])
    k, n = node.attributes.get_int("K", 0), node.attributes.get_int("N", 0)
    if not k or not n:
        raise _Unknown("MatMulNBits without K/N attributes")
    macs = math.prod(a[:-1]) * k * n
    return macs, 2 * macs + _bias(node, s, 5)


def _einsum(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    equation = (node.attributes.get_string("equation", "") or "").replace(" ", "")
    lhs = equation.partition("->")[0]
    terms = lhs.split(",")
    if "." in equation or len(terms) != len(node.inputs):
        raise _Unknown(f"Einsum equation {equation!r} not handled (ellipsis or arity)")
    sizes: dict[str, int] = {}
    for term, value in zip(terms, node.inputs, strict=True):
        shape = s.shape(value)
        if len(term) != len(shape):
            raise _Unknown(f"Einsum term {term!r} does not match shape {shape}")
        for letter, dim in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    if len(terms) == 1:
        return 0, s.numel(node.inputs[0])
    # Naive contraction: every combination of indices, once per extra operand.
    macs = math.prod(sizes.values()) * (len(terms) - 1)
    return macs, 2 * macs


def _ms_attention(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    x, w = s.shape(node.inputs[0]), s.shape(node.inputs[1])
    if len(x) != 3 or len(w) != 2:
        raise _Unknown(f"Attention input {x} / weights {w} not in [B,S,H] / [H,3H] form")
    batch, seq, hidden = x
    heads = node.attributes.get_int("num_heads", 0)
    if not heads:
        raise _Unknown("Attention without num_heads")
    sizes = node.attributes.get_ints("qkv_hidden_sizes", None) or [w[1] // 3] * 3
    past = _input(node, 4)
    total = seq + (s.shape(past)[3] if past is not None else 0)
    proj = batch * seq * hidden * w[1]
    macs = proj + batch * seq * total * (sizes[0] + sizes[2])
    scores = batch * heads * seq * total
    bias = batch * seq * w[1] if _input(node, 2) is not None else 0
    return macs, 2 * macs + bias + SOFTMAX_FLOPS_PER_ELEMENT * scores


def _ms_multihead_attention(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    q, k, v = (s.shape(_input(node, i)) for i in range(3))
    if not (len(q) == len(k) == len(v) == 3):
        raise _Unknown("MultiHeadAttention with packed or 4-D K/V not handled")
    heads = node.attributes.get_int("num_heads", 0) or 1
    batch, seq, d = q
    total = k[1]
    macs = batch * seq * total * (d + v[2])
    return macs, 2 * macs + SOFTMAX_FLOPS_PER_ELEMENT * batch * heads * seq * total


def _onnx_attention(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    q, k, v = (s.shape(_input(node, i)) for i in range(3))
    if len(q) == 4:
        batch, heads, seq, head_q = q
        total, head_v = k[2], v[3]
    elif len(q) == 3:
        heads = node.attributes.get_int("q_num_heads", 0)
        kv_heads = node.attributes.get_int("kv_num_heads", 0)
        if not heads or not kv_heads:
            raise _Unknown("3-D Attention without q_num_heads/kv_num_heads")
        batch, seq, q_hidden = q
        head_q, total, head_v = q_hidden // heads, k[1], v[2] // kv_heads
    else:
        raise _Unknown(f"Attention query of rank {len(q)}")
    past = _input(node, 4)
    if past is not None:
        total += s.shape(past)[2]
    macs = batch * heads * seq * total * (head_q + head_v)
    return macs, 2 * macs + SOFTMAX_FLOPS_PER_ELEMENT * batch * heads * seq * total


def _pool(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    kernel = node.attributes.get_ints("kernel_shape", None)
    if not kernel:
        raise _Unknown("pooling without kernel_shape")
    return 0, s.numel(node.outputs[0]) * math.prod(kernel)


def _resize(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    mode = node.attributes.get_string("mode", "nearest")
    x, y = s.shape(node.inputs[0]), s.shape(node.outputs[0])
    if mode == "nearest":
        return 0, 0
    resized = sum(1 for a, b in zip(x, y, strict=False) if a != b)
    taps = (2 if mode == "linear" else 4) ** resized
    return 0, s.numel(node.outputs[0]) * 2 * taps  # a multiply and an add per tap


def _per_element(flops_per: int, of_input: bool = False) -> Formula:
    def cost(node: ir.Node, s: _Shapes) -> tuple[int, int]:
        value = node.inputs[0] if of_input else node.outputs[0]
        return 0, flops_per * s.numel(value)

    return cost


def _variadic(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    return 0, max(1, len(node.inputs) - 1) * s.numel(node.outputs[0])


def _zero(node: ir.Node, s: _Shapes) -> tuple[int, int]:
    return 0, 0


# (domain, op_type) -> formula. One table; ops not here are reported as unknown.
FORMULAS: dict[tuple[str, str], Formula] = {
    ("", "Conv"): _conv(1, 2),
    ("", "ConvInteger"): _conv(1, None),
    ("", "QLinearConv"): _conv(3, 8),
    ("com.microsoft", "FusedConv"): _conv(1, 2),
    ("com.microsoft", "NhwcConv"): _conv(1, 2),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "Gemm"): _gemm,
    ("", "MatMul"): _matmul(0, 1),
    ("", "MatMulInteger"): _matmul(0, 1),
    ("", "QLinearMatMul"): _matmul(0, 3),
    ("com.microsoft", "FusedMatMul"): _matmul(0, 1),
    ("com.microsoft", "DynamicQuantizeMatMul"): _matmul(0, 1),
    ("com.microsoft", "MatMulIntegerToFloat"): _matmul(0, 1),
    ("com.microsoft", "MatMulNBits"): _matmul_nbits,
    ("", "Einsum"): _einsum,
    ("com.microsoft", "Attention"): _ms_attention,
    ("com.microsoft", "MultiHeadAttention"): _ms_multihead_attention,
    ("", "Attention"): _onnx_attention,
    ("", "Softmax"): _per_element(SOFTMAX_FLOPS_PER_ELEMENT),
    ("", "LogSoftmax"): _per_element(SOFTMAX_FLOPS_PER_ELEMENT),
    ("", "MaxPool"): _pool,
    ("", "AveragePool"): _pool,
    ("", "LpPool"): _pool,
    ("", "Resize"): _resize,
    ("", "Upsample"): _resize,
    ("", "QuantizeLinear"): _per_element(2, of_input=True),
    ("", "DequantizeLinear"): _per_element(2, of_input=True),
    ("", "DynamicQuantizeLinear"): _per_element(4, of_input=True),
}
for _domain in _KNOWN_DOMAINS:
    for _op, _flops in NORM_FLOPS_PER_ELEMENT.items():
        FORMULAS.setdefault((_domain, _op), _per_element(_flops, of_input=True))
    for _op in ELEMENTWISE:
        FORMULAS.setdefault((_domain, _op), _per_element(1))
    for _op in VARIADIC_ELEMENTWISE:
        FORMULAS.setdefault((_domain, _op), _variadic)
    for _op in REDUCTIONS:
        FORMULAS.setdefault((_domain, _op), _per_element(1, of_input=True))
for _op in DATA_MOVEMENT | METADATA_ONLY:
    FORMULAS[("", _op)] = _zero


def _bytes(values: Iterable[ir.Value | None], shapes: StaticShapes, weights: bool) -> int:
    total = 0
    seen: set[int] = set()
    for value in values:
        if value is None or not value.name or id(value) in seen or is_weight(value) != weights:
            continue
        seen.add(id(value))
        nbytes = shapes.of(value).nbytes
        if nbytes is None:
            raise _Unknown(f"shape of {value.name!r} unknown after shape inference")
        total += nbytes
    return total


def node_name(node: ir.Node, index: int) -> str:
    """The node's name, or ``<op_type>_<index>`` for unnamed nodes."""
    return node.name or f"{node.op_type}_{index}"


def iter_named_nodes(nodes: Iterable[ir.Node], prefix: str = "") -> Iterator[tuple[ir.Node, str]]:
    """Nodes with the names reports use; If/Loop bodies come after their node as
    ``<node>/<attribute>/<name>``, so every pass names a node the same way."""
    for i, node in enumerate(nodes):
        name = prefix + node_name(node, i)
        yield node, name
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from iter_named_nodes(attr.value, f"{name}/{attr.name}/")
            elif attr.type == ir.AttributeType.GRAPHS:
                for k, g in enumerate(attr.value):
                    yield from iter_named_nodes(g, f"{name}/{attr.name}.{k}/")


def node_cost(node: ir.Node, index: int, shapes: StaticShapes) -> NodeCost:
    """Cost of one top-level node; unknowns carry the reason instead of a guess."""
    domain = norm_domain(node.domain)
    name = node_name(node, index)
    if node.op_type == "Constant" and domain == "":
        return NodeCost(name, node.op_type, domain, 0, 0, 0, 0, 0, metadata_only=True)
    io: list[int | None] = [None, None, None]
    reason = None
    try:
        io = [
            _bytes(node.inputs, shapes, weights=False),
            _bytes(node.inputs, shapes, weights=True),
            _bytes(node.outputs, shapes, weights=False),
        ]
        if node.op_type in CONTROL_FLOW and domain == "":
            raise _Unknown("control flow: cost depends on the branch taken or the trip count")
        formula = FORMULAS.get((domain, node.op_type))
        if formula is None:
            raise _Unknown(f"no FLOP formula for {op_key(domain, node.op_type)}")
        macs, flops = formula(node, _Shapes(shapes))
    except _Unknown as exc:
        macs = flops = None
        reason = str(exc)
    metadata_only = domain == "" and node.op_type in METADATA_ONLY
    return NodeCost(name, node.op_type, domain, macs, flops, *io, metadata_only, reason)


def node_costs(
    model: ir.Model, batch: int = 1, shapes: StaticShapes | None = None
) -> tuple[list[NodeCost], StaticShapes]:
    """Costs of the main graph's nodes in graph order, and the shapes they were computed from.

    Shared by ``FlopsPass`` and ``RooflinePass`` so both use the same numbers.
    """
    shapes = shapes if shapes is not None else infer_static_shapes(model, batch)
    return [node_cost(node, i, shapes) for i, node in enumerate(model.graph)], shapes


def cost_totals(costs: list[NodeCost]) -> dict[str, int]:
    """Sums over known nodes; unknown nodes are counted, not added."""
    known = [c for c in costs if c.known]
    return {
        "nodes": len(costs),
        "known_nodes": len(known),
        "unknown_nodes": len(costs) - len(known),
        "macs": sum(c.macs or 0 for c in known),
        "flops": sum(c.flops or 0 for c in known),
        "input_bytes": sum(c.input_bytes or 0 for c in known),
        "weight_bytes": sum(c.weight_bytes or 0 for c in known),
        "output_bytes": sum(c.output_bytes or 0 for c in known),
    }


class FlopsPass(AnalysisPass):
    """MACs, FLOPs and bytes per node at a fixed batch; unknown nodes are listed, not guessed."""

    name = "flops"

    def __init__(self, batch: int = 1) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch = batch

    def analyze(self, model: ir.Model) -> dict[str, Any]:
        costs, shapes = node_costs(model, self.batch)
        by_op: dict[str, dict[str, int]] = {}
        for c in costs:
            entry = by_op.setdefault(
                op_key(c.domain, c.op_type), {"count": 0, "macs": 0, "flops": 0}
            )
            entry["count"] += 1
            entry["macs"] += c.macs or 0
            entry["flops"] += c.flops or 0
        return {
            "batch": self.batch,
            "method": "static count from shapes inferred with symbolic dims set to batch; "
            "1 MAC = 2 FLOPs, bias add and elementwise 1 FLOP per element",
            "totals": cost_totals(costs),
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["flops"])),
            "nodes": [c.to_json() for c in costs],
            "unknown": [
                {"name": c.name, "op_type": c.op_type, "domain": c.domain, "reason": c.reason}
                for c in costs
                if not c.known
            ],
            "shape_inference_error": shapes.error,
        }
